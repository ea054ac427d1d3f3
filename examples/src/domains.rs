//! Extra local domains (`--domain`): mail to `user@extra` reaches the user
//! of the same name in the directory's own domains.

use postamt_store::{ApopSecret, Directory, MailboxName};

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
        if let Some(mailbox) = self.inner.resolve(address) {
            return Some(mailbox);
        }
        let (local, domain) = address.rsplit_once('@')?;
        if !self.extra.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return None;
        }
        self.own
            .iter()
            .find_map(|own| self.inner.resolve(&format!("{local}@{own}")))
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.inner.is_local_domain(domain)
            || self.extra.iter().any(|d| d.eq_ignore_ascii_case(domain))
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
