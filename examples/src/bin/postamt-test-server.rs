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

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use postamt_examples::{Options, Server};
use postamt_store::{Maildir, StaticDirectory};

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
    let options = Options::new(
        // No mailbox limit: the tests measure memory and crashes, not quotas.
        Arc::new(Maildir::new(root).with_mailbox_size_limit(None)),
        Arc::new(StaticDirectory::demo()),
    );
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
