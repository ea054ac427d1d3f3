//! Where postamt's mail lives: the user directory, delivery and the POP3
//! maildrop, with an in-memory store and a Maildir store.
//!
//! - [`Directory`] answers who may log in ([`verify_password`](Directory::verify_password),
//!   [`apop_secret`](Directory::apop_secret)) and where mail goes
//!   ([`resolve`](Directory::resolve), [`is_local_domain`](Directory::is_local_domain)).
//!   [`StaticDirectory`] implements it from a users file (format in
//!   [`directory`]) or from code.
//! - [`MailStore`] begins a [`Delivery`] (written in chunks, durable on
//!   commit, aborted on drop) and opens a [`Maildrop`] (exclusive, a stable
//!   listing with CRLF sizes and unique ids, messages read as streams,
//!   deletions only on commit).
//! - [`MemoryStore`] keeps mail in memory; [`Maildir`] keeps it in Maildir
//!   folders that Dovecot, mutt and neomutt read and write too.
//! - Both limit each mailbox's size ([`DEFAULT_MAILBOX_SIZE_LIMIT`], 50 MiB),
//!   and [`MemoryStore`] all it holds ([`DEFAULT_MEMORY_LIMIT`], 512 MiB):
//!   [`MailStore::check_room`] asks before a message, and
//!   [`Delivery::write_chunk`] refuses the chunk that would pass a limit
//!   ([`StoreError::QuotaExceeded`], [`StoreError::StorageFull`]).
//! - [`Spool`] is the outbound queue of a server that forwards: messages for
//!   other servers with an opaque record of their state, durable on commit
//!   ([`MemorySpool`] in memory, [`FolderSpool`] in a folder, durable as
//!   Maildir is).
//! - [`MailView`] looks into the mailboxes without a lock and changes nothing
//!   (for a monitor; both stores implement it).
//! - With the cargo feature `postgres`, the module `pg` keeps users, mailboxes and
//!   the forwarding queue in PostgreSQL, shared by several front ends
//!   (`PgStore`, `PgSpool`).
//! - [`summary`] gives From, To, Subject and Date for listings and logs.
//!
//! Everything is synchronous; an async server calls it from a blocking pool.
//! Mailbox names are checked ([`MailboxName`]) before they become paths.
//!
//! # Example
//!
//! ```
//! use std::io::Read;
//! use postamt_store::{MailStore, MailboxName, MemoryStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let anna = MailboxName::new("anna@kolleg.de")?;
//!
//! // SMTP side: the message arrives in chunks and is stored on commit.
//! let mut delivery = store.begin_delivery(&[anna.clone()])?;
//! delivery.write_chunk(b"Subject: Hallo\r\n\r\n")?;
//! delivery.write_chunk(b"Bis morgen!\r\n")?;
//! delivery.commit()?;
//!
//! // POP3 side: one session holds the maildrop.
//! let maildrop = store.open_maildrop(&anna)?;
//! assert_eq!(maildrop.messages().len(), 1);
//! assert_eq!(maildrop.messages()[0].size, 31);
//! let mut text = String::new();
//! maildrop.read_message(0)?.read_to_string(&mut text)?;
//! assert_eq!(text, "Subject: Hallo\r\n\r\nBis morgen!\r\n");
//!
//! // DELE 1, then QUIT: the deletion happens on commit.
//! maildrop.commit_deletions(&[0])?;
//! assert!(store.open_maildrop(&anna)?.messages().is_empty());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod crlf;
pub mod directory;
mod error;
mod folder_spool;
mod mailbox;
mod maildir;
mod memory;
#[cfg(feature = "postgres")]
pub mod pg;
mod spool;
mod store;
mod summary;

pub use directory::{ApopSecret, Directory, StaticDirectory, constant_time_eq};
pub use error::StoreError;
pub use folder_spool::FolderSpool;
pub use mailbox::{MAX_MAILBOX_NAME_LEN, MAX_UID_LEN, MailboxName, Uid};
pub use maildir::{LOCK_FILE_NAME, Maildir, SIZE_CACHE_MARGIN, SIZE_RELIST_AFTER, STALE_TMP_AGE};
pub use memory::{DEFAULT_MEMORY_LIMIT, MemoryStore};
#[cfg(feature = "postgres")]
pub use pg::{ApopSecrets, PgOptions, PgSpool, PgStore};
pub use spool::{MemorySpool, Spool, SpoolEntry, SpoolId, SpoolWriter};
pub use store::{DEFAULT_MAILBOX_SIZE_LIMIT, Delivery, MailStore, MailView, Maildrop, MessageInfo};
pub use summary::{Summary, summary};
