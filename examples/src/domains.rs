//! Extra local domains (`--domain`): mail to `user@extra` reaches the user
//! of the same name in the directory's own domains.

use postamt_store::{ApopSecret, Directory, MailboxName, StoreError};

/// A directory that also counts `extra` domains as local.
pub struct ExtraDomains<D> {
    inner: D,
    own: Vec<String>,
    extra: Vec<String>,
}

impl<D: Directory> ExtraDomains<D> {
    /// Wraps `inner`, whose own domains are `own`, adding `extra` ones.
    pub fn new(inner: D, own: Vec<String>, extra: Vec<String>) -> Self {
        Self { inner, own, extra }
    }
}

impl<D> std::fmt::Debug for ExtraDomains<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraDomains")
            .field("own", &self.own)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

impl<D: Directory> Directory for ExtraDomains<D> {
    fn blocks(&self) -> bool {
        self.inner.blocks()
    }

    fn verify_password(&self, user: &str, password: &[u8]) -> Option<MailboxName> {
        self.inner.verify_password(user, password)
    }

    fn apop_secret(&self, user: &str) -> Option<ApopSecret> {
        self.inner.apop_secret(user)
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
        self.inner.check_password(user, password)
    }

    fn lookup(&self, address: &str) -> Result<Option<MailboxName>, StoreError> {
        if let Some(mailbox) = self.inner.lookup(address)? {
            return Ok(Some(mailbox));
        }
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Ok(None);
        };
        if !self.extra.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Ok(None);
        }
        for own in &self.own {
            if let Some(mailbox) = self.inner.lookup(&format!("{local}@{own}"))? {
                return Ok(Some(mailbox));
            }
        }
        Ok(None)
    }

    fn check_local_domain(&self, domain: &str) -> Result<bool, StoreError> {
        Ok(self.extra.iter().any(|d| d.eq_ignore_ascii_case(domain))
            || self.inner.check_local_domain(domain)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postamt_store::StaticDirectory;

    #[test]
    fn extra_domains_reach_the_same_users() {
        let d = ExtraDomains::new(
            StaticDirectory::demo(),
            vec!["kolleg.de".into()],
            vec!["schule.example".into()],
        );
        assert!(d.is_local_domain("SCHULE.example"));
        assert!(d.is_local_domain("kolleg.de"));
        assert!(!d.is_local_domain("elsewhere.example"));
        assert_eq!(
            d.resolve("bob@schule.example").unwrap().as_str(),
            "bob@kolleg.de"
        );
        assert_eq!(
            d.resolve("bob@kolleg.de").unwrap().as_str(),
            "bob@kolleg.de"
        );
        assert!(d.resolve("nobody@schule.example").is_none());
        assert!(d.resolve("bob@elsewhere.example").is_none());
    }
}
