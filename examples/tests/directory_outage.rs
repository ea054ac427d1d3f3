//! A user directory that cannot answer (a database that is down) makes the
//! toy server say "try again later", never "no": RCPT gets `451 4.3.0`
//! (a 550 would bounce the mail for good), AUTH `454 4.7.0` (not 535), POP3
//! PASS `-ERR [SYS/TEMP]` (not `[AUTH]`); and the same connection is served
//! normally once the directory answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod lines;
use lines::Conn;

use postamt_examples::{Options, Server};
use postamt_store::{ApopSecret, Directory, MailboxName, MemoryStore, StaticDirectory, StoreError};

/// The demo users, unavailable while `down` is set.
struct Flaky {
    inner: StaticDirectory,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Database("the database is down".to_string()));
        }
        Ok(())
    }
}

impl Directory for Flaky {
    fn verify_password(&self, user: &str, password: &[u8]) -> Option<MailboxName> {
        self.check_password(user, password).ok().flatten()
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
        self.check()?;
        Ok(self.inner.verify_password(user, password))
    }
    fn lookup(&self, address: &str) -> Result<Option<MailboxName>, StoreError> {
        self.check()?;
        Ok(self.inner.resolve(address))
    }
    fn check_local_domain(&self, domain: &str) -> Result<bool, StoreError> {
        self.check()?;
        Ok(self.inner.is_local_domain(domain))
    }
}

#[test]
fn a_directory_that_cannot_answer_gets_try_again_later() {
    let down = Arc::new(AtomicBool::new(true));
    let directory = Flaky {
        inner: StaticDirectory::demo(),
        down: Arc::clone(&down),
    };
    let server = Server::start(Options {
        hostname: "mail.kolleg.de".to_string(),
        ..Options::new(Arc::new(MemoryStore::new()), Arc::new(directory))
    })
    .expect("server starts");
    let wait = Duration::from_secs(10);

    let mut smtp = Conn::with_timeout(server.smtp_addr(), wait);
    assert_eq!(smtp.reply(), "220 mail.kolleg.de ESMTP postamt ready\r\n");
    assert!(smtp.command("EHLO client.example\r\n").starts_with("250-"));
    // AUTH PLAIN anna / geheim.
    assert_eq!(
        smtp.command("AUTH PLAIN AGFubmEAZ2VoZWlt\r\n"),
        "454 4.7.0 Temporary authentication failure\r\n"
    );
    assert_eq!(
        smtp.command("MAIL FROM:<anna@kolleg.de>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        smtp.command("RCPT TO:<bob@kolleg.de>\r\n"),
        "451 4.3.0 Local error in processing; try again later\r\n"
    );
    let mut pop3 = Conn::with_timeout(server.pop3_addr(), wait);
    assert!(pop3.line().starts_with("+OK "));
    assert!(pop3.command("USER bob\r\n").starts_with("+OK"));
    assert_eq!(
        pop3.command("PASS topSecret\r\n"),
        "-ERR [SYS/TEMP] Cannot check the password now, try later\r\n"
    );

    // Back: the same connections go on.
    down.store(false, Ordering::SeqCst);
    assert_eq!(
        smtp.command("RCPT TO:<bob@kolleg.de>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        smtp.command("RCPT TO:<nobody@kolleg.de>\r\n"),
        "550 5.1.1 No such user here\r\n"
    );
    assert!(pop3.command("USER bob\r\n").starts_with("+OK"));
    assert!(pop3.command("PASS topSecret\r\n").starts_with("+OK"));
    server.stop();
}
