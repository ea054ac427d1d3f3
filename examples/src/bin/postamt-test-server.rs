//! The toy server as a process of its own, for the tests that must kill it
//! (`tests/crash.rs`: SIGKILL mid-delivery) or measure it alone
//! (`tests/memory.rs`: its peak RSS from `/proc`). Not meant for people: the
//! `toy-server` example is.
//!
//! ```text
//! postamt-test-server MAILDIR [MAX_MESSAGE_SIZE]
//! ```
//!
//! Serves the demo users (anna@kolleg.de, bob@kolleg.de) from the Maildir at
//! `MAILDIR` on 127.0.0.1, on free ports it prints to standard output as
//! `smtp PORT` and `pop3 PORT`. It stops when its standard input closes, so a
//! test that dies takes its server with it.
//!
//! With `POSTAMT_TEST_ROUTE=DOMAIN=HOST:PORT` it relays mail for `DOMAIN`
//! from loopback clients to that host, keeps its queue in `MAILDIR/.queue`
//! and retries quickly (`tests/queue_crash.rs`).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use postamt_examples::{Forwarding, Options, Server};
use postamt_store::{FolderSpool, Maildir, StaticDirectory};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next() else {
        eprintln!("usage: postamt-test-server MAILDIR [MAX_MESSAGE_SIZE]");
        return ExitCode::from(2);
    };
    let mut smtp = postamt_smtp::ServerConfig::new("mail.kolleg.de");
    if let Some(size) = args.next() {
        let Ok(size) = size.parse() else {
            eprintln!("MAX_MESSAGE_SIZE must be a number of octets, not {size:?}");
            return ExitCode::from(2);
        };
        smtp.limits.max_message_size = size;
    }
    let queue = std::path::Path::new(&root).join(".queue");
    let mut options = Options::new(
        // No mailbox limit: the tests measure memory and crashes, not quotas.
        Arc::new(Maildir::new(root).with_mailbox_size_limit(None)),
        Arc::new(StaticDirectory::demo()),
    );
    if let Ok(route) = std::env::var("POSTAMT_TEST_ROUTE") {
        let Some((domain, hop)) = route
            .split_once('=')
            .and_then(|(d, h)| Some((d.to_string(), h.parse().ok()?)))
        else {
            eprintln!("POSTAMT_TEST_ROUTE must be DOMAIN=HOST:PORT, not {route:?}");
            return ExitCode::from(2);
        };
        options.forwarding = Forwarding {
            relay_from: vec!["127.0.0.0/8".parse().expect("a network")],
            routes: vec![(domain, hop)],
            local_domains: vec!["kolleg.de".into()],
            retry_after: std::time::Duration::from_millis(200),
            retry_max: std::time::Duration::from_millis(500),
            spool: Arc::new(FolderSpool::new(queue)),
            ..Forwarding::new()
        };
    }
    let server = match Server::start_with_configs(options, Some(smtp), None) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let printed = writeln!(
        out,
        "smtp {}\npop3 {}",
        server.smtp_addr().port(),
        server.pop3_addr().port()
    )
    .and_then(|()| out.flush());
    drop(out);
    if printed.is_err() {
        return ExitCode::FAILURE;
    }
    // Serve until standard input closes.
    let mut sink = [0; 256];
    while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    server.stop();
    ExitCode::SUCCESS
}
