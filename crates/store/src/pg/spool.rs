//! The forwarding queue in the database, shared by front ends: any of them
//! accepts a message, one at a time passes it on.
//!
//! Each queued message has a claim: its holder's name and when it expires.
//! A spool holds the messages it committed and those [`Spool::claim`] gave
//! it; the heartbeat renews those claims while the spool's store lives, and
//! when a front end dies they run out and another's `claim` takes them
//! (`SELECT ... FOR UPDATE SKIP LOCKED`, so two claimers never wait on or
//! get the same message).

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use super::{ChunkReader, Inner, Shared, Staged, bigint, db, octets};
use crate::{Spool, SpoolEntry, SpoolId, SpoolWriter, StoreError};

/// A [`Spool`] in PostgreSQL (from [`PgStore::spool`](super::PgStore::spool)).
/// Clones are the same claimer.
#[derive(Clone)]
pub struct PgSpool {
    inner: Arc<Inner>,
    holder: String,
}

impl fmt::Debug for PgSpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let claims = self
            .shared()
            .held()
            .claims
            .get(&self.holder)
            .map_or(0, |c| c.len());
        f.debug_struct("PgSpool")
            .field("holder", &self.holder)
            .field("claims", &claims)
            .finish()
    }
}

impl PgSpool {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        let holder = inner.shared.token();
        Self { inner, holder }
    }

    /// The name this spool's claims carry (unique to this front end).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Gives up every claim this spool holds, for a front end that stops
    /// cleanly: the others' [`Spool::claim`] takes the messages at once
    /// instead of after the lease. Returns how many were released.
    pub fn release_all(&self) -> Result<u64, StoreError> {
        let released = self
            .shared()
            .conn()?
            .execute(
                "UPDATE postamt_spool SET claim_holder = NULL, claim_expires = NULL \
                 WHERE claim_holder = $1",
                &[&self.holder],
            )
            .map_err(db)?;
        self.shared().held().claims.remove(&self.holder);
        Ok(released)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    fn hold(&self, seq: i64) {
        hold(self.shared(), &self.holder, seq);
    }

    fn unhold(&self, seq: i64) {
        if let Some(claims) = self.shared().held().claims.get_mut(&self.holder) {
            claims.remove(&seq);
        }
    }

    /// Why changing `seq` found no row it may change: gone, or claimed by
    /// another front end.
    fn refusal(&self, id: &SpoolId, seq: i64) -> StoreError {
        let exists = self.shared().conn().ok().and_then(|mut conn| {
            conn.query_opt(
                "SELECT 1 FROM postamt_spool WHERE seq = $1 AND writer IS NULL",
                &[&seq],
            )
            .ok()
        });
        match exists {
            Some(Some(_)) => StoreError::Claimed(id.clone()),
            _ => StoreError::NoSuchSpoolEntry(id.clone()),
        }
    }
}

/// Records that `holder` claimed `seq`, for the heartbeat to renew.
fn hold(shared: &Shared, holder: &str, seq: i64) {
    shared
        .held()
        .claims
        .entry(holder.to_owned())
        .or_default()
        .insert(seq);
}

/// The id of queued message `seq`; [`seq_of`] reads it back.
fn spool_id(seq: i64) -> Result<SpoolId, StoreError> {
    SpoolId::new(format!("q{seq:012}"))
}

fn seq_of(id: &SpoolId) -> Result<i64, StoreError> {
    id.as_str()
        .strip_prefix('q')
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| StoreError::NoSuchSpoolEntry(id.clone()))
}

fn entry(row: &postgres::Row) -> Result<SpoolEntry, StoreError> {
    Ok(SpoolEntry {
        id: spool_id(row.get(0))?,
        record: row.get(1),
        size: octets(row.get(2)),
    })
}

/// Rows this spool may change: committed, and claimed by no one else.
const MINE: &str = "seq = $1 AND writer IS NULL \
     AND (claim_holder IS NULL OR claim_holder = $2 OR claim_expires < now())";

impl Spool for PgSpool {
    fn begin(&self) -> Result<Box<dyn SpoolWriter>, StoreError> {
        let row = self
            .shared()
            .conn()?
            .query_one("SELECT nextval('postamt_spool_ids')", &[])
            .map_err(db)?;
        let seq: i64 = row.get(0);
        Ok(Box::new(PgSpoolWriter {
            shared: Arc::clone(self.shared()),
            holder: self.holder.clone(),
            id: spool_id(seq)?,
            seq,
            buffer: Vec::new(),
            size: 0,
            staged: None,
            failed: false,
        }))
    }

    fn list(&self) -> Result<Vec<SpoolEntry>, StoreError> {
        let rows = self
            .shared()
            .conn()?
            .query(
                "SELECT seq, record, size FROM postamt_spool WHERE writer IS NULL ORDER BY seq",
                &[],
            )
            .map_err(db)?;
        rows.iter().map(entry).collect()
    }

    fn read(&self, id: &SpoolId) -> Result<Box<dyn Read + Send>, StoreError> {
        let seq = seq_of(id)?;
        let row = self
            .shared()
            .conn()?
            .query_opt(
                "SELECT chunks FROM postamt_spool WHERE seq = $1 AND writer IS NULL",
                &[&seq],
            )
            .map_err(db)?
            .ok_or_else(|| StoreError::NoSuchSpoolEntry(id.clone()))?;
        Ok(Box::new(ChunkReader::new(
            Arc::clone(self.shared()),
            "SELECT data FROM postamt_spool_chunks WHERE spool_seq = $1 AND seq = $2",
            seq,
            row.get(0),
        )))
    }

    fn update(&self, id: &SpoolId, record: &[u8]) -> Result<(), StoreError> {
        let seq = seq_of(id)?;
        let changed = self
            .shared()
            .conn()?
            .execute(
                &format!("UPDATE postamt_spool SET record = $3 WHERE {MINE}"),
                &[&seq, &self.holder, &record],
            )
            .map_err(db)?;
        if changed == 0 {
            return Err(self.refusal(id, seq));
        }
        Ok(())
    }

    fn remove(&self, id: &SpoolId) -> Result<(), StoreError> {
        let seq = seq_of(id)?;
        let removed = self
            .shared()
            .conn()?
            .execute(
                &format!("DELETE FROM postamt_spool WHERE {MINE}"),
                &[&seq, &self.holder],
            )
            .map_err(db)?;
        if removed == 0 {
            return Err(self.refusal(id, seq));
        }
        self.unhold(seq);
        Ok(())
    }

    fn claim(&self, max: usize) -> Result<Vec<SpoolEntry>, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let ttl = self.shared().options.ttl_ms();
        let holder = &self.holder;
        let rows = self.shared().transaction(|tx| {
            Ok(tx.query(
                "UPDATE postamt_spool SET claim_holder = $1, \
                 claim_expires = now() + $3::float8 * interval '1 millisecond' \
                 WHERE seq IN (SELECT seq FROM postamt_spool WHERE writer IS NULL \
                   AND (claim_holder IS NULL OR claim_expires < now()) \
                   ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING seq, record, size",
                &[holder, &max, &ttl],
            )?)
        })?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut seqs: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        seqs.sort_unstable();
        for seq in &seqs {
            self.hold(*seq);
        }
        for row in &rows {
            entries.push((row.get::<_, i64>(0), entry(row)?));
        }
        entries.sort_by_key(|(seq, _)| *seq);
        Ok(entries.into_iter().map(|(_, entry)| entry).collect())
    }

    fn release(&self, id: &SpoolId) -> Result<(), StoreError> {
        let seq = seq_of(id)?;
        self.shared()
            .conn()?
            .execute(
                "UPDATE postamt_spool SET claim_holder = NULL, claim_expires = NULL \
                 WHERE seq = $1 AND claim_holder = $2",
                &[&seq, &self.holder],
            )
            .map_err(db)?;
        self.unhold(seq);
        Ok(())
    }
}

/// One message being queued, like a delivery: one chunk in memory, the rest
/// staged in rows that the commit makes visible. Like every value but the
/// store's and spool's handles, it does not keep the heartbeat going.
struct PgSpoolWriter {
    shared: Arc<Shared>,
    /// The claimer the committed message goes to.
    holder: String,
    id: SpoolId,
    seq: i64,
    buffer: Vec<u8>,
    size: u64,
    staged: Option<Staged>,
    failed: bool,
}

impl PgSpoolWriter {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let mut conn = self.shared().conn()?;
        if self.staged.is_none() {
            let writer = self.shared().token();
            conn.execute(
                "INSERT INTO postamt_spool (seq, writer, writer_expires) \
                 VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond')",
                &[&self.seq, &writer, &self.shared().options.ttl_ms()],
            )
            .map_err(db)?;
            self.shared().held().spool_writers.insert(writer.clone());
            self.staged = Some(Staged {
                id: self.seq,
                writer,
                chunks: 0,
            });
        }
        let Some(staged) = self.staged.as_mut() else {
            return Ok(());
        };
        conn.execute(
            "INSERT INTO postamt_spool_chunks (spool_seq, seq, data) VALUES ($1, $2, $3)",
            &[&staged.id, &staged.chunks, &self.buffer],
        )
        .map_err(db)?;
        staged.chunks += 1;
        self.buffer.clear();
        Ok(())
    }

    fn discard(&mut self) {
        self.buffer = Vec::new();
        if let Some(staged) = self.staged.take() {
            self.shared().held().spool_writers.remove(&staged.writer);
            if let Ok(mut conn) = self.shared().conn() {
                // If this fails, the lease runs out and a heartbeat deletes it.
                let _ = conn.execute(
                    "DELETE FROM postamt_spool WHERE seq = $1 AND writer = $2",
                    &[&staged.id, &staged.writer],
                );
            }
        }
    }
}

impl SpoolWriter for PgSpoolWriter {
    fn id(&self) -> &SpoolId {
        &self.id
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Database(
                "an earlier write of this message failed".into(),
            ));
        }
        self.size += chunk.len() as u64;
        let mut rest = chunk;
        while !rest.is_empty() {
            let take = rest.len().min(super::CHUNK_SIZE - self.buffer.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == super::CHUNK_SIZE
                && let Err(e) = self.flush()
            {
                self.failed = true;
                self.discard();
                return Err(e);
            }
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, record: &[u8]) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Database(
                "an earlier write of this message failed".into(),
            ));
        }
        let shared = Arc::clone(self.shared());
        let ttl = shared.options.ttl_ms();
        let seq = self.seq;
        let size = bigint(self.size);
        let staged = self.staged.as_ref().map(|s| (s.writer.clone(), s.chunks));
        let buffer = std::mem::take(&mut self.buffer);
        let holder = self.holder.clone();
        shared.transaction(|tx| {
            let mut chunks = match &staged {
                Some((writer, chunks)) => {
                    let ours = tx.execute(
                        "UPDATE postamt_spool SET writer_expires = now() + $3::float8 * interval '1 millisecond' \
                         WHERE seq = $1 AND writer = $2",
                        &[&seq, writer, &ttl],
                    )?;
                    if ours == 0 {
                        return Err(StoreError::Database(
                            "the message being queued expired before its commit".into(),
                        )
                        .into());
                    }
                    *chunks
                }
                None => {
                    tx.execute("INSERT INTO postamt_spool (seq) VALUES ($1)", &[&seq])?;
                    0
                }
            };
            if !buffer.is_empty() {
                tx.execute(
                    "INSERT INTO postamt_spool_chunks (spool_seq, seq, data) VALUES ($1, $2, $3)",
                    &[&seq, &chunks, &buffer],
                )?;
                chunks += 1;
            }
            // Committed and claimed by this spool at once: no other front
            // end picks it up before this one has queued it.
            tx.execute(
                "UPDATE postamt_spool SET record = $2, size = $3, chunks = $4, \
                 writer = NULL, writer_expires = NULL, claim_holder = $5, \
                 claim_expires = now() + $6::float8 * interval '1 millisecond' WHERE seq = $1",
                &[&seq, &record, &size, &chunks, &holder, &ttl],
            )?;
            Ok(())
        })?;
        hold(&shared, &holder, seq);
        if let Some(staged) = self.staged.take() {
            self.shared().held().spool_writers.remove(&staged.writer);
        }
        Ok(())
    }
}

impl Drop for PgSpoolWriter {
    fn drop(&mut self) {
        self.discard();
    }
}
