//! Sends one message over SMTP with postamt's client session.
//!
//! ```text
//! echo "Hallo Bob" | cargo run --example send-mail -- --from anna@kolleg.de --to bob@kolleg.de --subject Hallo
//! cargo run --example send-mail -- --server smtp.example:465 --tls --auth anna:geheim ...   # implicit TLS
//! cargo run --example send-mail                # asks for From, To, Cc, Subject, then the text
//! ```
//!
//! Without `--to` it is the user agent RFC 5321 (section 2.3.10's "mail
//! user agent") has in mind: it asks for the sender, the recipients, the
//! copies and the subject in turn, then for the text, ended by a line
//! holding only `.` or by the end of input. Either way the message gets a
//! `Date` and a `Message-ID`.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use mail_builder::headers::Header;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::text::Text;
use postamt_examples::client::{self, ClientStream};
use postamt_examples::tls;
use postamt_smtp::{
    ClientConfig, ClientEvent, ClientSession, Envelope, ForwardPath, Mailbox, Mechanism,
    ReversePath,
};
use postamt_wire::Session;

/// Send a message with SMTP: the body comes from standard input or a file.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Server to send to, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: String,
    /// Sender address (also the From: header); asked for when the
    /// recipients are, with this as the default.
    #[arg(long)]
    from: Option<String>,
    /// Recipient address; give it once per recipient. Without it, every
    /// header is asked for in turn, then the text.
    #[arg(long = "to")]
    to: Vec<String>,
    /// Address to send a copy to (the Cc: header); once per address.
    #[arg(long = "cc")]
    cc: Vec<String>,
    /// Subject line (not asked for when given).
    #[arg(long)]
    subject: Option<String>,
    /// Read the body from this file instead of standard input.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Switch to TLS with STARTTLS before anything else.
    #[arg(long)]
    starttls: bool,
    /// TLS from the first byte (submissions on port 465, RFC 8314).
    #[arg(long, conflicts_with = "starttls")]
    tls: bool,
    /// Trust the certificate(s) in this PEM file for TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Accept any certificate (a classroom server's self-signed one).
    #[arg(long, conflicts_with = "tls_ca")]
    tls_insecure: bool,
    /// Log in with AUTH, as USER:PASSWORD.
    #[arg(long)]
    auth: Option<String>,
    /// Name to give in EHLO.
    #[arg(long, default_value = "localhost")]
    helo: String,
    /// Use BDAT when the server offers CHUNKING.
    #[arg(long)]
    chunking: bool,
    /// Print the SMTP dialogue's events.
    #[arg(long, short)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("send-mail: {e}");
            std::process::exit(2);
        }
    }
}

fn address(s: &str) -> Result<Mailbox<'static>, String> {
    s.parse().map_err(|_| format!("not a mail address: {s}"))
}

/// The message as the user gave it.
struct Draft {
    from: String,
    to: Vec<String>,
    cc: Vec<String>,
    subject: String,
    /// The text below the header, as typed or read.
    text: Vec<u8>,
}

/// The message from the flags, its text from `--body-file` or standard input.
fn from_flags(args: &Args) -> Result<Draft, String> {
    let from = args
        .from
        .clone()
        .ok_or("give --from with --to (or neither, to be asked)")?;
    let mut text = Vec::new();
    match &args.body_file {
        Some(path) => text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            std::io::stdin()
                .read_to_end(&mut text)
                .map_err(|e| format!("stdin: {e}"))?;
        }
    }
    Ok(Draft {
        from,
        to: args.to.clone(),
        cc: args.cc.clone(),
        subject: args.subject.clone().unwrap_or_default(),
        text,
    })
}

/// Reads one line without its line end, as bytes; `None` at the end of
/// input.
fn read_raw_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    if input
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("stdin: {e}"))?
        == 0
    {
        return Ok(None);
    }
    if line.ends_with(b"\n") {
        line.pop();
    }
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(Some(line))
}

/// Reads one line of a header's answer as text.
fn read_line(input: &mut impl BufRead) -> Result<Option<String>, String> {
    Ok(read_raw_line(input)?.map(|line| String::from_utf8_lossy(&line).into_owned()))
}

/// Shows `label` (and the default, if any) and reads the answer.
fn ask(
    input: &mut impl BufRead,
    out: &mut impl Write,
    label: &str,
    default: Option<&str>,
) -> Result<String, String> {
    match default {
        Some(default) => write!(out, "{label} [{default}]: "),
        None => write!(out, "{label}: "),
    }
    .and_then(|()| out.flush())
    .map_err(|e| format!("stdout: {e}"))?;
    let answer = read_line(input)?.ok_or("the input ended before the message was written")?;
    let answer = answer.trim();
    Ok(match default {
        Some(default) if answer.is_empty() => default.to_string(),
        _ => answer.to_string(),
    })
}

/// Asks until the answer is a list of addresses (split at commas), at
/// least `min` of them.
fn ask_addresses(
    input: &mut impl BufRead,
    out: &mut impl Write,
    label: &str,
    default: Option<&str>,
    min: usize,
) -> Result<Vec<String>, String> {
    loop {
        let answer = ask(input, out, label, default)?;
        let list: Vec<String> = answer
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        let bad: Vec<&String> = list.iter().filter(|a| address(a).is_err()).collect();
        let problem = if let Some(bad) = bad.first() {
            format!("not a mail address: {bad}")
        } else if list.len() < min {
            format!("{label}: give an address")
        } else {
            return Ok(list);
        };
        writeln!(out, "{problem}").map_err(|e| format!("stdout: {e}"))?;
    }
}

/// Asks for each header in turn, then for the text.
fn from_questions(args: &Args) -> Result<Draft, String> {
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let from = loop {
        let from = ask_addresses(&mut input, &mut out, "From", args.from.as_deref(), 1)?;
        if let [one] = from.as_slice() {
            break one.clone();
        }
        writeln!(out, "From: give one address").map_err(|e| format!("stdout: {e}"))?;
    };
    let to = ask_addresses(&mut input, &mut out, "To", None, 1)?;
    let cc = if args.cc.is_empty() {
        ask_addresses(&mut input, &mut out, "Cc", None, 0)?
    } else {
        args.cc.clone()
    };
    let subject = match &args.subject {
        Some(subject) => subject.clone(),
        None => ask(&mut input, &mut out, "Subject", None)?,
    };
    writeln!(
        out,
        "Text (end it with a line holding only \".\", or with Ctrl-D):"
    )
    .and_then(|()| out.flush())
    .map_err(|e| format!("stdout: {e}"))?;
    let mut text = Vec::new();
    // The text goes as typed, whatever its bytes.
    while let Some(line) = read_raw_line(&mut input)? {
        if line == b"." {
            break;
        }
        text.extend_from_slice(&line);
        text.extend_from_slice(b"\r\n");
    }
    Ok(Draft {
        from,
        to,
        cc,
        subject,
        text,
    })
}

/// Writes `name: value` as mail-builder encodes and folds it.
fn field(out: &mut Vec<u8>, name: &str, value: &impl Header) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    value.write_header(out, name.len() + 2);
}

/// The header (with Date and Message-ID) and the text.
fn message(draft: &Draft) -> Bytes {
    let list = |addresses: &[String]| {
        Address::new_list(
            addresses
                .iter()
                .map(|a| Address::new_address(None::<&str>, a.clone()))
                .collect(),
        )
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let domain = draft.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut text = Vec::new();
    field(
        &mut text,
        "From",
        &Address::new_address(None::<&str>, draft.from.as_str()),
    );
    field(&mut text, "To", &list(&draft.to));
    if !draft.cc.is_empty() {
        field(&mut text, "Cc", &list(&draft.cc));
    }
    field(&mut text, "Subject", &Text::new(draft.subject.as_str()));
    field(&mut text, "Date", &Date::now());
    field(
        &mut text,
        "Message-ID",
        &MessageId::new(format!("{nanos}.{}@{domain}", std::process::id())),
    );
    text.extend_from_slice(
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    text.extend_from_slice(&draft.text);
    Bytes::from(text)
}

fn run(args: &Args) -> Result<bool, String> {
    let draft = if args.to.is_empty() {
        from_questions(args)?
    } else {
        from_flags(args)?
    };
    let mut envelope = Envelope::new(ReversePath::Mailbox(address(&draft.from)?));
    for to in draft.to.iter().chain(&draft.cc) {
        envelope = envelope.to(ForwardPath::Mailbox(address(to)?));
    }
    let message = message(&draft);
    let credentials = match &args.auth {
        Some(a) => Some(a.split_once(':').ok_or("--auth wants USER:PASSWORD")?),
        None => None,
    };
    let tls = if args.starttls || args.tls {
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
    let mut config = ClientConfig::new(args.helo.clone());
    config.prefer_chunking = args.chunking;
    let mut tls = tls;
    if args.tls {
        let tls = tls.take().ok_or("TLS without TLS settings")?;
        stream = stream
            .start_tls(tls, &host)
            .map_err(|e| format!("TLS: {e}"))?;
        config.implicit_tls = true;
    }
    let mut session = ClientSession::new(config, Instant::now());
    let mut envelope = Some(envelope);
    let mut logged_in = credentials.is_none();
    let mut delivered = false;
    let mut result = Err("the session ended without a word".to_string());
    let mut out = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    // Closed means closed and drained: the loop sees the last event.
    while !session.is_closed() {
        while let Some(event) = session.poll_event() {
            if args.verbose {
                eprintln!("{event:?}");
            }
            match event {
                ClientEvent::Ready(caps) => {
                    if tls.is_some() {
                        session.starttls().map_err(|e| format!("STARTTLS: {e}"))?;
                    } else if !logged_in {
                        let (user, pass) = credentials.unwrap_or_default();
                        let mechanism = if caps.offers_auth(Mechanism::Plain) {
                            Mechanism::Plain
                        } else {
                            Mechanism::Login
                        };
                        session
                            .authenticate(mechanism, user, pass)
                            .map_err(|e| format!("AUTH: {e}"))?;
                    } else if let Some(envelope) = envelope.take() {
                        session
                            .send_message(envelope, message.clone())
                            .map_err(|e| e.to_string())?;
                    }
                }
                ClientEvent::StartTls => {
                    // Nothing is pending after STARTTLS; the session waits.
                    client::flush(&mut stream, &mut session, &mut out)
                        .map_err(|e| e.to_string())?;
                    let config = tls.take().ok_or("STARTTLS without TLS settings")?;
                    stream = stream
                        .start_tls(config, &host)
                        .map_err(|e| format!("TLS: {e}"))?;
                    session.tls_established().map_err(|e| e.to_string())?;
                }
                ClientEvent::Authenticated => {
                    logged_in = true;
                    if let Some(envelope) = envelope.take() {
                        session
                            .send_message(envelope, message.clone())
                            .map_err(|e| e.to_string())?;
                    }
                }
                ClientEvent::AuthFailed(reply) => return Err(format!("login refused: {reply}")),
                ClientEvent::Done(report) => {
                    for (to, reply) in &report.accepted {
                        println!("{to}: accepted ({reply})");
                    }
                    for (to, reply) in &report.refused {
                        println!("{to}: refused ({reply})");
                    }
                    match &report.outcome {
                        Ok(reply) => {
                            println!("message sent: {reply}");
                            delivered = report.refused.is_empty();
                        }
                        Err(failure) => println!("message not sent: {failure}"),
                    }
                    session.quit().map_err(|e| e.to_string())?;
                }
                ClientEvent::Closed(None) => result = Ok(delivered),
                ClientEvent::Closed(Some(e)) => result = Err(e.to_string()),
                _ => {}
            }
        }
        client::exchange(&mut stream, &mut session, &mut out, &mut buf)
            .map_err(|e| e.to_string())?;
    }
    result
}
