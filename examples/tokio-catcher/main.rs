//! A mail catcher on tokio: an SMTP server that accepts every message and
//! writes each one, durably, to a folder as an `.eml` file. Point the code
//! under test at it and look at what it sent.
//!
//! ```text
//! cargo run --example tokio-catcher -- --listen 127.0.0.1:2525 --dir caught
//! ```
//!
//! It is the second way to embed a postamt session (the toy server's
//! `std::net` loop is the first): one task per connection runs the
//! [`Session`] contract with `tokio::select!` over the socket's reads and
//! the session's own deadline.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use postamt_smtp::{Event, Reply, ServerConfig, ServerSession, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts every message over SMTP and writes it to a folder.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
    /// Folder for the caught messages, one `.eml` file each.
    #[arg(long, default_value = "caught")]
    dir: PathBuf,
    /// The name in the greeting.
    #[arg(long, default_value = "catcher.localhost")]
    hostname: String,
    /// Seconds a client may stay silent between commands (RFC 5321 says 300).
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    let mut config = ServerConfig::new(args.hostname);
    config.timeouts.command = std::time::Duration::from_secs(args.idle_timeout);
    let config = Arc::new(config);
    let catch = Arc::new(Catch {
        dir: args.dir,
        next: AtomicU64::new(1),
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let (config, catch) = (Arc::clone(&config), Arc::clone(&catch));
        tokio::spawn(async move {
            if let Err(e) = serve(stream, config, catch).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Where messages go, and the counter that names them.
struct Catch {
    dir: PathBuf,
    next: AtomicU64,
}

/// One connection: bytes in, events answered, bytes out, until the session
/// is closed and drained.
async fn serve(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
    catch: Arc<Catch>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut session = ServerSession::new(config, Instant::now());
    let mut input = vec![0; 16 * 1024];
    let mut output = Vec::new();
    // The session bounds a message by its SIZE limit, so holding it is bounded.
    let mut message = Vec::new();
    loop {
        while let Some(event) = session.poll_event() {
            let decided = match event {
                Event::Mail { .. } | Event::Rcpt { .. } => session.accept(),
                Event::MessageStart | Event::MessageAborted(_) | Event::Reset => {
                    message.clear();
                    Ok(())
                }
                Event::MessageData(bytes) => {
                    message.extend_from_slice(&bytes);
                    Ok(())
                }
                Event::MessageEnd => {
                    let path = catch.dir.join(catch.name());
                    let data = std::mem::take(&mut message);
                    // The 250 goes out only once the file is on disk.
                    let stored = tokio::task::spawn_blocking(move || write_durably(&path, &data))
                        .await
                        .map_err(io::Error::other)
                        .and_then(|r| r);
                    match stored {
                        Ok(()) => session.accept(),
                        Err(e) => {
                            eprintln!("message not stored: {e}");
                            session.reject(Reply::local_error())
                        }
                    }
                }
                _ => Ok(()),
            };
            decided.map_err(io::Error::other)?;
        }
        output.clear();
        session.poll_transmit(&mut output);
        stream.write_all(&output).await?;
        if session.is_closed() {
            return Ok(());
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            read = stream.read(&mut input) => match read? {
                0 => session.receive_eof(Instant::now()),
                n => session.receive(Instant::now(), &input[..n]),
            },
            () = until(deadline) => session.handle_timeout(Instant::now()),
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Catch {
    fn name(&self) -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{secs}.{}.{n:06}.eml", std::process::id())
    }
}

/// Writes a temporary file, syncs it, renames it into place and syncs the
/// folder, so a message is either whole on disk or not there at all.
fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}
