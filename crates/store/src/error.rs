//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use crate::MailboxName;

/// Everything that can go wrong in a store, a directory or the users file.
///
/// I/O errors keep the path they concern and the underlying [`io::Error`] as
/// their source, so a log line says which file failed and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A mailbox name that must not become a path (see [`MailboxName::new`]).
    #[error("invalid mailbox name {name:?}: {reason}")]
    InvalidMailboxName {
        /// The rejected name, as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Another session holds this mailbox's maildrop (POP3 `-ERR [IN-USE]`).
    #[error("mailbox {0} is locked by another session")]
    Locked(MailboxName),
    /// A spool id that must not become a file name (see [`SpoolId::new`]).
    ///
    /// [`SpoolId::new`]: crate::SpoolId::new
    #[error("invalid spool id {0:?}")]
    InvalidSpoolId(String),
    /// No spooled message has this id.
    #[error("no spooled message {0}")]
    NoSuchSpoolEntry(crate::SpoolId),
    /// Another front end holds the claim on this spooled message (see
    /// [`Spool::claim`](crate::Spool::claim)): only its holder changes it.
    #[error("spooled message {0} is claimed by another front end")]
    Claimed(crate::SpoolId),
    /// A database failed or refused a statement. The text names what failed
    /// (SQLSTATE and message) and never carries passwords or mail.
    #[error("database: {0}")]
    Database(String),
    /// A delivery was begun without any recipient.
    #[error("a delivery needs at least one recipient")]
    NoRecipients,
    /// The message does not fit in `mailbox`: it would pass the mailbox's
    /// size limit. Temporary: deletions make room (SMTP `452 4.2.2`).
    #[error("mailbox {mailbox} is full (limit {limit} octets)")]
    QuotaExceeded {
        /// The mailbox that has no room.
        mailbox: MailboxName,
        /// Its limit in octets.
        limit: u64,
    },
    /// The store as a whole has no room: the message would pass its total
    /// limit (SMTP `452 4.3.1`).
    #[error("the store is full (limit {limit} octets for all mailboxes)")]
    StorageFull {
        /// The total limit in octets.
        limit: u64,
    },
    /// A message index outside the maildrop's listing.
    #[error("no message with index {index} (the maildrop lists {count})")]
    NoSuchMessage {
        /// The index asked for (0-based).
        index: usize,
        /// How many messages the listing has.
        count: usize,
    },
    /// A user entry that cannot be added to a directory.
    #[error("user {address:?}: {reason}")]
    InvalidUser {
        /// The address or alias concerned.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A syntax or consistency error in a users file, with its line number.
    #[error("{}line {line}: {message}", path_prefix(.path.as_ref()))]
    UsersFile {
        /// The file, when the text was read from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong on that line.
        message: String,
    },
    /// An operating-system error on a file or directory.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("create", "rename", "sync", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

fn path_prefix(path: Option<&PathBuf>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl StoreError {
    /// Wraps an [`io::Error`] with what was being done and to which path.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
