//! The queue's control socket: how `toy-server queue flush` reaches the
//! running server that owns a queue folder, as `postqueue -f` reaches
//! Postfix's queue manager. A Unix socket in the queue folder; one request
//! line per connection (`flush`), one answer line (`ok N`: N deferred
//! recipients are due now; or `error WHY`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::forward::Forwarder;

/// A request or an answer is one short line; more is not ours.
const MAX_LINE: u64 = 256;
/// A peer that says nothing this long is dropped.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The listening socket; dropping it stops the thread and removes the file.
pub(crate) struct Control {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Control {
    /// Listens at `path` for the forwarder. A socket file left by a server
    /// that is gone is replaced; one that still answers belongs to a
    /// running server with the same queue, which is an error.
    pub(crate) fn serve(path: &Path, forwarder: Forwarder) -> io::Result<Self> {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: another server is running with this queue",
                    path.display()
                ),
            ));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("queue-control".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Ok(conn) = conn {
                            let _ = answer(conn, &forwarder);
                        }
                    }
                })?
        };
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // accept() blocks: a connection of our own wakes it to see the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(conn: UnixStream, forwarder: &Forwarder) -> io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_LINE)).read_line(&mut line)?;
    let reply = match line.trim_end_matches(['\r', '\n']) {
        "flush" => match forwarder.flush() {
            Some(n) => format!("ok {n}\n"),
            None => "error the forwarder is stopping\n".to_string(),
        },
        "" => return Ok(()),
        _ => "error unknown request (known: flush)\n".to_string(),
    };
    (&conn).write_all(reply.as_bytes())
}

/// Asks the server listening at `path` to retry every deferred recipient
/// now; how many it made due. The error says why not (no server running
/// with this queue, for one).
pub fn flush(path: &Path) -> Result<usize, String> {
    let conn = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "no running server owns this queue ({}: {e})",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    let io_err = |e: io::Error| format!("{}: {e}", path.display());
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(io_err)?;
    (&conn).write_all(b"flush\n").map_err(io_err)?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_LINE))
        .read_line(&mut line)
        .map_err(io_err)?;
    let line = line.trim_end();
    match line.strip_prefix("ok ").map(str::parse::<usize>) {
        Some(Ok(n)) => Ok(n),
        _ => Err(format!(
            "the server answered {:?}",
            line.strip_prefix("error ").unwrap_or(line)
        )),
    }
}
