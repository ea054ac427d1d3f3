//! The PostgreSQL store: users, mailboxes and the forwarding queue in one
//! database that several front ends (SMTP and POP3 servers on different
//! machines) share.
//!
//! - [`PgStore`] is a [`MailStore`], a [`MailView`] and a
//!   [`Directory`](crate::Directory); [`PgStore::spool`] gives the
//!   [`PgSpool`] on the same database.
//! - Messages are kept once, in chunks of at most [`CHUNK_SIZE`] octets:
//!   a delivery holds at most one chunk in memory and a maildrop reads one
//!   chunk at a time, so a message of any size is never whole in memory.
//! - What lives only while a front end lives (a maildrop's lock, a message
//!   being written, a claim on a queued message) is a lease: a row naming
//!   its holder and when it expires. A heartbeat thread renews the leases
//!   of this process every few seconds; when a front end dies, its leases
//!   run out ([`PgOptions::lease_ttl`]) and others take over. No lock ever
//!   needs a person to clear it.
//! - The store creates and migrates its schema itself (table
//!   `postamt_schema`, one row per migration, each in a transaction), and
//!   uses only what PostgreSQL-compatible distributed databases
//!   (CockroachDB, YugabyteDB) accept: no advisory locks, no LISTEN/NOTIFY;
//!   transactions that fail with a serialization failure (SQLSTATE 40001)
//!   or a deadlock are retried a few times.
//!
//! # Example
//!
//! ```no_run
//! use postamt_store::{ApopSecrets, Directory, MailStore, PgStore, Spool, StaticDirectory};
//!
//! # fn main() -> Result<(), postamt_store::StoreError> {
//! let store = PgStore::connect("host=db.kolleg.de user=postamt dbname=mail")?;
//! // Once: the users file into the database (again: updates).
//! store.import_users(&StaticDirectory::demo(), ApopSecrets::Discard)?;
//! let anna = store.verify_password("anna", b"geheim").expect("anna logs in");
//!
//! let mut delivery = store.begin_delivery(&[anna.clone()])?;
//! delivery.write_chunk(b"Subject: Hallo\r\n\r\nBis morgen!\r\n")?;
//! delivery.commit()?; // after COMMIT: SMTP may say 250
//!
//! // The forwarder: what dead front ends left, and what others released.
//! let spool = store.spool();
//! for entry in spool.claim(100)? {
//!     // ... pass it on, then spool.update() or spool.remove() ...
//! #   let _ = entry;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Tables
//!
//! | table | rows |
//! |---|---|
//! | `postamt_schema` | applied migrations: version, time |
//! | `postamt_users` | address, local part, mailbox, Argon2 PHC hash, APOP secret (NULL: no APOP) |
//! | `postamt_aliases` | alias address, its user's address |
//! | `postamt_domains` | the local domains |
//! | `postamt_mailboxes` | name, stored octets (for the size limit) |
//! | `postamt_messages` | id, stored and CRLF size, chunk count; writer and expiry while being written |
//! | `postamt_chunks` | message id, sequence number, octets |
//! | `postamt_mailbox_messages` | which mailbox holds which message |
//! | `postamt_maildrop_leases` | mailbox, holder, expiry: the POP3 lock |
//! | `postamt_spool` | queued message: sequence number, record, size, chunk count, writer, claim holder, expiries |
//! | `postamt_spool_chunks` | queued message, sequence number, octets |

mod directory;
mod schema;
mod spool;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;

pub use directory::ApopSecrets;
pub use spool::PgSpool;

use crate::crlf::{CrlfReader, CrlfSize};
use crate::store::{DEFAULT_MAILBOX_SIZE_LIMIT, check_indices, fits, unique_recipients};
use crate::{Delivery, MailStore, MailView, MailboxName, Maildrop, MessageInfo, StoreError, Uid};

/// The most octets one stored chunk holds: a delivery buffers up to this
/// much before it writes, a reader fetches this much at a time.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// How many times a transaction that lost a serialization conflict is tried.
const ATTEMPTS: u32 = 5;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Connection = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// How a [`PgStore`] uses its database.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PgOptions {
    /// The most connections the store keeps open (default 16).
    pub pool_size: u32,
    /// How long to wait for a free connection or for the server before a
    /// call fails (default 10 s).
    pub connect_timeout: Duration,
    /// How long a lease lasts without renewal: the time after which a dead
    /// front end's maildrop locks, half-written messages and claims are free
    /// again (default 30 s).
    pub lease_ttl: Duration,
    /// How often the heartbeat renews this process's leases (default 5 s;
    /// at most a third of [`lease_ttl`](Self::lease_ttl) is used).
    pub heartbeat: Duration,
    /// The limit of each mailbox's stored octets; `None`: no limit
    /// (default [`DEFAULT_MAILBOX_SIZE_LIMIT`]).
    pub mailbox_size_limit: Option<u64>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            mailbox_size_limit: Some(DEFAULT_MAILBOX_SIZE_LIMIT),
        }
    }
}

impl PgOptions {
    /// The interval the heartbeat actually uses.
    fn beat(&self) -> Duration {
        self.heartbeat
            .min(self.lease_ttl / 3)
            .max(Duration::from_millis(10))
    }

    /// The lease length in milliseconds, as SQL takes it.
    fn ttl_ms(&self) -> f64 {
        self.lease_ttl.as_secs_f64() * 1000.0
    }
}

/// A [`MailStore`], [`MailView`] and [`Directory`](crate::Directory) in a
/// PostgreSQL database. Clones share one connection pool and one
/// heartbeat; the heartbeat runs while a `PgStore` or [`PgSpool`] of it
/// lives.
///
/// Two `PgStore` values on one database behave like two servers: a maildrop
/// one of them holds is locked for the other ([`StoreError::Locked`]).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

/// What the store's values share; owned by the user-facing handles, whose
/// last drop stops the heartbeat.
struct Inner {
    shared: Arc<Shared>,
}

/// What deliveries, maildrops and readers share with the store.
struct Shared {
    pool: Pool,
    options: PgOptions,
    /// This front end's name, the prefix of every lease it takes.
    instance: String,
    next_token: AtomicU64,
    held: Mutex<Held>,
    stop: (Mutex<bool>, Condvar),
    /// A hash compared against for unknown users (see `verify_password`).
    dummy_hash: OnceLock<String>,
}

/// The leases this process holds, which the heartbeat renews.
#[derive(Default)]
struct Held {
    maildrops: HashSet<String>,
    writers: HashSet<String>,
    spool_writers: HashSet<String>,
    /// Claim holder to the spool entries it claimed.
    claims: HashMap<String, HashSet<i64>>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        let held = shared.held();
        f.debug_struct("PgStore")
            .field("instance", &shared.instance)
            .field("maildrops", &held.maildrops.len())
            .field("deliveries", &held.writers.len())
            .field("options", &shared.options)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects with the default [`PgOptions`]. `url` is a libpq connection
    /// string (`host=... user=... dbname=...`) or URL (`postgresql://...`).
    /// Creates or migrates the schema and starts the heartbeat.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgOptions::default())
    }

    /// Connects with `options` (see [`connect`](Self::connect)).
    pub fn connect_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Database(format!("invalid connection string: {e}")))?;
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(options.connect_timeout)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|e| StoreError::Database(format!("cannot connect: {e}")))?;
        let shared = Arc::new(Shared {
            pool,
            options,
            instance: instance_name(),
            next_token: AtomicU64::new(0),
            held: Mutex::new(Held::default()),
            stop: (Mutex::new(false), Condvar::new()),
            dummy_hash: OnceLock::new(),
        });
        schema::migrate(&mut *shared.conn()?)?;
        let beating = Arc::clone(&shared);
        thread::Builder::new()
            .name("postamt-pg-heartbeat".into())
            .spawn(move || heartbeat(&beating))
            .map_err(|e| StoreError::Database(format!("cannot start the heartbeat: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner { shared }),
        })
    }

    /// The forwarding queue in the same database, sharing this store's
    /// connections and heartbeat, with a claim holder name of its own.
    pub fn spool(&self) -> PgSpool {
        PgSpool::new(Arc::clone(&self.inner))
    }

    /// The schema version the database has (the highest migration applied).
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        schema::version(&mut *self.shared().conn()?)
    }

    /// The limit of each mailbox, in octets.
    pub fn mailbox_size_limit(&self) -> Option<u64> {
        self.shared().options.mailbox_size_limit
    }

    /// Octets stored in `mailbox` (as written, before CRLF rewriting).
    pub fn mailbox_size(&self, mailbox: &MailboxName) -> Result<u64, StoreError> {
        let mut conn = self.shared().conn()?;
        let row = conn
            .query_opt(
                "SELECT size FROM postamt_mailboxes WHERE name = $1",
                &[&mailbox.as_str()],
            )
            .map_err(db)?;
        Ok(row.map_or(0, |r| octets(r.get(0))))
    }

    /// This front end's name: the prefix of the holders of its leases.
    pub fn instance(&self) -> &str {
        &self.shared().instance
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (stopped, wake) = &self.shared.stop;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
    }
}

/// A name no other process picks: time, pid and the standard library's
/// random hasher keys.
fn instance_name() -> String {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now();
    let random = std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()));
    format!("{:x}-{random:016x}", std::process::id())
}

impl Shared {
    fn conn(&self) -> Result<Connection, StoreError> {
        self.pool
            .get()
            .map_err(|e| StoreError::Database(format!("no connection: {e}")))
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new holder name for one lease of this process.
    fn token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.instance)
    }

    /// Runs `work` in a transaction, again when it fails with a
    /// serialization failure or a deadlock, at most [`ATTEMPTS`] times.
    fn transaction<T>(
        &self,
        mut work: impl FnMut(&mut Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut attempt = 1;
        loop {
            let result = (|| {
                let mut tx = conn.transaction()?;
                let value = work(&mut tx)?;
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Ok(value) => return Ok(value),
                Err(Fail::Db(e)) if retriable(&e) && attempt < ATTEMPTS => {
                    thread::sleep(Duration::from_millis(5 << attempt));
                    attempt += 1;
                }
                Err(fail) => return Err(fail.into()),
            }
        }
    }
}

/// An error inside a transaction: the database's (maybe retried) or ours.
enum Fail {
    Db(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> Self {
        match fail {
            Fail::Db(e) => db(e),
            Fail::Store(e) => e,
        }
    }
}

fn retriable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE) | Some(&SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// A database error as a [`StoreError`]: severity, message and SQLSTATE,
/// without the detail (which may quote row values).
fn db(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(err) => StoreError::Database(format!(
            "{}: {} (SQLSTATE {})",
            err.severity(),
            err.message(),
            err.code().code()
        )),
        None => StoreError::Database(e.to_string()),
    }
}

/// A size column (BIGINT, never negative) as octets.
fn octets(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Octets as a BIGINT.
fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Renews this process's leases every beat and clears what dead front ends
/// left half-written, until the last handle of the store drops.
fn heartbeat(shared: &Shared) {
    let beat = shared.options.beat();
    loop {
        {
            let (stopped, wake) = &shared.stop;
            let guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
            let (guard, _) = wake
                .wait_timeout_while(guard, beat, |stopped| !*stopped)
                .unwrap_or_else(PoisonError::into_inner);
            if *guard {
                return;
            }
        }
        // A failed beat is tried again at the next one; leases last several.
        let _ = renew(shared);
    }
}

fn renew(shared: &Shared) -> Result<(), postgres::Error> {
    let Ok(mut conn) = shared.conn() else {
        return Ok(());
    };
    let (maildrops, writers, spool_writers, claims) = {
        let held = shared.held();
        let list = |set: &HashSet<String>| set.iter().cloned().collect::<Vec<String>>();
        let claims: Vec<(String, Vec<i64>)> = held
            .claims
            .iter()
            .filter(|(_, seqs)| !seqs.is_empty())
            .map(|(holder, seqs)| (holder.clone(), seqs.iter().copied().collect()))
            .collect();
        (
            list(&held.maildrops),
            list(&held.writers),
            list(&held.spool_writers),
            claims,
        )
    };
    let ttl = shared.options.ttl_ms();
    if !maildrops.is_empty() {
        conn.execute(
            "UPDATE postamt_maildrop_leases SET expires_at = now() + $2::float8 * interval '1 millisecond' \
             WHERE holder = ANY($1)",
            &[&maildrops, &ttl],
        )?;
    }
    if !writers.is_empty() {
        conn.execute(
            "UPDATE postamt_messages SET expires_at = now() + $2::float8 * interval '1 millisecond' \
             WHERE writer = ANY($1)",
            &[&writers, &ttl],
        )?;
    }
    if !spool_writers.is_empty() {
        conn.execute(
            "UPDATE postamt_spool SET writer_expires = now() + $2::float8 * interval '1 millisecond' \
             WHERE writer = ANY($1)",
            &[&spool_writers, &ttl],
        )?;
    }
    for (holder, seqs) in claims {
        conn.execute(
            "UPDATE postamt_spool SET claim_expires = now() + $3::float8 * interval '1 millisecond' \
             WHERE claim_holder = $1 AND seq = ANY($2)",
            &[&holder, &seqs, &ttl],
        )?;
    }
    // What dead front ends were writing is nobody's any more.
    conn.execute(
        "DELETE FROM postamt_messages WHERE writer IS NOT NULL AND expires_at < now()",
        &[],
    )?;
    conn.execute(
        "DELETE FROM postamt_spool WHERE writer IS NOT NULL AND writer_expires < now()",
        &[],
    )?;
    Ok(())
}

impl MailStore for PgStore {
    fn begin_delivery(&self, recipients: &[MailboxName]) -> Result<Box<dyn Delivery>, StoreError> {
        let recipients = unique_recipients(recipients)?;
        let shared = Arc::clone(self.shared());
        let names: Vec<&str> = recipients.iter().map(MailboxName::as_str).collect();
        let rows = shared
            .conn()?
            .query(
                "SELECT name, size FROM postamt_mailboxes WHERE name = ANY($1)",
                &[&names],
            )
            .map_err(db)?;
        let sizes = recipients
            .iter()
            .map(|r| {
                rows.iter()
                    .find(|row| row.get::<_, &str>(0) == r.as_str())
                    .map_or(0, |row| octets(row.get(1)))
            })
            .collect();
        Ok(Box::new(PgDelivery {
            shared,
            recipients,
            sizes,
            buffer: Vec::new(),
            written: 0,
            crlf: CrlfSize::new(),
            staged: None,
            void: None,
        }))
    }

    fn open_maildrop(&self, mailbox: &MailboxName) -> Result<Box<dyn Maildrop>, StoreError> {
        let shared = Arc::clone(self.shared());
        let holder = shared.token();
        let mut conn = shared.conn()?;
        // Taken when free or when its holder stopped renewing it.
        let won = conn
            .query_opt(
                "INSERT INTO postamt_maildrop_leases (mailbox, holder, expires_at) \
                 VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond') \
                 ON CONFLICT (mailbox) DO UPDATE \
                 SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE postamt_maildrop_leases.expires_at < now() \
                 RETURNING holder",
                &[&mailbox.as_str(), &holder, &shared.options.ttl_ms()],
            )
            .map_err(db)?;
        if won.is_none() {
            return Err(StoreError::Locked(mailbox.clone()));
        }
        shared.held().maildrops.insert(holder.clone());
        let mut maildrop = PgMaildrop {
            shared: Arc::clone(&shared),
            mailbox: mailbox.clone(),
            holder,
            infos: Vec::new(),
            messages: Vec::new(),
            released: false,
        };
        let listing = conn.query(LISTING, &[&mailbox.as_str()]);
        // Back to the pool first: on failure, dropping the maildrop gives
        // the lease back with a connection of its own.
        drop(conn);
        for row in listing.map_err(db)? {
            let id: i64 = row.get(0);
            maildrop.infos.push(info(id, row.get(1)));
            maildrop.messages.push(Stored {
                id,
                chunks: row.get(2),
            });
        }
        Ok(Box::new(maildrop))
    }

    fn check_room(&self, mailbox: &MailboxName, size: u64) -> Result<(), StoreError> {
        let limit = self.mailbox_size_limit();
        if limit.is_none() {
            return Ok(());
        }
        let used = self.mailbox_size(mailbox)?;
        if fits(used, size, limit) {
            Ok(())
        } else {
            Err(StoreError::QuotaExceeded {
                mailbox: mailbox.clone(),
                limit: limit.unwrap_or(u64::MAX),
            })
        }
    }
}

/// A mailbox's messages, oldest first: id, CRLF size, chunk count.
const LISTING: &str = "SELECT m.id, m.crlf_size, m.chunks FROM postamt_mailbox_messages mm \
     JOIN postamt_messages m ON m.id = mm.message_id \
     WHERE mm.mailbox = $1 ORDER BY m.id";

fn info(id: i64, crlf_size: i64) -> MessageInfo {
    MessageInfo {
        uid: uid(id),
        size: octets(crlf_size),
    }
}

/// The UIDL of message `id`; [`message_id`] reads it back.
fn uid(id: i64) -> Uid {
    Uid::from_name(&format!("m{id}"))
}

fn message_id(uid: &Uid) -> Option<i64> {
    uid.as_str().strip_prefix('m')?.parse().ok()
}

impl MailView for PgStore {
    fn mailboxes(&self) -> Result<Vec<MailboxName>, StoreError> {
        let rows = self
            .shared()
            .conn()?
            .query("SELECT name FROM postamt_mailboxes ORDER BY name", &[])
            .map_err(db)?;
        let mut names: Vec<MailboxName> = rows
            .iter()
            .filter_map(|row| MailboxName::new(row.get::<_, String>(0)).ok())
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    fn peek(&self, mailbox: &MailboxName) -> Result<Vec<MessageInfo>, StoreError> {
        let rows = self
            .shared()
            .conn()?
            .query(LISTING, &[&mailbox.as_str()])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|row| info(row.get(0), row.get(1)))
            .collect())
    }

    fn peek_message(
        &self,
        mailbox: &MailboxName,
        uid: &Uid,
    ) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let Some(id) = message_id(uid) else {
            return Ok(None);
        };
        let row = self
            .shared()
            .conn()?
            .query_opt(
                "SELECT m.chunks FROM postamt_mailbox_messages mm \
                 JOIN postamt_messages m ON m.id = mm.message_id \
                 WHERE mm.mailbox = $1 AND mm.message_id = $2",
                &[&mailbox.as_str(), &id],
            )
            .map_err(db)?;
        Ok(row.map(|row| {
            let reader = ChunkReader::message(Arc::clone(self.shared()), id, row.get(0));
            Box::new(CrlfReader::new(reader)) as Box<dyn Read + Send>
        }))
    }
}

/// A message in the database that has begun to be written.
struct Staged {
    id: i64,
    writer: String,
    chunks: i32,
}

/// One message on its way into the database: at most one chunk in memory,
/// the rest staged in rows that only [`commit`](Delivery::commit) makes part
/// of any mailbox.
struct PgDelivery {
    shared: Arc<Shared>,
    recipients: Vec<MailboxName>,
    /// Each recipient's stored octets when the delivery began.
    sizes: Vec<u64>,
    buffer: Vec<u8>,
    written: u64,
    crlf: CrlfSize,
    staged: Option<Staged>,
    /// Why every further call fails: the chunk that would pass a mailbox's
    /// limit (mailbox, limit), or a database failure (None).
    void: Option<Option<(MailboxName, u64)>>,
}

impl PgDelivery {
    fn refusal(&self) -> Option<StoreError> {
        self.void.as_ref().map(|void| match void {
            Some((mailbox, limit)) => StoreError::QuotaExceeded {
                mailbox: mailbox.clone(),
                limit: *limit,
            },
            None => StoreError::Database("an earlier write of this message failed".into()),
        })
    }

    /// Writes the buffer as the next chunk, the message's row first.
    fn flush(&mut self) -> Result<(), StoreError> {
        let mut conn = self.shared.conn()?;
        if self.staged.is_none() {
            let writer = self.shared.token();
            let row = conn
                .query_one(
                    "INSERT INTO postamt_messages (id, writer, expires_at) \
                     VALUES (nextval('postamt_message_ids'), $1, now() + $2::float8 * interval '1 millisecond') \
                     RETURNING id",
                    &[&writer, &self.shared.options.ttl_ms()],
                )
                .map_err(db)?;
            self.shared.held().writers.insert(writer.clone());
            self.staged = Some(Staged {
                id: row.get(0),
                writer,
                chunks: 0,
            });
        }
        let Some(staged) = self.staged.as_mut() else {
            return Ok(());
        };
        conn.execute(
            "INSERT INTO postamt_chunks (message_id, seq, data) VALUES ($1, $2, $3)",
            &[&staged.id, &staged.chunks, &self.buffer],
        )
        .map_err(db)?;
        staged.chunks += 1;
        self.buffer.clear();
        Ok(())
    }

    /// Forgets what was written: the staged rows go, the lease with them.
    fn discard(&mut self) {
        self.buffer = Vec::new();
        if let Some(staged) = self.staged.take() {
            self.shared.held().writers.remove(&staged.writer);
            if let Ok(mut conn) = self.shared.conn() {
                // If this fails, the row's lease runs out and a heartbeat
                // deletes it.
                let _ = conn.execute(
                    "DELETE FROM postamt_messages WHERE id = $1 AND writer = $2",
                    &[&staged.id, &staged.writer],
                );
            }
        }
    }
}

impl Delivery for PgDelivery {
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let add = chunk.len() as u64;
        let limit = self.shared.options.mailbox_size_limit;
        let full = self
            .recipients
            .iter()
            .zip(&self.sizes)
            .find(|(_, size)| !fits(**size + self.written, add, limit));
        if let Some((mailbox, _)) = full {
            self.void = Some(Some((mailbox.clone(), limit.unwrap_or(u64::MAX))));
            self.discard();
            return Err(self.refusal().unwrap_or(StoreError::NoRecipients));
        }
        self.written += add;
        self.crlf.update(chunk);
        let mut rest = chunk;
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK_SIZE - self.buffer.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == CHUNK_SIZE
                && let Err(e) = self.flush()
            {
                self.void = Some(None);
                self.discard();
                return Err(e);
            }
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let shared = Arc::clone(&self.shared);
        let limit = shared.options.mailbox_size_limit;
        let names: Vec<&str> = self.recipients.iter().map(MailboxName::as_str).collect();
        let written = bigint(self.written);
        let crlf_size = bigint(self.crlf.size());
        let ttl = shared.options.ttl_ms();
        let staged = self
            .staged
            .as_ref()
            .map(|s| (s.id, s.writer.clone(), s.chunks));
        let buffer = std::mem::take(&mut self.buffer);
        let result = shared.transaction(|tx| {
            let (id, mut chunks) = match &staged {
                Some((id, writer, chunks)) => {
                    // Still ours: a lease that ran out may have been cleared.
                    let ours = tx.execute(
                        "UPDATE postamt_messages SET expires_at = now() + $3::float8 * interval '1 millisecond' \
                         WHERE id = $1 AND writer = $2",
                        &[id, writer, &ttl],
                    )?;
                    if ours == 0 {
                        return Err(StoreError::Database(
                            "the message being written expired before its commit".into(),
                        )
                        .into());
                    }
                    (*id, *chunks)
                }
                None => {
                    let row = tx.query_one(
                        "INSERT INTO postamt_messages (id) VALUES (nextval('postamt_message_ids')) RETURNING id",
                        &[],
                    )?;
                    (row.get::<_, i64>(0), 0)
                }
            };
            if !buffer.is_empty() {
                tx.execute(
                    "INSERT INTO postamt_chunks (message_id, seq, data) VALUES ($1, $2, $3)",
                    &[&id, &chunks, &buffer],
                )?;
                chunks += 1;
            }
            tx.execute(
                "INSERT INTO postamt_mailboxes (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                &[&names],
            )?;
            // Locked in name order, so that concurrent commits never pass a
            // limit together nor wait on each other in a circle.
            let rows = tx.query(
                "SELECT name, size FROM postamt_mailboxes WHERE name = ANY($1) ORDER BY name FOR UPDATE",
                &[&names],
            )?;
            if written > 0 {
                for row in &rows {
                    if !fits(octets(row.get(1)), octets(written), limit) {
                        let name: String = row.get(0);
                        return Err(StoreError::QuotaExceeded {
                            mailbox: MailboxName::new(name)?,
                            limit: limit.unwrap_or(u64::MAX),
                        }
                        .into());
                    }
                }
            }
            tx.execute(
                "UPDATE postamt_messages SET raw_size = $2, crlf_size = $3, chunks = $4, \
                 writer = NULL, expires_at = NULL WHERE id = $1",
                &[&id, &written, &crlf_size, &chunks],
            )?;
            tx.execute(
                "INSERT INTO postamt_mailbox_messages (mailbox, message_id) SELECT unnest($1::text[]), $2",
                &[&names, &id],
            )?;
            tx.execute(
                "UPDATE postamt_mailboxes SET size = size + $2 WHERE name = ANY($1)",
                &[&names, &written],
            )?;
            Ok(())
        });
        match result {
            Ok(()) => {
                if let Some(staged) = self.staged.take() {
                    self.shared.held().writers.remove(&staged.writer);
                }
                Ok(())
            }
            Err(e) => {
                // Dropping `self` discards the staged rows.
                Err(e)
            }
        }
    }
}

impl Drop for PgDelivery {
    fn drop(&mut self) {
        self.discard();
    }
}

#[derive(Clone, Copy)]
struct Stored {
    id: i64,
    chunks: i32,
}

/// One mailbox held by this front end's lease for one POP3 session.
struct PgMaildrop {
    shared: Arc<Shared>,
    mailbox: MailboxName,
    holder: String,
    infos: Vec<MessageInfo>,
    messages: Vec<Stored>,
    released: bool,
}

impl Maildrop for PgMaildrop {
    fn mailbox(&self) -> &MailboxName {
        &self.mailbox
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn read_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        check_indices(&[index], self.messages.len())?;
        let stored = self.messages[index];
        let reader = ChunkReader::message(Arc::clone(&self.shared), stored.id, stored.chunks);
        Ok(Box::new(CrlfReader::new(reader)))
    }

    fn commit_deletions(mut self: Box<Self>, indices: &[usize]) -> Result<(), StoreError> {
        check_indices(indices, self.messages.len())?;
        let mut ids: Vec<i64> = indices.iter().map(|&i| self.messages[i].id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mailbox = self.mailbox.as_str();
        let holder = &self.holder;
        self.shared.transaction(|tx| {
            let held = tx.query_opt(
                "SELECT 1 FROM postamt_maildrop_leases WHERE mailbox = $1 AND holder = $2 FOR UPDATE",
                &[&mailbox, holder],
            )?;
            if held.is_none() {
                // The lease ran out and another session took the mailbox.
                return Err(StoreError::Locked(self.mailbox.clone()).into());
            }
            if !ids.is_empty() {
                // The messages first, in id order: a message in two mailboxes
                // is deleted by whichever commit sees the other copy gone.
                tx.query(
                    "SELECT id FROM postamt_messages WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    &[&ids],
                )?;
                let gone = tx.query(
                    "DELETE FROM postamt_mailbox_messages WHERE mailbox = $1 AND message_id = ANY($2) \
                     RETURNING message_id",
                    &[&mailbox, &ids],
                )?;
                let gone: Vec<i64> = gone.iter().map(|row| row.get(0)).collect();
                tx.execute(
                    "UPDATE postamt_mailboxes SET size = size - \
                     (SELECT COALESCE(SUM(raw_size), 0)::bigint FROM postamt_messages WHERE id = ANY($2)) \
                     WHERE name = $1",
                    &[&mailbox, &gone],
                )?;
                tx.execute(
                    "DELETE FROM postamt_messages m WHERE m.id = ANY($1) AND NOT EXISTS \
                     (SELECT 1 FROM postamt_mailbox_messages mm WHERE mm.message_id = m.id)",
                    &[&gone],
                )?;
            }
            tx.execute(
                "DELETE FROM postamt_maildrop_leases WHERE mailbox = $1 AND holder = $2",
                &[&mailbox, holder],
            )?;
            Ok(())
        })?;
        self.released = true;
        self.shared.held().maildrops.remove(&self.holder);
        Ok(())
    }
}

impl Drop for PgMaildrop {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.shared.held().maildrops.remove(&self.holder);
        if let Ok(mut conn) = self.shared.conn() {
            // If this fails, the lease runs out: nobody renews it now.
            let _ = conn.execute(
                "DELETE FROM postamt_maildrop_leases WHERE mailbox = $1 AND holder = $2",
                &[&self.mailbox.as_str(), &self.holder],
            );
        }
    }
}

/// Reads a stored message or queued message one chunk at a time.
struct ChunkReader {
    shared: Arc<Shared>,
    query: &'static str,
    id: i64,
    chunks: i32,
    next: i32,
    data: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn message(shared: Arc<Shared>, id: i64, chunks: i32) -> Self {
        Self::new(
            shared,
            "SELECT data FROM postamt_chunks WHERE message_id = $1 AND seq = $2",
            id,
            chunks,
        )
    }

    fn new(shared: Arc<Shared>, query: &'static str, id: i64, chunks: i32) -> Self {
        Self {
            shared,
            query,
            id,
            chunks,
            next: 0,
            data: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.data.len() {
            if self.next >= self.chunks || out.is_empty() {
                return Ok(0);
            }
            let mut conn = self.shared.conn().map_err(io::Error::other)?;
            let row = conn
                .query_opt(self.query, &[&self.id, &self.next])
                .map_err(|e| io::Error::other(db(e)))?;
            // A chunk missing before the count: deleted while being read.
            let Some(row) = row else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the message was deleted while being read",
                ));
            };
            self.data = row.get(0);
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops the unit test's database at the end.
    struct TestDb {
        server: String,
        name: String,
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if let Ok(mut admin) = postgres::Client::connect(&self.server, NoTls) {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                let _ = admin.batch_execute(&sql);
            }
        }
    }

    /// A store in a fresh database of `POSTAMT_TEST_POSTGRES` (key=value
    /// form), or `None` when it is not set (a failure under `CI=true`).
    fn store() -> Option<(PgStore, TestDb)> {
        let Ok(server) = std::env::var("POSTAMT_TEST_POSTGRES") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "POSTAMT_TEST_POSTGRES must be set under CI=true"
            );
            eprintln!("note: POSTAMT_TEST_POSTGRES is not set; skipping");
            return None;
        };
        assert!(
            !server.contains("://"),
            "this test takes the key=value form"
        );
        let name = format!("postamt_unit_{}", instance_name().replace('-', "_"));
        let mut admin = postgres::Client::connect(&server, NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let store = PgStore::connect(&format!("{server} dbname={name}")).unwrap();
        Some((store, TestDb { server, name }))
    }

    const CONFLICT: &str = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$";

    #[test]
    fn serialization_failures_are_retried_a_bounded_number_of_times() {
        let Some((store, _db)) = store() else { return };
        let shared = store.shared();
        let mut attempts = 0;
        let value = shared
            .transaction(|tx| {
                attempts += 1;
                if attempts < 3 {
                    tx.batch_execute(CONFLICT)?;
                }
                Ok(attempts)
            })
            .unwrap();
        assert_eq!(value, 3);

        let mut attempts = 0;
        let err = shared
            .transaction(|tx| {
                attempts += 1;
                tx.batch_execute(CONFLICT)?;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(attempts, ATTEMPTS);
        assert_eq!(
            err.to_string(),
            "database: ERROR: conflict (SQLSTATE 40001)"
        );

        // Other errors are not tried again.
        let mut attempts = 0;
        let err = shared
            .transaction(|tx| {
                attempts += 1;
                tx.batch_execute("SELECT * FROM no_such_table")?;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(attempts, 1);
        assert!(err.to_string().contains("SQLSTATE 42P01"), "{err}");
    }
}
