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
//!
//! With `POSTAMT_TEST_DATABASE=URL` users, mail and the queue are in that
//! PostgreSQL database instead (MAILDIR is then unused), with leases of
//! `POSTAMT_TEST_LEASE_MS` (default 30 s) and the shared queue claimed from
//! every half second; with `POSTAMT_TEST_PROXY_FROM=CIDR` connections from
//! there begin with a PROXY header (`tests/scale_out.rs`: two of these
//! behind HAProxy).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use postamt_examples::{Forwarding, Options, Server};
use std::time::Duration;

use postamt_store::{FolderSpool, Maildir, PgOptions, PgStore, StaticDirectory};

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
    let database = match std::env::var("POSTAMT_TEST_DATABASE") {
        Ok(url) => {
            let mut pg = PgOptions::default();
            pg.mailbox_size_limit = None;
            if let Some(ms) = std::env::var("POSTAMT_TEST_LEASE_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
            {
                pg.lease_ttl = Duration::from_millis(ms);
                pg.heartbeat = Duration::from_millis(ms / 4);
            }
            match PgStore::connect_with(&url, pg) {
                Ok(store) => Some(store),
                Err(e) => {
                    eprintln!("POSTAMT_TEST_DATABASE: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(_) => None,
    };
    let mut options = match &database {
        Some(db) => Options::new(Arc::new(db.clone()), Arc::new(db.clone())),
        // No mailbox limit: the tests measure memory and crashes, not quotas.
        None => Options::new(
            Arc::new(Maildir::new(root).with_mailbox_size_limit(None)),
            Arc::new(StaticDirectory::demo()),
        ),
    };
    if let Ok(nets) = std::env::var("POSTAMT_TEST_PROXY_FROM") {
        let Ok(nets) = nets
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
        else {
            eprintln!("POSTAMT_TEST_PROXY_FROM must be CIDR[,CIDR...], not {nets:?}");
            return ExitCode::from(2);
        };
        options.proxy_from = nets;
    }
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
            retry_after: Duration::from_millis(200),
            retry_max: Duration::from_millis(500),
            spool: match &database {
                Some(db) => Arc::new(db.spool()),
                None => Arc::new(FolderSpool::new(queue)),
            },
            claim_every: database.is_some().then_some(Duration::from_millis(500)),
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
