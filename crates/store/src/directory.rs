//! Who the local users are: passwords, APOP secrets, recipients, domains.
//!
//! # The users file
//!
//! One user per line, fields separated by spaces or tabs:
//!
//! ```text
//! # address          password   aliases (optional, any number)
//! anna@kolleg.de     geheim     anna.schmidt@kolleg.de  sekretariat@kolleg.de
//! bob@kolleg.de      topSecret
//! ```
//!
//! - Lines that are blank or whose first non-blank character is `#` are
//!   ignored. A `#` elsewhere is part of a field (passwords may contain it).
//! - The address is `local@domain`; its mailbox is named after the address in
//!   lower case (`anna@kolleg.de`). Passwords cannot contain whitespace.
//! - The password is also the user's APOP shared secret.
//! - Aliases deliver to the user's mailbox; one logs in with the address (or
//!   its local part), not with an alias. No address may appear twice.
//! - The local domains are the domains of all addresses and aliases.
//!
//! Addresses compare case-insensitively, in the domain and, for our own
//! users, in the local part too.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::{MailboxName, StoreError};

/// The users a server knows, as the protocol sides need them.
///
/// `user` is what a client logs in with: a full address (`anna@kolleg.de`)
/// or, when it is unambiguous, the local part alone (`anna`).
pub trait Directory: Send + Sync {
    /// The user's mailbox if `password` is right, else `None`. Unknown users
    /// and wrong passwords are indistinguishable, in the result and, as far
    /// as possible, in time.
    fn verify_password(&self, user: &str, password: &[u8]) -> Option<MailboxName>;

    /// The secret shared with `user` for POP3 APOP, where one exists.
    fn apop_secret(&self, user: &str) -> Option<ApopSecret>;

    /// The local mailbox mail to `address` goes to, or `None` when the
    /// address is unknown (or not in a local domain).
    fn resolve(&self, address: &str) -> Option<MailboxName>;

    /// Whether mail for `domain` is ours to deliver (case-insensitive).
    fn is_local_domain(&self, domain: &str) -> bool;

    /// [`verify_password`](Self::verify_password), or why the directory
    /// cannot answer now (a database that is down): a server then answers
    /// "try again later" (SMTP 454 4.7.0, POP3 `-ERR [SYS/TEMP]`) instead
    /// of "wrong password". The default, for directories that always
    /// answer, never fails.
    fn check_password(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<Option<MailboxName>, StoreError> {
        Ok(self.verify_password(user, password))
    }

    /// [`resolve`](Self::resolve), or why the directory cannot answer now:
    /// SMTP then answers 451 4.3.0 at RCPT instead of a permanent 550 that
    /// would bounce the mail.
    fn lookup(&self, address: &str) -> Result<Option<MailboxName>, StoreError> {
        Ok(self.resolve(address))
    }

    /// [`is_local_domain`](Self::is_local_domain), or why the directory
    /// cannot answer now (then a local recipient is not refused as a
    /// relay attempt).
    fn check_local_domain(&self, domain: &str) -> Result<bool, StoreError> {
        Ok(self.is_local_domain(domain))
    }

    /// Whether a call may wait on a disk or a network. An event loop asks
    /// a directory that does not right away and hands one that does to
    /// worker threads; the default says it may.
    fn blocks(&self) -> bool {
        true
    }
}

/// A user's APOP shared secret, with the mailbox a successful APOP opens.
/// Its `Debug` output hides the secret.
#[derive(Clone)]
pub struct ApopSecret {
    mailbox: MailboxName,
    secret: Vec<u8>,
}

impl ApopSecret {
    /// Pairs a mailbox with its secret.
    pub fn new(mailbox: MailboxName, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            mailbox,
            secret: secret.into(),
        }
    }

    /// The mailbox to open once the digest matches.
    pub fn mailbox(&self) -> &MailboxName {
        &self.mailbox
    }

    /// The secret, to compute `MD5(timestamp + secret)` with.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for ApopSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApopSecret")
            .field("mailbox", &self.mailbox)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Compares two byte strings in time that depends only on their lengths,
/// never on where they first differ, so a password or digest cannot be
/// guessed byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    // `black_box` keeps the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// A fixed set of users, from a users file or from code.
#[derive(Clone, Default)]
pub struct StaticDirectory {
    /// By lower-case primary address.
    users: HashMap<String, User>,
    /// Every lower-case address and alias, to its user's primary address.
    addresses: HashMap<String, String>,
    /// Lower-case local part to the primary addresses that have it.
    local_parts: HashMap<String, Vec<String>>,
    domains: BTreeSet<String>,
}

#[derive(Clone)]
struct User {
    mailbox: MailboxName,
    password: Vec<u8>,
}

impl fmt::Debug for StaticDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("StaticDirectory")
            .field("users", &users)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// One user of a [`StaticDirectory`], as [`StaticDirectory::entries`] gives it.
#[cfg(feature = "postgres")]
pub(crate) struct UserEntry<'a> {
    pub(crate) address: &'a str,
    pub(crate) password: &'a [u8],
    pub(crate) aliases: Vec<&'a str>,
}

/// A password that never matches, compared against for unknown users so they
/// take as long as known ones.
const DUMMY_PASSWORD: &[u8] = b"postamt-no-such-user-dummy-password";

impl StaticDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// The demo users: `anna@kolleg.de` with password `geheim` and
    /// `bob@kolleg.de` with password `topSecret`; local domain `kolleg.de`.
    pub fn demo() -> Self {
        Self::from_str(
            "anna@kolleg.de geheim\n\
             bob@kolleg.de topSecret\n",
        )
        .unwrap_or_default()
    }

    /// Reads a users file (format in the [module docs](self)).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::io("read", path, e))?;
        text.parse().map_err(|e| match e {
            StoreError::UsersFile { line, message, .. } => StoreError::UsersFile {
                path: Some(path.to_owned()),
                line,
                message,
            },
            other => other,
        })
    }

    /// Adds a user with its aliases and returns its mailbox. Fails when an
    /// address is malformed or already taken; the directory is then unchanged.
    pub fn add_user(
        &mut self,
        address: &str,
        password: &str,
        aliases: &[&str],
    ) -> Result<MailboxName, StoreError> {
        let (mailbox, all) = checked_user(address, password.as_bytes(), aliases)?;
        let primary = all[0].clone();
        if let Some(alias) = aliases
            .iter()
            .zip(&all[1..])
            .find_map(|(alias, norm)| self.addresses.contains_key(norm).then_some(alias))
        {
            return Err(taken(alias));
        }
        if self.addresses.contains_key(&primary) {
            return Err(taken(address));
        }
        for addr in &all {
            self.addresses.insert(addr.clone(), primary.clone());
            let (_, domain) = split_address(addr).unwrap_or_default();
            self.domains.insert(domain.to_owned());
        }
        let (local, _) = split_address(&primary).unwrap_or_default();
        self.local_parts
            .entry(local.to_owned())
            .or_default()
            .push(primary.clone());
        self.users.insert(
            primary,
            User {
                mailbox: mailbox.clone(),
                password: password.as_bytes().to_vec(),
            },
        );
        Ok(mailbox)
    }

    /// Every user with its password and aliases (lower case), sorted by
    /// address, for copying the directory into a database.
    #[cfg(feature = "postgres")]
    pub(crate) fn entries(&self) -> Vec<UserEntry<'_>> {
        let mut entries: Vec<UserEntry<'_>> = self
            .users
            .iter()
            .map(|(address, user)| {
                let mut aliases: Vec<&str> = self
                    .addresses
                    .iter()
                    .filter(|(alias, primary)| *primary == address && *alias != address)
                    .map(|(alias, _)| alias.as_str())
                    .collect();
                aliases.sort_unstable();
                UserEntry {
                    address,
                    password: &user.password,
                    aliases,
                }
            })
            .collect();
        entries.sort_by(|a, b| a.address.cmp(b.address));
        entries
    }

    /// The local domains, in lower case and sorted.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(String::as_str)
    }

    /// The user someone logs in as: by full address, or by local part when
    /// exactly one user has it.
    fn login(&self, user: &str) -> Option<&User> {
        let user = user.to_lowercase();
        if user.contains('@') {
            return self.users.get(&user);
        }
        match self.local_parts.get(&user).map(Vec::as_slice) {
            Some([only]) => self.users.get(only),
            _ => None,
        }
    }
}

/// A user as a directory may take it: its mailbox, and its addresses
/// normalized (the user's own first, then the aliases, none twice), with
/// a password that is not empty.
pub(crate) fn checked_user(
    address: &str,
    password: &[u8],
    aliases: &[&str],
) -> Result<(MailboxName, Vec<String>), StoreError> {
    let primary = normalize(address)?;
    let mailbox = MailboxName::new(primary.clone()).map_err(|e| StoreError::InvalidUser {
        address: address.to_owned(),
        reason: e.to_string(),
    })?;
    if password.is_empty() {
        return Err(StoreError::InvalidUser {
            address: address.to_owned(),
            reason: "empty password".to_owned(),
        });
    }
    let mut all = vec![primary];
    for alias in aliases {
        let norm = normalize(alias)?;
        if all.contains(&norm) {
            return Err(taken(alias));
        }
        all.push(norm);
    }
    Ok((mailbox, all))
}

pub(crate) fn taken(address: &str) -> StoreError {
    StoreError::InvalidUser {
        address: address.to_owned(),
        reason: "address is already taken".to_owned(),
    }
}

pub(crate) fn split_address(address: &str) -> Option<(&str, &str)> {
    address.rsplit_once('@')
}

/// Lower-cases a well-formed `local@domain` address, refusing anything else.
pub(crate) fn normalize(address: &str) -> Result<String, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUser {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((local, domain)) = split_address(address) else {
        return Err(invalid("not an address of the form local@domain"));
    };
    if local.is_empty() || domain.is_empty() {
        return Err(invalid("not an address of the form local@domain"));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace or a control character"));
    }
    if domain.contains('@')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(invalid("not a valid domain"));
    }
    Ok(address.to_lowercase())
}

impl FromStr for StaticDirectory {
    type Err = StoreError;

    /// Parses the text of a users file (format in the [module docs](self)).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut directory = Self::new();
        // Lower-case address to the line that defined it, for error messages.
        let mut defined: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let error = |message: String| StoreError::UsersFile {
                path: None,
                line: number,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(address), Some(password)) = (fields.next(), fields.next()) else {
                return Err(error(format!(
                    "expected an address and a password, found only {line:?}"
                )));
            };
            let aliases: Vec<&str> = fields.collect();
            for addr in std::iter::once(address).chain(aliases.iter().copied()) {
                if let Some(first) = normalize(addr).ok().and_then(|a| defined.get(&a)) {
                    return Err(error(format!(
                        "address {addr:?} is already used on line {first}"
                    )));
                }
            }
            directory
                .add_user(address, password, &aliases)
                .map_err(|e| match e {
                    StoreError::InvalidUser { address, reason } => {
                        error(format!("{address:?}: {reason}"))
                    }
                    other => error(other.to_string()),
                })?;
            for addr in std::iter::once(address).chain(aliases.iter().copied()) {
                if let Ok(addr) = normalize(addr) {
                    defined.insert(addr, number);
                }
            }
        }
        Ok(directory)
    }
}

impl Directory for StaticDirectory {
    /// Everything is in memory.
    fn blocks(&self) -> bool {
        false
    }

    fn verify_password(&self, user: &str, password: &[u8]) -> Option<MailboxName> {
        match self.login(user) {
            Some(found) => {
                constant_time_eq(&found.password, password).then(|| found.mailbox.clone())
            }
            None => {
                let _ = constant_time_eq(DUMMY_PASSWORD, password);
                None
            }
        }
    }

    fn apop_secret(&self, user: &str) -> Option<ApopSecret> {
        self.login(user)
            .map(|found| ApopSecret::new(found.mailbox.clone(), found.password.clone()))
    }

    fn resolve(&self, address: &str) -> Option<MailboxName> {
        let primary = self.addresses.get(&address.to_lowercase())?;
        self.users.get(primary).map(|user| user.mailbox.clone())
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(&domain.to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        match text.parse::<StaticDirectory>() {
            Ok(d) => panic!("parsed: {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn constant_time_eq_compares_bytes_and_lengths() {
        assert!(constant_time_eq(b"geheim", b"geheim"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"geheim", b"geheiM"));
        assert!(!constant_time_eq(b"geheim", b"geheim\0"));
        assert!(!constant_time_eq(b"geheim\0", b"geheim"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn parses_users_aliases_comments_and_blank_lines() {
        let text = "# users\n\n  anna@Kolleg.de\tgeheim  anna.schmidt@kolleg.de SEKRETARIAT@verein.example\n   # indented comment\nbob@kolleg.de top#Secret\n";
        let dir: StaticDirectory = text.parse().unwrap();
        let anna = MailboxName::new("anna@kolleg.de").unwrap();
        assert_eq!(
            dir.verify_password("anna@kolleg.de", b"geheim"),
            Some(anna.clone())
        );
        assert_eq!(
            dir.verify_password("bob", b"top#Secret").unwrap().as_str(),
            "bob@kolleg.de"
        );
        assert_eq!(dir.resolve("Anna.Schmidt@KOLLEG.DE"), Some(anna.clone()));
        assert_eq!(dir.resolve("sekretariat@verein.example"), Some(anna));
        assert_eq!(
            dir.domains().collect::<Vec<_>>(),
            ["kolleg.de", "verein.example"]
        );
    }

    #[test]
    fn users_file_errors_name_the_line() {
        assert_eq!(
            parse_err("# x\nanna@kolleg.de\n"),
            "line 2: expected an address and a password, found only \"anna@kolleg.de\""
        );
        assert_eq!(
            parse_err("anna geheim\n"),
            "line 1: \"anna\": not an address of the form local@domain"
        );
        assert_eq!(
            parse_err("anna@kolleg.de geheim\n\nbob@kolleg.de x ANNA@kolleg.de\n"),
            "line 3: address \"ANNA@kolleg.de\" is already used on line 1"
        );
        assert_eq!(
            parse_err("anna@kolleg.de geheim a@kolleg.de a@kolleg.de\n"),
            "line 1: \"a@kolleg.de\": address is already taken"
        );
        assert_eq!(
            parse_err("..x@kolleg.de geheim\n"),
            "line 1: \"..x@kolleg.de\": invalid mailbox name \"..x@kolleg.de\": starts with a dot"
        );
        assert_eq!(
            parse_err("anna@kolleg..de geheim\n"),
            "line 1: \"anna@kolleg..de\": not a valid domain"
        );
        assert_eq!(
            parse_err("anna@ geheim\n"),
            "line 1: \"anna@\": not an address of the form local@domain"
        );
    }

    #[test]
    fn file_errors_carry_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "bob@kolleg.de\n").unwrap();
        let err = StaticDirectory::from_file(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: line 1: expected an address and a password, found only \"bob@kolleg.de\"",
                path.display()
            )
        );
        let missing = dir.path().join("missing");
        let err = StaticDirectory::from_file(&missing).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn demo_users_log_in_by_local_part_or_address() {
        let dir = StaticDirectory::demo();
        let anna = MailboxName::new("anna@kolleg.de").unwrap();
        assert_eq!(dir.verify_password("anna", b"geheim"), Some(anna.clone()));
        assert_eq!(
            dir.verify_password("ANNA@Kolleg.DE", b"geheim"),
            Some(anna.clone())
        );
        assert_eq!(dir.verify_password("anna", b"Geheim"), None);
        assert_eq!(dir.verify_password("anna", b""), None);
        assert_eq!(dir.verify_password("nobody", b"geheim"), None);
        assert_eq!(
            dir.verify_password("bob", b"topSecret").unwrap().as_str(),
            "bob@kolleg.de"
        );
        assert!(dir.is_local_domain("KOLLEG.de"));
        assert!(!dir.is_local_domain("example.org"));
        assert_eq!(
            dir.resolve("Bob@Kolleg.De").unwrap().as_str(),
            "bob@kolleg.de"
        );
        assert_eq!(dir.resolve("carl@kolleg.de"), None);
        assert_eq!(dir.resolve("anna@example.org"), None);
        let apop = dir.apop_secret("anna").unwrap();
        assert_eq!((apop.mailbox(), apop.secret()), (&anna, &b"geheim"[..]));
        assert!(!format!("{apop:?}").contains("geheim"));
        assert!(!format!("{dir:?}").contains("geheim"));
        assert!(dir.apop_secret("carl").is_none());
    }

    #[test]
    fn ambiguous_local_part_does_not_log_in() {
        let mut dir = StaticDirectory::new();
        dir.add_user("anna@kolleg.de", "eins", &[]).unwrap();
        dir.add_user("anna@verein.example", "zwei", &[]).unwrap();
        assert_eq!(dir.verify_password("anna", b"eins"), None);
        assert_eq!(
            dir.verify_password("anna@verein.example", b"zwei")
                .unwrap()
                .as_str(),
            "anna@verein.example"
        );
        assert!(dir.apop_secret("anna").is_none());
    }

    #[test]
    fn failed_add_leaves_the_directory_unchanged() {
        let mut dir = StaticDirectory::new();
        dir.add_user("anna@kolleg.de", "eins", &[]).unwrap();
        assert!(
            dir.add_user(
                "bob@kolleg.de",
                "zwei",
                &["x@other.example", "anna@kolleg.de"]
            )
            .is_err()
        );
        assert_eq!(dir.resolve("x@other.example"), None);
        assert_eq!(dir.resolve("bob@kolleg.de"), None);
        assert!(!dir.is_local_domain("other.example"));
        assert!(dir.add_user("bob@kolleg.de", "", &[]).is_err());
    }
}
