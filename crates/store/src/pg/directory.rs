//! The user directory in the database: passwords as Argon2 hashes (PHC
//! strings), the APOP secret only for users stored with one, aliases and
//! local domains in their own tables.

use std::path::Path;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use postgres::Transaction;

use super::{Fail, PgStore, db};
use crate::directory::{checked_user, split_address, taken};
use crate::{ApopSecret, Directory, MailboxName, StaticDirectory, StoreError};

/// Whether the database keeps users' plain secrets for POP3 APOP.
///
/// APOP needs the secret itself (the server computes `MD5(timestamp +
/// secret)`), which a hash cannot give. Without it, users log in with USER
/// and PASS against the hash alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApopSecrets {
    /// Keep only the password hash: no APOP for these users.
    Discard,
    /// Keep the password as the APOP secret too, as the users file means it.
    Keep,
}

/// One user, checked and with its password hashed, ready to be written.
struct NewUser {
    address: String,
    local_part: String,
    mailbox: MailboxName,
    hash: String,
    apop: Option<Vec<u8>>,
    aliases: Vec<String>,
}

impl NewUser {
    fn new(
        address: &str,
        password: &[u8],
        aliases: &[&str],
        apop: ApopSecrets,
    ) -> Result<Self, StoreError> {
        let (mailbox, mut all) = checked_user(address, password, aliases)?;
        let primary = all[0].clone();
        let local_part = split_address(&primary).unwrap_or_default().0.to_owned();
        Ok(Self {
            address: primary,
            local_part,
            mailbox,
            hash: hash(password)?,
            apop: (apop == ApopSecrets::Keep).then(|| password.to_vec()),
            aliases: all.split_off(1),
        })
    }

    /// Inserts or replaces the user, its aliases and its domains.
    fn write(&self, tx: &mut Transaction<'_>) -> Result<(), Fail> {
        if tx
            .query_opt(
                "SELECT 1 FROM postamt_aliases WHERE address = $1",
                &[&self.address],
            )?
            .is_some()
        {
            return Err(taken(&self.address).into());
        }
        tx.execute(
            "INSERT INTO postamt_users (address, local_part, mailbox, password_hash, apop_secret) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (address) DO UPDATE SET \
             local_part = excluded.local_part, mailbox = excluded.mailbox, \
             password_hash = excluded.password_hash, apop_secret = excluded.apop_secret",
            &[
                &self.address,
                &self.local_part,
                &self.mailbox.as_str(),
                &self.hash,
                &self.apop,
            ],
        )?;
        tx.execute(
            "DELETE FROM postamt_aliases WHERE user_address = $1",
            &[&self.address],
        )?;
        for alias in &self.aliases {
            let clash = tx.query_opt(
                "SELECT 1 FROM postamt_users WHERE address = $1 \
                 UNION ALL SELECT 1 FROM postamt_aliases WHERE address = $1",
                &[alias],
            )?;
            if clash.is_some() {
                return Err(taken(alias).into());
            }
            tx.execute(
                "INSERT INTO postamt_aliases (address, user_address) VALUES ($1, $2)",
                &[alias, &self.address],
            )?;
        }
        for address in std::iter::once(&self.address).chain(&self.aliases) {
            let (_, domain) = split_address(address).unwrap_or_default();
            tx.execute(
                "INSERT INTO postamt_domains (domain) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&domain],
            )?;
        }
        Ok(())
    }
}

/// What the database has for a user who logs in.
struct Login {
    mailbox: MailboxName,
    /// The password's PHC string.
    hash: String,
    apop: Option<Vec<u8>>,
}

/// `password`'s Argon2id hash with a fresh salt, as a PHC string.
fn hash(password: &[u8]) -> Result<String, StoreError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash: PasswordHash| hash.to_string())
        .map_err(|e| StoreError::Database(format!("cannot hash a password: {e}")))
}

impl PgStore {
    /// Adds `address` with `password` and `aliases`, or replaces what the
    /// database has for it (password, APOP secret, aliases). Its domain and
    /// its aliases' become local. Returns the user's mailbox. Fails when an
    /// address is malformed or taken by another user; nothing changes then.
    pub fn set_user(
        &self,
        address: &str,
        password: &str,
        aliases: &[&str],
        apop: ApopSecrets,
    ) -> Result<MailboxName, StoreError> {
        let user = NewUser::new(address, password.as_bytes(), aliases, apop)?;
        self.shared().transaction(|tx| user.write(tx))?;
        Ok(user.mailbox)
    }

    /// Removes the user `address` and its aliases; whether there was one.
    /// Its mailbox and the local domains stay.
    pub fn remove_user(&self, address: &str) -> Result<bool, StoreError> {
        let address = address.to_lowercase();
        let removed = self
            .shared()
            .conn()?
            .execute("DELETE FROM postamt_users WHERE address = $1", &[&address])
            .map_err(db)?;
        Ok(removed > 0)
    }

    /// Makes `domain` local (it stays so when users are removed).
    pub fn add_domain(&self, domain: &str) -> Result<(), StoreError> {
        self.shared()
            .conn()?
            .execute(
                "INSERT INTO postamt_domains (domain) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&domain.to_lowercase()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Copies every user of `users` into the database in one transaction, as
    /// [`set_user`](Self::set_user) does: importing again updates passwords
    /// and aliases; users the database has beyond these stay. Returns how
    /// many users were written.
    pub fn import_users(
        &self,
        users: &StaticDirectory,
        apop: ApopSecrets,
    ) -> Result<usize, StoreError> {
        // Hashed before the transaction, which then holds locks only briefly.
        let entries = users
            .entries()
            .into_iter()
            .map(|e| NewUser::new(e.address, e.password, &e.aliases, apop))
            .collect::<Result<Vec<_>, _>>()?;
        let domains: Vec<String> = users.domains().map(str::to_owned).collect();
        self.shared().transaction(|tx| {
            for user in &entries {
                user.write(tx)?;
            }
            for domain in &domains {
                tx.execute(
                    "INSERT INTO postamt_domains (domain) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[domain],
                )?;
            }
            Ok(())
        })?;
        Ok(entries.len())
    }

    /// Reads a users file (format in [`crate::directory`]) and imports it
    /// (see [`import_users`](Self::import_users)).
    pub fn import_users_file(
        &self,
        path: impl AsRef<Path>,
        apop: ApopSecrets,
    ) -> Result<usize, StoreError> {
        self.import_users(&StaticDirectory::from_file(path)?, apop)
    }

    /// The user someone logs in as (by full address, or by local part when
    /// exactly one user has it): mailbox, hash, APOP secret.
    fn login(&self, user: &str) -> Result<Option<Login>, StoreError> {
        let user = user.to_lowercase();
        let mut conn = self.shared().conn()?;
        let rows = if user.contains('@') {
            conn.query(
                "SELECT mailbox, password_hash, apop_secret FROM postamt_users WHERE address = $1",
                &[&user],
            )
        } else {
            conn.query(
                "SELECT mailbox, password_hash, apop_secret FROM postamt_users \
                 WHERE local_part = $1 LIMIT 2",
                &[&user],
            )
        }
        .map_err(db)?;
        let [row] = rows.as_slice() else {
            return Ok(None);
        };
        Ok(Some(Login {
            mailbox: MailboxName::new(row.get::<_, String>(0))?,
            hash: row.get(1),
            apop: row.get(2),
        }))
    }

    /// A hash no password matches, verified for unknown users so that they
    /// take as long as known ones.
    fn dummy_hash(&self) -> &str {
        self.shared()
            .dummy_hash
            .get_or_init(|| hash(b"postamt-no-such-user").unwrap_or_default())
    }
}

impl Directory for PgStore {
    fn verify_password(&self, user: &str, password: &[u8]) -> Option<MailboxName> {
        // A database failure answers as a wrong password does: no login.
        self.check_password(user, password).ok().flatten()
    }

    fn apop_secret(&self, user: &str) -> Option<ApopSecret> {
        match self.login(user) {
            Ok(Some(Login {
                mailbox,
                apop: Some(secret),
                ..
            })) => Some(ApopSecret::new(mailbox, secret)),
            _ => None,
        }
    }

    fn resolve(&self, address: &str) -> Option<MailboxName> {
        self.lookup(address).ok().flatten()
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.check_local_domain(domain).unwrap_or(false)
    }

    fn check_password(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<Option<MailboxName>, StoreError> {
        match self.login(user) {
            Ok(Some(login)) => Ok(Argon2::default()
                .verify_password(password, login.hash.as_str())
                .is_ok()
                .then_some(login.mailbox)),
            found => {
                // Unknown users take as long as known ones.
                let _ = Argon2::default().verify_password(password, self.dummy_hash());
                found.map(|_| None)
            }
        }
    }

    fn lookup(&self, address: &str) -> Result<Option<MailboxName>, StoreError> {
        let address = address.to_lowercase();
        let row = self
            .shared()
            .conn()?
            .query_opt(
                "SELECT mailbox FROM postamt_users WHERE address = $1 \
                 UNION ALL SELECT u.mailbox FROM postamt_aliases a \
                 JOIN postamt_users u ON u.address = a.user_address WHERE a.address = $1 \
                 LIMIT 1",
                &[&address],
            )
            .map_err(db)?;
        row.map(|row| MailboxName::new(row.get::<_, String>(0)))
            .transpose()
    }

    fn check_local_domain(&self, domain: &str) -> Result<bool, StoreError> {
        let row = self
            .shared()
            .conn()?
            .query_opt(
                "SELECT 1 FROM postamt_domains WHERE domain = $1",
                &[&domain.to_lowercase()],
            )
            .map_err(db)?;
        Ok(row.is_some())
    }
}
