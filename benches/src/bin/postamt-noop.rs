//! `postamt-noop`: one SMTP client that says EHLO, then NOOP at a steady
//! pace, and times each reply: run it beside a load to see whether a
//! session that asks nothing of the store waits behind those that do (an
//! fsync, a full pool, a busy loop).
//!
//! ```text
//! cargo run --release -p postamt-benches --bin postamt-noop -- \
//!     --smtp 127.0.0.1:2525 --interval-ms 10 --duration 30 --stop-file /tmp/stop
//! ```
//!
//! A NOOP goes out every `--interval-ms` (or at once when the last reply
//! took longer), until `--duration` seconds have passed or `--stop-file`
//! exists (benches/e2e.sh creates it when its load is done). Printed: the
//! number of replies, their p50, p99 and max in ms, and errors.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

/// Time NOOP replies from one SMTP session while something else loads the
/// server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// SMTP server, HOST:PORT (loopback only).
    #[arg(long)]
    smtp: String,
    /// Milliseconds from one NOOP to the next.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Seconds to go on at most.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Seconds to wait for any one reply before giving up.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = match args.smtp.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) if a.ip().is_loopback() => a,
        Ok(Some(a)) => return fail(&format!("{a} is not a loopback address")),
        Ok(None) | Err(_) => return fail(&format!("cannot resolve {}", args.smtp)),
    };
    let mut latencies = Vec::new();
    let start = Instant::now();
    let outcome = run(addr, &args, &mut latencies);
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let n = latencies.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    let errors = u32::from(outcome.is_err());
    println!(
        "noop: {n} replies in {secs:.2} s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; errors {errors}",
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    match outcome {
        Ok(()) if n > 0 => ExitCode::SUCCESS,
        Ok(()) => fail("no NOOP was answered"),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(what: &str) -> ExitCode {
    eprintln!("postamt-noop: {what}");
    ExitCode::FAILURE
}

/// The session: greeting, EHLO, then NOOPs until told to stop.
fn run(addr: SocketAddr, args: &Args, latencies: &mut Vec<Duration>) -> io::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    expect(&mut reader, "220")?;
    writer.write_all(b"EHLO noop.kolleg.de\r\n")?;
    expect(&mut reader, "250")?;
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= until || args.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        if next > now {
            thread::sleep(next - now);
        }
        let sent = Instant::now();
        writer.write_all(b"NOOP\r\n")?;
        expect(&mut reader, "250")?;
        latencies.push(sent.elapsed());
        next = sent + interval;
    }
    writer.write_all(b"QUIT\r\n")?;
    expect(&mut reader, "221")
}

/// Reads one reply (all its lines) and checks its code.
fn expect(reader: &mut BufReader<TcpStream>, code: &str) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    if line.starts_with(code) && line.as_bytes().get(3) == Some(&b' ') {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "wanted {code}, got {:?}",
            line.trim_end()
        )))
    }
}
