//! A working SMTP + POP3 mail server in one command, for a classroom or for
//! catching mail in tests.
//!
//! ```text
//! cargo run --release --example toy-server
//! cargo run --release --example toy-server -- --classroom
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use postamt_examples::domains::ExtraDomains;
use postamt_examples::{Forwarding, Options, RelayTls, Server, Web, classroom, tls, web};
use postamt_relay::{MessageId, NextHop, QueuedMessage, RelayConfig};
use postamt_store::{
    ApopSecrets, DEFAULT_MEMORY_LIMIT, Directory, FolderSpool, MailStore, MailView, Maildir,
    MemorySpool, MemoryStore, PgOptions, PgStore, Spool, StaticDirectory,
};

/// `println!` that does not panic when stdout is gone (`toy-server | head`):
/// the server keeps serving mail whoever reads its banner.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The accounts of the classic exercise, used when no users file is given.
const DEMO_ACCOUNTS: [(&str, &str); 2] =
    [("anna@kolleg.de", "geheim"), ("bob@kolleg.de", "topSecret")];

/// A small SMTP and POP3 server: students send mail with SMTP and fetch it with
/// POP3, by hand over telnet or with any mail client.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The lesson in one flag: listen on all interfaces, SMTP on port 25
    /// and POP3 on 110, relay for this machine's own networks, print the
    /// trace, serve the teacher's page on 127.0.0.1:8025. Flags given
    /// besides win (`--classroom --smtp-port 2525`).
    #[arg(long)]
    classroom: bool,
    /// Address to listen on; 0.0.0.0 lets the whole classroom connect
    /// [default: 127.0.0.1; 0.0.0.0 with --classroom].
    #[arg(long)]
    listen: Option<IpAddr>,
    /// SMTP port; 25, the standard one, needs root or a capability
    /// [default: 2525; 25 with --classroom].
    #[arg(long)]
    smtp_port: Option<u16>,
    /// POP3 port; 110, the standard one, needs root or a capability
    /// [default: 1100; 110 with --classroom].
    #[arg(long)]
    pop3_port: Option<u16>,
    /// Serve the teacher's page here: every connection live, the mailboxes,
    /// the queue; read-only [default: none; 127.0.0.1:8025 with
    /// --classroom].
    #[arg(long, value_name = "ADDR:PORT")]
    web: Option<SocketAddr>,
    /// Keep mail in this Maildir folder (one subfolder per mailbox).
    #[arg(long, default_value = "./postamt-mail", global = true)]
    maildir: PathBuf,
    /// Keep mail in memory only; it is gone when the server stops.
    #[arg(long, conflicts_with = "maildir", global = true)]
    memory: bool,
    /// Keep users, mail and the outbound queue in PostgreSQL (a libpq URL or
    /// key=value string), shared with every other server given the same
    /// database: several of them behind a load balancer serve one set of
    /// mailboxes. The schema is created on first use. Users come from the
    /// database (`toy-server --postgres URL import-users FILE` puts a users
    /// file there; --users does so at start).
    #[arg(long, value_name = "URL", conflicts_with_all = ["maildir", "memory"], global = true)]
    postgres: Option<String>,
    /// Users file: one user per line, `address password [aliases...]`,
    /// `#` starts a comment. Default: anna@kolleg.de (geheim) and
    /// bob@kolleg.de (topSecret).
    #[arg(long)]
    users: Option<PathBuf>,
    /// Another local domain whose mail this server accepts (repeatable);
    /// users of the users file are reachable under it too.
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// The server's name in greetings and Received: headers.
    #[arg(long, default_value = "mail.kolleg.de")]
    hostname: String,
    /// Print every session's dialogue (C: and S: lines), passwords masked.
    #[arg(long)]
    trace: bool,
    /// PEM certificate chain for STARTTLS and STLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Make a self-signed certificate at start for STARTTLS and STLS.
    #[arg(long, conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// Seconds a TLS handshake after STARTTLS/STLS may take in all; a client
    /// still handshaking then is cut off.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    tls_handshake_timeout: u64,
    /// Connections per protocol from one client address; more from it are
    /// turned away with 421 4.7.0 / -ERR [SYS/TEMP] (0: no such limit).
    #[arg(long, default_value_t = 50)]
    max_connections_per_client: usize,
    /// Take the clients' bytes exactly as sent: no telnet filter (by default
    /// telnet option negotiation is refused and removed, and Backspace/DEL
    /// edit typed command lines; mail clients' bytes always pass unchanged).
    #[arg(long)]
    strict_input: bool,
    /// Connections per protocol; more are turned away with 421 / -ERR [SYS/TEMP].
    /// Each holds a socket and a session of a few KiB, no thread; the server
    /// raises its limit of open files as far as the system lets it.
    #[arg(long, default_value_t = postamt_examples::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Event-loop threads per protocol (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    loop_threads: usize,
    /// Worker threads for store work that waits on the disk (fsync,
    /// directory scans), shared by SMTP and POP3.
    #[arg(long, default_value_t = postamt_examples::DEFAULT_STORE_THREADS, value_name = "N")]
    store_threads: usize,
    /// Largest size of one mailbox, in octets or with K, M or G (binary:
    /// 1M = 1048576); 0 means no limit. A full mailbox gets 452 4.2.2.
    #[arg(long, default_value = "50M", value_parser = parse_size)]
    mailbox_size_limit: u64,
    /// With --memory: the most mail kept in memory, all mailboxes together,
    /// in octets or with K, M or G; 0 means no limit; default 512M. A full
    /// store gets 452 4.3.1.
    #[arg(long, requires = "memory", value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Clients in this network may relay mail to other domains without
    /// logging in (repeatable, CIDR such as 127.0.0.0/8 or ::1/128); default
    /// none: only authenticated clients relay, everyone else gets 550 5.7.1
    /// (with --classroom: the networks of this machine's interfaces).
    #[arg(long = "relay-from", value_name = "CIDR")]
    relay_from: Vec<ipnet::IpNet>,
    /// Load balancers (repeatable, CIDR) whose connections, SMTP and POP3,
    /// begin with a PROXY protocol header (v1 or v2, HAProxy's send-proxy /
    /// send-proxy-v2) naming the real client; Received:, relaying, limits
    /// and the trace then use that client. Connections from these addresses
    /// without a valid header are closed; nobody else may send one.
    #[arg(long = "proxy-from", value_name = "CIDR")]
    proxy_from: Vec<ipnet::IpNet>,
    /// SMTP clients (repeatable, CIDR) trusted to name the real client with
    /// Postfix's XCLIENT command; EHLO offers it only to them.
    #[arg(long = "xclient-from", value_name = "CIDR")]
    xclient_from: Vec<ipnet::IpNet>,
    /// Mail for DOMAIN goes to HOST[:PORT] (repeatable), before
    /// --relay-host and DNS.
    #[arg(long = "route", value_name = "DOMAIN=HOST[:PORT]", value_parser = parse_route)]
    routes: Vec<(String, NextHop)>,
    /// All other foreign mail goes to this host (a smart host) instead of
    /// the MX hosts DNS names.
    #[arg(long, value_name = "HOST[:PORT]")]
    relay_host: Option<NextHop>,
    /// Ask this DNS server (IP:PORT) for MX records instead of the system's.
    #[arg(long, value_name = "IP:PORT")]
    dns: Option<SocketAddr>,
    /// Port of next hops found by DNS (and of routes without a port).
    #[arg(long, default_value_t = 25)]
    relay_port: u16,
    /// Deliveries to other servers running at once; connections to them,
    /// idle ones included, never exceed it.
    #[arg(long, default_value_t = RelayConfig::new("").concurrency)]
    relay_concurrency: usize,
    /// A connection to a next hop whose transaction ended cleanly waits
    /// this long for the next message to the same host (Postfix's
    /// smtp_connection_cache_time_limit); 0s: a new connection each time.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    relay_reuse_idle: Duration,
    /// STARTTLS to next hops: `may` uses it when offered, without checking
    /// the certificate (MX hosts rarely have one for their names);
    /// `require` verifies it (see --relay-tls-ca) and defers mail for a
    /// host without it; `off`.
    #[arg(long, default_value = "may", value_parser = ["may", "require", "off"])]
    relay_tls: String,
    /// With --relay-tls require: trust these certificate authorities (PEM)
    /// instead of the system's.
    #[arg(long, value_name = "FILE")]
    relay_tls_ca: Option<PathBuf>,
    /// First retry of a deferred recipient (then doubling up to
    /// --retry-max); durations as 30s, 5m, 2h, 5d.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    retry_after: Duration,
    /// Longest wait between retries.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    retry_max: Duration,
    /// A recipient not delivered this long after arrival fails and the
    /// sender gets a notice.
    #[arg(long, default_value = "5d", value_parser = parse_duration)]
    queue_lifetime: Duration,
    /// A recipient that asked for NOTIFY=DELAY and is still queued this
    /// long after arrival gets its sender one delay notice.
    #[arg(long, default_value = "4h", value_parser = parse_duration)]
    delay_warning: Duration,
    /// Keep mail waiting for other servers in this folder; default: the
    /// folder `.queue` in the Maildir folder (with --memory: in memory).
    /// Queued mail survives a crash and is passed on after a restart.
    #[arg(long, value_name = "DIR", conflicts_with = "memory", global = true)]
    queue: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the outbound queue (of --maildir or --queue) and exit: each
    /// message with its sender, and each recipient's state, attempts, next
    /// attempt and last reply.
    Queue {
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Copy a users file into the database of --postgres and exit (again:
    /// passwords and aliases are updated; users not in the file stay).
    /// Passwords are stored as Argon2 hashes; with --apop the plain password
    /// too, so that those users may log in with APOP.
    ImportUsers {
        /// The users file (`address password [aliases...]` per line).
        file: PathBuf,
        /// Keep each password for APOP as well as its hash.
        #[arg(long)]
        apop: bool,
    },
}

#[derive(Subcommand, Debug)]
enum QueueAction {
    /// Make the server running with this queue retry every deferred
    /// recipient now (as `postqueue -f`).
    Flush,
}

/// `DOMAIN=HOST[:PORT]`.
fn parse_route(text: &str) -> Result<(String, NextHop), String> {
    let (domain, hop) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: give DOMAIN=HOST[:PORT]"))?;
    let hop = hop
        .parse::<NextHop>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    Ok((domain.to_ascii_lowercase(), hop))
}

/// A duration: a number and `ms`, `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?}: give a number with ms, s, m, h or d (30s, 5m, 5d)");
    let at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(at);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs).ok_or_else(bad);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(bad()),
    }
}

/// A size in octets: digits, then optionally K, M or G (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(format!("{text:?}: give octets, or a number with K, M or G")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?}: give octets, or a number with K, M or G"))
}

/// 0 means no limit, as in Postfix's mailbox_size_limit.
fn limit(size: u64) -> Option<u64> {
    (size > 0).then_some(size)
}

fn main() {
    let args = Args::parse();
    if let Err(message) = run(args) {
        eprintln!("toy-server: {message}");
        std::process::exit(1);
    }
}

/// What `--classroom` and the flags given make of the listening address,
/// ports, relaying, trace and page.
struct Settled {
    listen: IpAddr,
    smtp_port: u16,
    pop3_port: u16,
    relay_from: Vec<ipnet::IpNet>,
    trace: bool,
    web: Option<SocketAddr>,
}

fn settle(args: &Args) -> Settled {
    let class = args.classroom;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let relay_from = if class && args.relay_from.is_empty() {
        classroom::machine_subnets()
    } else {
        args.relay_from.clone()
    };
    Settled {
        listen: args.listen.unwrap_or(if class {
            any
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }),
        smtp_port: args.smtp_port.unwrap_or(if class { 25 } else { 2525 }),
        pop3_port: args.pop3_port.unwrap_or(if class { 110 } else { 1100 }),
        relay_from,
        trace: args.trace || class,
        web: args
            .web
            .or_else(|| class.then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 8025)))),
    }
}

/// The error for a port that could not be had, with the exact way out
/// when it is a port below 1024.
fn bind_failed(e: &postamt_examples::BindError, args: &Args, set: &Settled) -> String {
    if e.source.kind() != std::io::ErrorKind::PermissionDenied {
        return e.to_string();
    }
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .unwrap_or_else(|_| PathBuf::from("toy-server"));
    let mut flags = String::from("toy-server");
    if args.classroom {
        flags.push_str(" --classroom");
    }
    let smtp = if set.smtp_port < 1024 {
        2525
    } else {
        set.smtp_port
    };
    let pop3 = if set.pop3_port < 1024 {
        1100
    } else {
        set.pop3_port
    };
    flags.push_str(&format!(" --smtp-port {smtp} --pop3-port {pop3}"));
    let first = e.message.lines().next().unwrap_or_default();
    format!("{first}\n{}", classroom::low_port_fix(&exe, &flags))
}

fn run(args: Args) -> Result<(), String> {
    match args.command {
        Some(Command::Queue { action: None }) => return list_queue(&queue_dir(&args)),
        Some(Command::Queue {
            action: Some(QueueAction::Flush),
        }) => {
            let n = postamt_examples::control::flush(&control_socket(&args))?;
            say!("Flushed: {n} deferred recipient(s) are being tried now.");
            return Ok(());
        }
        Some(Command::ImportUsers { ref file, apop }) => {
            let url = args
                .postgres
                .as_deref()
                .ok_or("import-users needs --postgres URL: the database to fill")?;
            let store = PgStore::connect(url).map_err(|e| e.to_string())?;
            let secrets = if apop {
                ApopSecrets::Keep
            } else {
                ApopSecrets::Discard
            };
            let n = store
                .import_users_file(file, secrets)
                .map_err(|e| e.to_string())?;
            say!(
                "Imported {n} user(s) from {} into the database.",
                file.display()
            );
            return Ok(());
        }
        None => {}
    }
    let set = settle(&args);
    let directory = match &args.users {
        Some(path) => StaticDirectory::from_file(path).map_err(|e| e.to_string())?,
        None => {
            let mut demo = StaticDirectory::new();
            for (address, password) in DEMO_ACCOUNTS {
                demo.add_user(address, password, &[])
                    .map_err(|e| e.to_string())?;
            }
            demo
        }
    };
    let own: Vec<String> = directory.domains().map(str::to_string).collect();
    let mut domains = own.clone();
    domains.extend(args.domains.iter().cloned());
    let mailbox_limit = limit(args.mailbox_size_limit);
    let database = match &args.postgres {
        Some(url) => {
            let mut options = PgOptions::default();
            options.mailbox_size_limit = mailbox_limit;
            // As many as the store workers, which hold one each at most.
            options.pool_size = u32::try_from(args.store_threads.clamp(4, 256)).unwrap_or(32);
            let store = Arc::new(
                PgStore::connect_with(url, options).map_err(|e| format!("--postgres: {e}"))?,
            );
            if args.users.is_some() {
                let n = store
                    .import_users(&directory, ApopSecrets::Keep)
                    .map_err(|e| e.to_string())?;
                say!("Imported {n} user(s) into the database.");
            }
            Some(store)
        }
        None => None,
    };
    let directory: Arc<dyn Directory> = match &database {
        Some(db) => Arc::new(ExtraDomains::new(
            PgStore::clone(db),
            own,
            args.domains.clone(),
        )),
        None => Arc::new(ExtraDomains::new(directory, own, args.domains.clone())),
    };
    let memory_limit = limit(args.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT));
    let (store, view): (Arc<dyn MailStore>, Arc<dyn MailView>) = if let Some(db) = &database {
        (db.clone(), db.clone())
    } else if args.memory {
        let store = Arc::new(
            MemoryStore::new()
                .with_mailbox_size_limit(mailbox_limit)
                .with_total_size_limit(memory_limit),
        );
        (store.clone(), store)
    } else {
        std::fs::create_dir_all(&args.maildir)
            .map_err(|e| format!("{}: {e}", args.maildir.display()))?;
        let store = Arc::new(Maildir::new(&args.maildir).with_mailbox_size_limit(mailbox_limit));
        (store.clone(), store)
    };
    let spool: Arc<dyn Spool> = if let Some(db) = &database {
        Arc::new(db.spool())
    } else if args.memory {
        Arc::new(MemorySpool::new())
    } else {
        Arc::new(FolderSpool::new(queue_dir(&args)))
    };
    let tls = match (&args.tls_cert, &args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => {
            Some(tls::from_pem_files(cert, key).map_err(|e| e.to_string())?)
        }
        (_, _, true) => Some(tls::self_signed(&args.hostname).map_err(|e| e.to_string())?),
        _ => None,
    };
    let server = Server::start(Options {
        listen: set.listen,
        smtp_port: set.smtp_port,
        pop3_port: set.pop3_port,
        hostname: args.hostname.clone(),
        tls: tls.clone(),
        trace: set.trace,
        web: set.web.map(|listen| Web { listen, view }),
        tls_handshake_timeout: Duration::from_secs(args.tls_handshake_timeout),
        max_connections_per_client: args.max_connections_per_client,
        strict_input: args.strict_input,
        max_connections: args.max_connections,
        loop_threads: args.loop_threads,
        store_threads: args.store_threads,
        proxy_from: args.proxy_from.clone(),
        xclient_from: args.xclient_from.clone(),
        forwarding: Forwarding {
            relay_from: set.relay_from.clone(),
            routes: args.routes.clone(),
            relay_host: args.relay_host.clone(),
            dns: args.dns,
            relay_port: args.relay_port,
            local_domains: domains.clone(),
            retry_after: args.retry_after,
            retry_max: args.retry_max,
            queue_lifetime: args.queue_lifetime,
            concurrency: args.relay_concurrency,
            reuse_idle: args.relay_reuse_idle,
            delay_warning: args.delay_warning,
            tls: match args.relay_tls.as_str() {
                "require" => RelayTls::Require,
                "off" => RelayTls::Off,
                _ => RelayTls::May,
            },
            tls_roots: args.relay_tls_ca.clone(),
            control: (!args.memory && database.is_none()).then(|| control_socket(&args)),
            // A queue in the database is shared: what a server that died
            // left is claimed by the others.
            claim_every: database.is_some().then_some(Duration::from_secs(10)),
            spool,
            ..Forwarding::new()
        },
        ..Options::new(store, directory)
    })
    .map_err(|e| bind_failed(&e, &args, &set))?;

    let mut connect = Vec::new();
    for ip in addresses(set.listen) {
        connect.push(format!("SMTP  telnet {ip} {}", server.smtp_addr().port()));
        connect.push(format!("POP3  telnet {ip} {}", server.pop3_addr().port()));
    }
    let mut accounts = Vec::new();
    match &args.users {
        Some(path) => accounts.push(format!("Accounts: from {}", path.display())),
        None if database.is_some() => accounts.push(
            "Accounts: from the database (fill it with `toy-server --postgres URL import-users FILE`)"
                .to_string(),
        ),
        None => {
            accounts.push(
                "Accounts (POP3 login with the name before @ or the full address):".to_string(),
            );
            for (address, password) in DEMO_ACCOUNTS {
                accounts.push(format!("  {address:<20} password {password}"));
            }
        }
    }
    if args.classroom {
        // What the students need, framed, for the back of the room.
        let mut lines = vec!["The class's mail server. Type:".to_string(), String::new()];
        lines.extend(connect.iter().map(|l| format!("  {l}")));
        lines.push(String::new());
        lines.extend(accounts);
        let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 4;
        say!("+{}+", "-".repeat(width));
        for line in &lines {
            say!("|  {line:<w$}|", w = width - 2);
        }
        say!("+{}+", "-".repeat(width));
        let every = if set.listen.is_unspecified() {
            " (every interface)"
        } else {
            ""
        };
        say!(
            "Listening on {}{every}, SMTP port {}, POP3 port {}.",
            set.listen,
            server.smtp_addr().port(),
            server.pop3_addr().port()
        );
    } else {
        say!("postamt toy server is running. Connect to:");
        for line in &connect {
            say!("  {line}");
        }
        for line in &accounts {
            say!("{line}");
        }
    }
    if let Some(addr) = server.web_addr() {
        say!("Teacher's page: http://{addr}/ (live; open it in a browser on this machine)");
    }
    if set.trace {
        say!("Trace: on, every dialogue below (C: client, S: server, passwords masked).");
    }
    say!("Local domains: {}", domains.join(", "));
    if database.is_some() {
        say!(
            "Users, mail and mail for other servers are kept in PostgreSQL (shared with every server on that database)."
        );
    } else if args.memory {
        say!("Mail is kept in memory (gone when the server stops).");
    } else {
        say!(
            "Mail is kept in the Maildir folder {}, mail for other servers in {}",
            args.maildir.display(),
            queue_dir(&args).display()
        );
    }
    let shown = |limit: Option<u64>| limit.map_or("no limit".to_string(), show_size);
    if args.memory {
        say!(
            "Limits: {} per mailbox, {} in memory in all.",
            shown(mailbox_limit),
            shown(memory_limit)
        );
    } else {
        say!("Limits: {} per mailbox.", shown(mailbox_limit));
    }
    match tls {
        Some(_) if args.tls_self_signed => {
            say!("STARTTLS and STLS: on (self-signed certificate)")
        }
        Some(_) => say!("STARTTLS and STLS: on"),
        None => say!("STARTTLS and STLS: off (use --tls-self-signed to try them)"),
    }
    if set.relay_from.is_empty() {
        say!("Relaying: for logged-in clients only (--relay-from CIDR to trust a network).");
    } else {
        let nets: Vec<String> = set.relay_from.iter().map(ToString::to_string).collect();
        say!(
            "Relaying: for logged-in clients and for {}.",
            nets.join(", ")
        );
    }
    for (domain, hop) in &args.routes {
        say!("Route: {domain} -> {hop}");
    }
    match (&args.relay_host, args.dns) {
        (Some(hop), _) => say!("Other foreign mail goes to {hop}."),
        (None, Some(dns)) => say!("Other foreign mail goes to the MX hosts ({dns} asked)."),
        (None, None) => say!("Other foreign mail goes to the MX hosts DNS names."),
    }
    say!("Stop with Ctrl-C.");

    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    let _ = rx.recv();
    say!("Stopping: no new connections; open sessions get a few seconds to finish.");
    server.stop();
    Ok(())
}

/// A size as people read it: `50 MiB`, `1536 KiB`, or octets.
fn show_size(octets: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if octets >= 1 << shift && octets.is_multiple_of(1 << shift) {
            return format!("{} {unit}", octets >> shift);
        }
    }
    format!("{octets} octets")
}

/// The addresses students type: the listening address, or every
/// non-loopback address of this machine when listening on all of them
/// (IPv4 ones only for 0.0.0.0, which takes no IPv6 connection).
fn addresses(listen: IpAddr) -> Vec<IpAddr> {
    if !listen.is_unspecified() {
        return vec![listen];
    }
    let mut found = interface_addresses();
    found.retain(|ip| listen.is_ipv6() || ip.is_ipv4());
    if found.is_empty() {
        found.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    found
}

/// Every non-loopback address of this machine's interfaces, IPv4 first,
/// then IPv6 (link-local ones left out: they need a zone to be reached).
fn interface_addresses() -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .iter()
            .filter(|i| !i.is_loopback())
            .map(if_addrs::Interface::ip)
            .collect(),
        Err(e) => {
            eprintln!("toy-server: cannot list the network interfaces: {e}");
            Vec::new()
        }
    };
    found.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    found.dedup();
    found
}

/// The queue folder: `--queue`, else `.queue` in the Maildir folder (a
/// name no mailbox can have).
fn queue_dir(args: &Args) -> PathBuf {
    args.queue
        .clone()
        .unwrap_or_else(|| args.maildir.join(".queue"))
}

/// Where the running server listens for `queue flush`: in its queue folder.
fn control_socket(args: &Args) -> PathBuf {
    queue_dir(args).join("control")
}

/// `toy-server queue`: each queued message with its sender and each
/// recipient's state, attempts, next attempt and last reply.
fn list_queue(dir: &Path) -> Result<(), String> {
    let spool = FolderSpool::new(dir);
    let entries = spool
        .list()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if entries.is_empty() {
        say!("The queue in {} is empty.", dir.display());
    }
    let date = |t: SystemTime| httpdate::fmt_http_date(t).replace("GMT", "+0000");
    for entry in entries {
        let id = MessageId::new(entry.id.as_str());
        let msg = match QueuedMessage::from_record(id, &entry.record) {
            Ok(msg) => msg,
            Err(e) => {
                say!(
                    "{}  {} octets  record unreadable: {e}",
                    entry.id,
                    entry.size
                );
                continue;
            }
        };
        say!(
            "{}  {} octets  from {}  arrived {}",
            entry.id,
            entry.size,
            msg.reverse_path(),
            date(msg.arrival())
        );
        for r in msg.recipients() {
            let state = match web::recipient_state(r.state()) {
                (name, detail) if detail.is_empty() => name.to_string(),
                ("deferred", detail) => format!("deferred, {detail}"),
                (name, detail) => format!("{name}: {detail}"),
            };
            say!("  {}  {state}", r.mailbox());
        }
    }
    Ok(())
}
