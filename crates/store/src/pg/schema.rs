//! The store's tables, created and migrated by the store itself.
//!
//! `postamt_schema` has one row per applied migration. Each migration runs
//! in its own transaction that first inserts its row: a second front end
//! migrating at the same moment waits on that row and then finds the
//! migration done.

use postgres::Client;
use postgres::error::SqlState;

use super::db;
use crate::StoreError;

/// The migrations in order; version `n` is `MIGRATIONS[n - 1]`. Never
/// change one that was released: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: users, mailboxes, messages, maildrop leases, the queue.
    "CREATE TABLE postamt_users (
        address TEXT PRIMARY KEY,
        local_part TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        apop_secret BYTEA
    );
    CREATE INDEX postamt_users_local_part ON postamt_users (local_part);
    CREATE TABLE postamt_aliases (
        address TEXT PRIMARY KEY,
        user_address TEXT NOT NULL REFERENCES postamt_users (address) ON DELETE CASCADE
    );
    CREATE INDEX postamt_aliases_user ON postamt_aliases (user_address);
    CREATE TABLE postamt_domains (
        domain TEXT PRIMARY KEY
    );
    CREATE TABLE postamt_mailboxes (
        name TEXT PRIMARY KEY,
        size BIGINT NOT NULL DEFAULT 0
    );
    CREATE SEQUENCE postamt_message_ids;
    CREATE TABLE postamt_messages (
        id BIGINT PRIMARY KEY,
        raw_size BIGINT NOT NULL DEFAULT 0,
        crlf_size BIGINT NOT NULL DEFAULT 0,
        chunks INT NOT NULL DEFAULT 0,
        writer TEXT,
        expires_at TIMESTAMPTZ
    );
    CREATE INDEX postamt_messages_writer ON postamt_messages (writer);
    CREATE TABLE postamt_chunks (
        message_id BIGINT NOT NULL REFERENCES postamt_messages (id) ON DELETE CASCADE,
        seq INT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (message_id, seq)
    );
    CREATE TABLE postamt_mailbox_messages (
        mailbox TEXT NOT NULL REFERENCES postamt_mailboxes (name),
        message_id BIGINT NOT NULL REFERENCES postamt_messages (id),
        PRIMARY KEY (mailbox, message_id)
    );
    CREATE INDEX postamt_mailbox_messages_message ON postamt_mailbox_messages (message_id);
    CREATE TABLE postamt_maildrop_leases (
        mailbox TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE SEQUENCE postamt_spool_ids;
    CREATE TABLE postamt_spool (
        seq BIGINT PRIMARY KEY,
        record BYTEA NOT NULL DEFAULT ''::bytea,
        size BIGINT NOT NULL DEFAULT 0,
        chunks INT NOT NULL DEFAULT 0,
        writer TEXT,
        writer_expires TIMESTAMPTZ,
        claim_holder TEXT,
        claim_expires TIMESTAMPTZ
    );
    CREATE INDEX postamt_spool_writer ON postamt_spool (writer);
    CREATE TABLE postamt_spool_chunks (
        spool_seq BIGINT NOT NULL REFERENCES postamt_spool (seq) ON DELETE CASCADE,
        seq INT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (spool_seq, seq)
    );",
];

/// Brings the schema up to the newest version.
pub(super) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    // Two front ends creating the table at once: one of them fails on the
    // catalog's unique index, and finds the table when it tries again.
    let mut attempt = 1;
    loop {
        let created = client.batch_execute(
            "CREATE TABLE IF NOT EXISTS postamt_schema (
                version INT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        );
        match created {
            Ok(()) => break,
            Err(e)
                if attempt < 5
                    && matches!(
                        e.code(),
                        Some(&SqlState::UNIQUE_VIOLATION)
                            | Some(&SqlState::DUPLICATE_OBJECT)
                            | Some(&SqlState::DUPLICATE_TABLE)
                    ) =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(db(e)),
        }
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let mut tx = client.transaction().map_err(db)?;
        let claimed = tx
            .execute(
                "INSERT INTO postamt_schema (version) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&version],
            )
            .map_err(db)?;
        if claimed == 1 {
            tx.batch_execute(sql).map_err(|e| match db(e) {
                StoreError::Database(message) => {
                    StoreError::Database(format!("migration {version}: {message}"))
                }
                other => other,
            })?;
        }
        tx.commit().map_err(db)?;
    }
    Ok(())
}

/// The highest migration applied.
pub(super) fn version(client: &mut Client) -> Result<i32, StoreError> {
    let row = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM postamt_schema", &[])
        .map_err(db)?;
    Ok(row.get(0))
}
