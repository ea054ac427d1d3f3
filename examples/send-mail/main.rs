//! Sends one message over SMTP with postamt's client session.
//!
//! ```text
//! echo "Hallo Bob" | cargo run --example send-mail -- --from anna@kolleg.de --to bob@kolleg.de --subject Hallo
//! cargo run --example send-mail -- --server smtp.example:465 --tls --auth anna:geheim ...   # implicit TLS
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
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
    /// Sender address (also the From: header).
    #[arg(long)]
    from: String,
    /// Recipient address; give it once per recipient.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    /// Subject line.
    #[arg(long, default_value = "")]
    subject: String,
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

/// RFC 2047 encoded-word for a header text that is not ASCII.
fn header_text(text: &str) -> String {
    if text.is_ascii() {
        text.to_string()
    } else {
        format!(
            "=?utf-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }
}

fn message(args: &Args) -> Result<Bytes, String> {
    let mut body = Vec::new();
    match &args.body_file {
        Some(path) => body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("stdin: {e}"))?;
        }
    }
    let now = SystemTime::now();
    let nanos = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let date = httpdate::fmt_http_date(now).replace("GMT", "+0000");
    let mut text = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{nanos}.{}@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        args.from,
        args.to.join(", "),
        header_text(&args.subject),
        std::process::id(),
        args.helo,
    )
    .into_bytes();
    text.extend_from_slice(&body);
    Ok(Bytes::from(text))
}

fn run(args: &Args) -> Result<bool, String> {
    let mut envelope = Envelope::new(ReversePath::Mailbox(address(&args.from)?));
    for to in &args.to {
        envelope = envelope.to(ForwardPath::Mailbox(address(to)?));
    }
    let message = message(args)?;
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
