//! `postamt-idle`: opens many SMTP connections to one server and holds them
//! idle, then measures how long a new client waits for its greeting while
//! they are held, and (given the server's pid) the server's memory.
//!
//! ```text
//! cargo run --release -p postamt-benches --bin postamt-idle -- \
//!     --smtp 127.0.0.1:2525 --connections 10000 --server-pid 1234
//! ```
//!
//! Connections are opened one after another, with at most `--window` of
//! them waiting for their greeting at a time (so a listen backlog never
//! overflows into SYN retries, which would measure the kernel's retry
//! timer); the opening rate is connections greeted per second. Each socket
//! is closed with a reset at the end, so a run leaves no TIME_WAIT behind
//! and can be repeated at once. Needs as many file descriptors as
//! connections (`ulimit -n`); benches/idle.sh sets that up.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;

/// Hold many idle SMTP connections and measure a new client's greeting.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// SMTP server, HOST:PORT (loopback only).
    #[arg(long)]
    smtp: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections waiting for their greeting at most at a time.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// New clients timed, one after another, while the others are held.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// The server's process id, for its resident memory and threads.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds the whole opening may take before the run gives up.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

/// One held connection: its socket and what it has said so far.
struct Held {
    stream: MioStream,
    said: Vec<u8>,
    greeted: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = match args.smtp.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) if a.ip().is_loopback() => a,
        Ok(Some(a)) => return fail(&format!("{a} is not a loopback address")),
        Ok(None) | Err(_) => return fail(&format!("cannot resolve {}", args.smtp)),
    };
    let (held, failed, elapsed) = match open_all(addr, &args) {
        Ok(r) => r,
        Err(e) => return fail(&format!("opening: {e}")),
    };
    let greeted = held.iter().filter(|h| h.greeted).count();
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "idle: {greeted} of {} connections greeted in {secs:.2} s: {:.0} per second; failed {failed}",
        args.connections,
        greeted as f64 / secs,
    );
    let mut latencies = Vec::new();
    let mut probe_errors = 0;
    for _ in 0..args.probes {
        match probe(addr) {
            Ok(d) => latencies.push(d),
            Err(_) => probe_errors += 1,
        }
    }
    latencies.sort_unstable();
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!(
        "probe: a new client's greeting while {greeted} are held: p50 {:.2} ms, max {:.2} ms ({} probes, {probe_errors} failed)",
        ms(latencies.get(latencies.len() / 2)),
        ms(latencies.last()),
        latencies.len(),
    );
    if let Some(pid) = args.server_pid {
        match server_memory(pid) {
            Ok((rss_kib, threads)) => println!(
                "server: pid {pid}, VmRSS {:.1} MiB, threads {threads}",
                rss_kib as f64 / 1024.0
            ),
            Err(e) => println!("server: pid {pid}: cannot read /proc: {e}"),
        }
    }
    drop(held);
    if greeted == args.connections && probe_errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(what: &str) -> ExitCode {
    eprintln!("postamt-idle: {what}");
    ExitCode::FAILURE
}

/// A non-blocking connect that closes with a reset (no TIME_WAIT).
fn connect(addr: SocketAddr) -> io::Result<MioStream> {
    let stream = MioStream::connect(addr)?;
    SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    Ok(stream)
}

/// Opens `args.connections` connections and reads each one's greeting.
fn open_all(addr: SocketAddr, args: &Args) -> io::Result<(Vec<Held>, usize, Duration)> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut held: Vec<Held> = Vec::with_capacity(args.connections);
    let mut waiting = 0;
    let mut failed = 0;
    let mut greeted = 0;
    let start = Instant::now();
    let give_up = start + Duration::from_secs_f64(args.timeout);
    let mut buf = [0u8; 512];
    while greeted + failed < args.connections {
        while waiting < args.window.max(1) && held.len() < args.connections {
            let mut stream = connect(addr)?;
            poll.registry()
                .register(&mut stream, Token(held.len()), Interest::READABLE)?;
            held.push(Held {
                stream,
                said: Vec::new(),
                greeted: false,
            });
            waiting += 1;
        }
        if Instant::now() >= give_up {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in &events {
            let h = &mut held[event.token().0];
            if h.greeted {
                continue;
            }
            loop {
                match h.stream.read(&mut buf) {
                    Ok(0) => {
                        failed += 1;
                        waiting -= 1;
                        poll.registry().deregister(&mut h.stream)?;
                        break;
                    }
                    Ok(n) => {
                        h.said.extend_from_slice(&buf[..n]);
                        if h.said.ends_with(b"\r\n") || h.said.len() > 4096 {
                            // The last line of the greeting starts "220 ".
                            let last = h.said[..h.said.len() - 2]
                                .rsplit(|&b| b == b'\n')
                                .next()
                                .unwrap_or_default();
                            if last.starts_with(b"220 ") {
                                h.greeted = true;
                                greeted += 1;
                            } else {
                                failed += 1;
                            }
                            waiting -= 1;
                            poll.registry().deregister(&mut h.stream)?;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed += 1;
                        waiting -= 1;
                        poll.registry().deregister(&mut h.stream)?;
                        break;
                    }
                }
            }
        }
    }
    Ok((held, failed, start.elapsed()))
}

/// Time from connect to the end of the greeting for one new client.
fn probe(addr: SocketAddr) -> io::Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut said = Vec::new();
    let mut buf = [0u8; 512];
    while !said.ends_with(b"\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        said.extend_from_slice(&buf[..n]);
    }
    let took = start.elapsed();
    if !said.starts_with(b"220") {
        return Err(io::Error::other("not greeted with 220"));
    }
    let _ = s.write_all(b"QUIT\r\n");
    Ok(took)
}

/// The server's resident memory (KiB) and thread count from /proc.
fn server_memory(pid: u32) -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("Threads:")))
}
