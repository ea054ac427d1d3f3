//! Fetches mail over POP3 with postamt's client session.
//!
//! ```text
//! cargo run --example fetch-mail -- --user bob --password topSecret            # list
//! cargo run --example fetch-mail -- --user bob --fetch-to ~/Mail --delete       # move into a Maildir
//! POSTAMT_PASSWORD=topSecret cargo run --example fetch-mail -- --user bob --print
//! cargo run --example fetch-mail -- --server pop.example:995 --tls --user bob   # implicit TLS
//! ```
//!
//! Without `--fetch-to` or `--print` it lists the messages: number, size, and
//! From and Subject read from `TOP n 0`. On a terminal (or with
//! `--interactive`) it then asks what to do: `r N` shows message N, `d N`
//! marks it for deletion (the server deletes it at QUIT), `u` takes the
//! marks back, `l` lists again, `q` quits. With `--delete`, a message is marked
//! for deletion only after it was stored (or printed), and the server removes
//! the marked messages at QUIT.

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use postamt_examples::client::{self, ClientStream};
use postamt_examples::tls;
use postamt_pop3::{
    Capabilities, ClientConfig, ClientEvent, ClientSession, Mechanism, MessageNumber, Request,
};
use postamt_store::{Delivery, MailStore, MailboxName, Maildir};
use postamt_wire::Session;

/// Fetch mail with POP3: list it, store it in a Maildir, or print it.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Server to fetch from, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1100")]
    server: String,
    /// User name.
    #[arg(long)]
    user: String,
    /// Password (else the environment variable POSTAMT_PASSWORD).
    #[arg(long)]
    password: Option<String>,
    /// Log in with APOP (the password never crosses the wire).
    #[arg(long)]
    apop: bool,
    /// Switch to TLS with STLS before logging in.
    #[arg(long)]
    stls: bool,
    /// TLS from the first byte (POP3S on port 995, RFC 8314).
    #[arg(long, conflicts_with = "stls")]
    tls: bool,
    /// Trust the certificate(s) in this PEM file for TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Accept any certificate (a classroom server's self-signed one).
    #[arg(long, conflicts_with = "tls_ca")]
    tls_insecure: bool,
    /// Store every message in the Maildir under this folder, in the mailbox
    /// named after the user (DIR/USER/new/).
    #[arg(long)]
    fetch_to: Option<PathBuf>,
    /// Write every message to standard output.
    #[arg(long, conflicts_with = "fetch_to")]
    print: bool,
    /// Delete each message from the server once it is stored or printed.
    #[arg(long)]
    delete: bool,
    /// After the list, ask what to read or delete even when standard input
    /// is not a terminal.
    #[arg(long, short, conflicts_with_all = ["fetch_to", "print"])]
    interactive: bool,
    /// Print the POP3 dialogue's events.
    #[arg(long, short)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("fetch-mail: {e}");
            std::process::exit(2);
        }
    }
}

/// What to do with each message.
enum Action {
    /// TOP n 0, then a line with From and Subject.
    List,
    /// RETR n into a Maildir mailbox.
    Store(Maildir, MailboxName),
    /// RETR n to standard output.
    Print,
}

/// The message being read, and where its bytes go.
enum Sink {
    /// Up to 64 KiB of header for the summary.
    Header(Vec<u8>),
    Delivery(Box<dyn Delivery>),
    Stdout,
    /// A delivery that failed: the rest of the message is dropped.
    Failed,
}

const HEADER_LIMIT: usize = 64 * 1024;

/// What the user has seen and done after the list.
#[derive(Default)]
struct Desk {
    /// Number, size, From and Subject of each message listed.
    listed: Vec<(MessageNumber, u64, String, String)>,
    /// Marked for deletion (they go at QUIT).
    marked: Vec<MessageNumber>,
    /// The message asked for with `r N`, being shown.
    reading: Option<MessageNumber>,
    /// The commands were explained (once, after the list).
    helped: bool,
}

const HELP: &str = "Commands: r N reads message N, d N deletes it, u undoes the deletions, \
                    l lists again, q quits. Deletions take effect when you quit.";

/// "1 message", "3 messages".
fn count(n: usize) -> String {
    format!("{n} message{}", if n == 1 { "" } else { "s" })
}

impl Desk {
    fn list(&self) {
        let left: Vec<_> = self
            .listed
            .iter()
            .filter(|(n, ..)| !self.marked.contains(n))
            .collect();
        println!("{}", count(left.len()));
        for (n, size, from, subject) in left {
            println!("{n:>5} {size:>9}  {from:<30}  {subject}");
        }
    }

    /// Asks what to do until it is a command for the server, and sends it.
    fn ask(&mut self, session: &mut ClientSession) -> Result<(), String> {
        if !self.helped {
            self.helped = true;
            println!("{HELP}");
        }
        let mut input = std::io::stdin().lock();
        loop {
            print!("fetch-mail> ");
            std::io::stdout()
                .flush()
                .map_err(|e| format!("stdout: {e}"))?;
            let mut line = String::new();
            let read = input
                .read_line(&mut line)
                .map_err(|e| format!("stdin: {e}"))?;
            let mut words = line.split_whitespace();
            let (verb, number) = match (words.next(), words.next(), words.next()) {
                // The end of input quits, as q does.
                _ if read == 0 => ("q", None),
                (None, ..) => continue,
                (Some(verb), number, None) => (verb, number),
                _ => ("?", None),
            };
            let number = match number.map(str::parse::<MessageNumber>) {
                None => None,
                Some(Ok(n)) if self.listed.iter().any(|(m, ..)| *m == n) => Some(n),
                Some(_) => {
                    println!("There is no message {}.", number.unwrap_or_default());
                    continue;
                }
            };
            let result = match (verb, number) {
                ("r" | "read", Some(n)) if !self.marked.contains(&n) => {
                    self.reading = Some(n);
                    session.retr(n)
                }
                ("d" | "delete", Some(n)) if !self.marked.contains(&n) => session.dele(n),
                ("r" | "read" | "d" | "delete", Some(n)) => {
                    println!("Message {n} is marked for deletion (u undoes that).");
                    continue;
                }
                ("u" | "undo", None) => session.rset(),
                ("l" | "list", None) => {
                    self.list();
                    continue;
                }
                ("q" | "quit", None) => {
                    if !self.marked.is_empty() {
                        println!(
                            "Deleting {} marked message(s) now, at QUIT.",
                            self.marked.len()
                        );
                    }
                    session.quit()
                }
                _ => {
                    println!("{HELP}");
                    continue;
                }
            };
            return result.map_err(|e| e.to_string());
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let password = match &args.password {
        Some(p) => p.clone(),
        None => std::env::var("POSTAMT_PASSWORD")
            .map_err(|_| "give --password or set POSTAMT_PASSWORD".to_string())?,
    };
    let action = match (&args.fetch_to, args.print) {
        (Some(dir), _) => {
            let mailbox = MailboxName::new(args.user.clone())
                .map_err(|e| format!("user {:?} as a mailbox name: {e}", args.user))?;
            Action::Store(Maildir::new(dir), mailbox)
        }
        (None, true) => Action::Print,
        (None, false) => Action::List,
    };
    let mut desk = (matches!(action, Action::List)
        && (args.interactive || std::io::stdin().is_terminal()))
    .then(Desk::default);
    let mut tls = if args.stls || args.tls {
        Some(
            tls::client_from_args(args.tls_ca.as_deref(), args.tls_insecure)
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let host = ClientStream::host_of(&args.server).to_string();

    let mut stream = ClientStream::connect(&args.server, Duration::from_secs(30))
        .map_err(|e| format!("{}: {e}", args.server))?;
    let mut config = ClientConfig::new();
    if args.tls {
        let tls = tls.take().ok_or("TLS without TLS settings")?;
        stream = stream
            .start_tls(tls, &host)
            .map_err(|e| format!("TLS: {e}"))?;
        config.implicit_tls = true;
    }
    let mut session = ClientSession::new(config, Instant::now());
    let mut result = Err("the session ended without a word".to_string());
    // Messages still to fetch, and the one being read.
    let mut todo: Vec<(MessageNumber, u64)> = Vec::new();
    let mut sizes: Vec<(MessageNumber, u64)> = Vec::new();
    let mut current: Option<(MessageNumber, u64, Sink)> = None;
    let mut all_ok = true;
    let mut out = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let stdout = std::io::stdout();
    // Closed means closed and drained: the loop sees the last event.
    while !session.is_closed() {
        while let Some(event) = session.poll_event() {
            if args.verbose && !matches!(event, ClientEvent::MessageData(_)) {
                eprintln!("{event:?}");
            }
            match event {
                ClientEvent::Ready(caps) => {
                    if tls.is_some() {
                        session.stls().map_err(|e| format!("STLS: {e}"))?;
                    } else {
                        login(&mut session, &caps, args, &password)?;
                    }
                }
                ClientEvent::StartTls => {
                    // Nothing is pending after STLS; the session waits.
                    client::flush(&mut stream, &mut session, &mut out)
                        .map_err(|e| e.to_string())?;
                    let config = tls.take().ok_or("STLS without TLS settings")?;
                    stream = stream
                        .start_tls(config, &host)
                        .map_err(|e| format!("TLS: {e}"))?;
                    session.tls_established().map_err(|e| e.to_string())?;
                }
                ClientEvent::LoggedIn => session.list(None).map_err(|e| e.to_string())?,
                ClientEvent::List(entries) => {
                    if matches!(action, Action::List) {
                        println!("{}", count(entries.len()));
                    }
                    sizes = entries.clone();
                    todo = entries;
                    todo.reverse();
                    next(&mut session, &mut todo, &action, desk.as_mut())?;
                }
                ClientEvent::MessageStart(n) => {
                    let size = sizes
                        .iter()
                        .find(|(m, _)| *m == n)
                        .map_or(0, |&(_, size)| size);
                    let sink = match &action {
                        Action::List if desk.as_ref().is_some_and(|d| d.reading == Some(n)) => {
                            Sink::Stdout
                        }
                        Action::List => Sink::Header(Vec::new()),
                        Action::Print => Sink::Stdout,
                        Action::Store(store, mailbox) => {
                            match store.begin_delivery(std::slice::from_ref(mailbox)) {
                                Ok(delivery) => Sink::Delivery(delivery),
                                Err(e) => {
                                    eprintln!("message {n}: cannot store: {e}");
                                    all_ok = false;
                                    Sink::Failed
                                }
                            }
                        }
                    };
                    current = Some((n, size, sink));
                }
                ClientEvent::MessageData(bytes) => {
                    let Some((n, _, sink)) = current.as_mut() else {
                        continue;
                    };
                    match sink {
                        Sink::Header(header) => {
                            let room = HEADER_LIMIT.saturating_sub(header.len());
                            header.extend_from_slice(&bytes[..bytes.len().min(room)]);
                        }
                        Sink::Stdout => stdout
                            .lock()
                            .write_all(&bytes)
                            .map_err(|e| format!("stdout: {e}"))?,
                        Sink::Delivery(delivery) => {
                            if let Err(e) = delivery.write_chunk(&bytes) {
                                eprintln!("message {n}: cannot store: {e}");
                                all_ok = false;
                                *sink = Sink::Failed;
                            }
                        }
                        Sink::Failed => {}
                    }
                }
                ClientEvent::MessageEnd => {
                    let Some((n, size, sink)) = current.take() else {
                        continue;
                    };
                    let done = match sink {
                        Sink::Header(header) => {
                            let summary = postamt_store::summary(&header);
                            let from = summary.from.unwrap_or_else(|| "-".into());
                            let subject = summary.subject.unwrap_or_else(|| "-".into());
                            println!("{n:>5} {size:>9}  {from:<30}  {subject}");
                            if let Some(desk) = desk.as_mut() {
                                desk.listed.push((n, size, from, subject));
                            }
                            false
                        }
                        Sink::Stdout => {
                            if let Some(desk) = desk.as_mut() {
                                desk.reading = None;
                                println!("--- end of message {n} ---");
                            }
                            stdout.lock().flush().map_err(|e| format!("stdout: {e}"))?;
                            // What the user reads stays until they delete it.
                            desk.is_none()
                        }
                        Sink::Delivery(delivery) => match delivery.commit() {
                            Ok(()) => {
                                eprintln!("message {n}: stored ({size} octets)");
                                true
                            }
                            Err(e) => {
                                eprintln!("message {n}: cannot store: {e}");
                                all_ok = false;
                                false
                            }
                        },
                        Sink::Failed => false,
                    };
                    if done && args.delete {
                        session.dele(n).map_err(|e| e.to_string())?;
                    }
                    next(&mut session, &mut todo, &action, desk.as_mut())?;
                }
                ClientEvent::Deleted(n) => {
                    if let Some(desk) = desk.as_mut() {
                        desk.marked.push(n);
                        println!("Message {n} is marked for deletion; it goes when you quit (q).");
                        desk.ask(&mut session)?;
                    }
                }
                ClientEvent::Reset => {
                    if let Some(desk) = desk.as_mut() {
                        desk.marked.clear();
                        println!("No message is marked for deletion any more.");
                        desk.ask(&mut session)?;
                    }
                }
                ClientEvent::Error { command, response } => {
                    eprintln!("{command}: {response}");
                    all_ok = false;
                    match command {
                        Request::User
                        | Request::Pass
                        | Request::Apop
                        | Request::Auth
                        | Request::Stls => {
                            session.quit().map_err(|e| e.to_string())?;
                        }
                        Request::Retr | Request::Top => {
                            current = None;
                            if let Some(desk) = desk.as_mut() {
                                desk.reading = None;
                            }
                            next(&mut session, &mut todo, &action, desk.as_mut())?;
                        }
                        Request::List => session.quit().map_err(|e| e.to_string())?,
                        Request::Dele | Request::Rset => {
                            if let Some(desk) = desk.as_mut() {
                                desk.ask(&mut session)?;
                            }
                        }
                        _ => {}
                    }
                }
                ClientEvent::Closed(None) => result = Ok(all_ok),
                ClientEvent::Closed(Some(e)) => {
                    if current.is_some() {
                        eprintln!("the connection ended in the middle of a message");
                    }
                    result = Err(e.to_string());
                }
                _ => {}
            }
        }
        client::exchange(&mut stream, &mut session, &mut out, &mut buf)
            .map_err(|e| e.to_string())?;
    }
    result
}

fn login(
    session: &mut ClientSession,
    caps: &Capabilities,
    args: &Args,
    password: &str,
) -> Result<(), String> {
    let result = if args.apop {
        session.login_apop(&args.user, password)
    } else if caps.user || !caps.capa || !caps.offers_sasl(Mechanism::Plain) {
        session.login_user(&args.user, password)
    } else {
        session.authenticate(Mechanism::Plain, &args.user, password)
    };
    result.map_err(|e| format!("login: {e}"))
}

/// Asks for the next message; when there is none, asks the user what to do
/// (interactive), or QUIT.
fn next(
    session: &mut ClientSession,
    todo: &mut Vec<(MessageNumber, u64)>,
    action: &Action,
    desk: Option<&mut Desk>,
) -> Result<(), String> {
    let result = match todo.pop() {
        Some((n, _)) if matches!(action, Action::List) => session.top(n, 0),
        Some((n, _)) => session.retr(n),
        None => match desk {
            Some(desk) => return desk.ask(session),
            None => session.quit(),
        },
    };
    result.map_err(|e| e.to_string())
}
