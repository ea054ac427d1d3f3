//! The teacher's page (`--web ADDR:PORT`): one live page for the projector
//! with every connection's `C:`/`S:` dialogue as it happens (the trace's own
//! lines, masked and escaped by the trace module), each mailbox with its
//! messages, and the outbound queue with each recipient's state.
//!
//! The page (HTML, CSS and JavaScript in `web/`, built into the binary)
//! gets its updates as Server-Sent Events from `/events`: a snapshot first,
//! then one event per trace line and a new mailbox or queue listing when
//! either changed. The page puts every text in with `textContent`, and the
//! Content-Security-Policy allows no inline script, so a Subject holding
//! `<script>` is shown, never run.
//!
//! It only reads: mailboxes through [`MailView`] (no lock, so a POP3 login
//! is never turned away because the teacher looks), the queue through
//! [`Spool::list`]. Memory is bounded ([`MAX_CONNECTIONS`],
//! [`MAX_LINES`], [`MAX_MESSAGES`], [`MAX_SOURCE`]), and a browser never
//! holds up a session: each has a queue of [`BROWSER_QUEUE`] events, and
//! one that falls that far behind is dropped (its page reconnects and
//! starts again from a snapshot).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use postamt_relay::{MessageId, QueuedMessage, RecipientState};
use postamt_store::{MailView, MailboxName, Spool};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::trace::{Said, printable};

/// Connections kept for the page, the most recent ones.
pub const MAX_CONNECTIONS: usize = 60;
/// Lines kept per connection, the most recent ones (the handout's two
/// sessions take about 40).
pub const MAX_LINES: usize = 200;
/// Messages shown per mailbox, the most recent ones.
pub const MAX_MESSAGES: usize = 20;
/// Octets of a message's source shown; the rest is counted, not sent.
/// With [`MAX_MESSAGES`] this bounds a mailbox's listing to about 1 MiB
/// (source, headers and body each at most this).
pub const MAX_SOURCE: usize = 16 * 1024;
/// Events that may wait for one browser before it is dropped.
pub const BROWSER_QUEUE: usize = 1024;
/// Browsers watching at once; more get `503`.
pub const MAX_BROWSERS: usize = 16;
/// How often mailboxes and the queue are looked at when no connection
/// says anything (mail may come from other tools too).
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// The shortest time between two looks, however busy the connections.
const LOOK_GAP: Duration = Duration::from_millis(30);
/// A comment line this often finds browsers that went away.
const KEEPALIVE: Duration = Duration::from_secs(15);

const PAGE_HTML: &str = include_str!("web/page.html");
const PAGE_CSS: &str = include_str!("web/page.css");
const PAGE_JS: &str = include_str!("web/page.js");

/// Scripts and styles only from the page's own files: no inline script or
/// handler runs, whatever text ends up in the document.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Where the page is served and what it shows.
pub struct Web {
    /// Address and port of the page (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The mailboxes, looked at without a lock.
    pub view: Arc<dyn MailView>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// One line of a connection's dialogue, as the trace shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct Line {
    /// `C`, `S`, `note` or `error`.
    said: &'static str,
    text: String,
}

#[derive(Clone, Debug, Serialize)]
struct Connection {
    id: u64,
    protocol: &'static str,
    open: bool,
    /// Lines dropped from the front to stay within [`MAX_LINES`].
    cut: u64,
    lines: VecDeque<Line>,
}

/// What the page is told.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event<'a> {
    /// Everything, first thing after connecting.
    Snapshot {
        connections: &'a VecDeque<Connection>,
        mailboxes: &'a RawValue,
        queue: &'a RawValue,
    },
    /// A connection said something (it is new if the page does not know it).
    Line {
        id: u64,
        protocol: &'static str,
        #[serde(flatten)]
        line: &'a Line,
    },
    /// A connection ended.
    Closed { id: u64 },
    /// The mailboxes changed.
    Mailboxes { mailboxes: &'a RawValue },
    /// The queue changed.
    Queue { queue: &'a RawValue },
}

/// A mailbox as the page shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct Mailbox {
    name: String,
    count: usize,
    size: u64,
    /// The most recent [`MAX_MESSAGES`], oldest first.
    messages: Vec<Message>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct Message {
    uid: String,
    size: u64,
    from: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    date: Option<String>,
    /// The header section, the body (decoded text where the message has
    /// one) and the source, each with control characters made visible.
    headers: String,
    body: String,
    source: String,
    /// Octets of the source not shown (past [`MAX_SOURCE`]).
    more: u64,
}

/// A queued message as the page shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct Queued {
    id: String,
    size: u64,
    from: String,
    subject: Option<String>,
    recipients: Vec<QueuedRecipient>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct QueuedRecipient {
    to: String,
    /// `pending`, `deferred`, `delivered` or `failed`.
    state: &'static str,
    detail: String,
}

/// The state of the page, shared by the sessions (through the trace sink),
/// the looker and the browsers' writers.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Mutex<State>,
    stopped: AtomicBool,
    /// Browsers watching now.
    watching: AtomicUsize,
    /// Set when a connection said something: mail may have changed, so
    /// the looker looks at once.
    said: Mutex<bool>,
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    connections: VecDeque<Connection>,
    /// The listings, as JSON: made by the looker outside the lock, so a
    /// session handing on a trace line never waits for a large one.
    mailboxes: Box<RawValue>,
    queue: Box<RawValue>,
    browsers: Vec<SyncSender<Arc<str>>>,
}

fn empty_list() -> Box<RawValue> {
    RawValue::from_string("[]".to_string()).expect("valid JSON")
}

impl Default for State {
    fn default() -> Self {
        Self {
            connections: VecDeque::new(),
            mailboxes: empty_list(),
            queue: empty_list(),
            browsers: Vec::new(),
        }
    }
}

/// One Server-Sent Events message carrying `data` (each of its lines its
/// own `data:` field, as the format requires).
pub(crate) fn sse(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

fn json<T: Serialize>(value: &T) -> Box<RawValue> {
    // Serialising these plain structs cannot fail.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| empty_list())
}

fn encode(event: &Event<'_>) -> Arc<str> {
    // Serialising these plain structs cannot fail.
    let json = serde_json::to_string(event).unwrap_or_default();
    sse(&json).into()
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            stopped: AtomicBool::new(false),
            watching: AtomicUsize::new(0),
            said: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A trace line of connection `id` (see [`crate::trace::Sink`]).
    pub(crate) fn line(&self, id: u64, protocol: &'static str, said: Said, text: &str) {
        let said = match said {
            Said::Client => "C",
            Said::Server => "S",
            Said::Note => "note",
            Said::Error => "error",
            Said::Closed => return self.closed(id),
        };
        let line = Line {
            said,
            text: text.to_string(),
        };
        let mut state = self.lock();
        let conn = match state.connections.iter().rposition(|c| c.id == id) {
            Some(at) => &mut state.connections[at],
            None => {
                if state.connections.len() >= MAX_CONNECTIONS {
                    state.connections.pop_front();
                }
                state.connections.push_back(Connection {
                    id,
                    protocol,
                    open: true,
                    cut: 0,
                    lines: VecDeque::new(),
                });
                state.connections.back_mut().expect("just pushed")
            }
        };
        if conn.lines.len() >= MAX_LINES {
            conn.lines.pop_front();
            conn.cut += 1;
        }
        conn.lines.push_back(line.clone());
        let event = encode(&Event::Line {
            id,
            protocol,
            line: &line,
        });
        state.send(&event);
        drop(state);
        *self.said.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Waits until a connection said something, or `timeout`.
    fn wait_for_news(&self, timeout: Duration) {
        let said = self.said.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut said, _) = self
            .wake
            .wait_timeout_while(said, timeout, |said| !*said)
            .unwrap_or_else(PoisonError::into_inner);
        *said = false;
    }

    fn closed(&self, id: u64) {
        let mut state = self.lock();
        let Some(conn) = state.connections.iter_mut().rev().find(|c| c.id == id) else {
            return;
        };
        conn.open = false;
        state.send(&encode(&Event::Closed { id }));
    }

    /// A new browser: its queue starts with the snapshot, and every event
    /// after it follows in order.
    fn watch(&self) -> mpsc::Receiver<Arc<str>> {
        let (tx, rx) = mpsc::sync_channel(BROWSER_QUEUE);
        let mut state = self.lock();
        let snapshot = encode(&Event::Snapshot {
            connections: &state.connections,
            mailboxes: &state.mailboxes,
            queue: &state.queue,
        });
        if tx.try_send(snapshot).is_ok() && !self.stopped.load(Ordering::SeqCst) {
            state.browsers.push(tx);
        }
        rx
    }

    /// New mailbox listings (JSON), sent to every browser.
    fn set_mailboxes(&self, mailboxes: Box<RawValue>) {
        let mut state = self.lock();
        state.mailboxes = mailboxes;
        let event = encode(&Event::Mailboxes {
            mailboxes: &state.mailboxes,
        });
        state.send(&event);
    }

    /// A new queue listing (JSON), sent to every browser.
    fn set_queue(&self, queue: Box<RawValue>) {
        let mut state = self.lock();
        state.queue = queue;
        let event = encode(&Event::Queue {
            queue: &state.queue,
        });
        state.send(&event);
    }

    /// Lets every browser go (their streams end).
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.lock().browsers.clear();
        *self.said.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    #[cfg(test)]
    fn browsers(&self) -> usize {
        self.lock().browsers.len()
    }
}

impl State {
    /// Queues `event` for every browser, never waiting: one whose queue is
    /// full is too slow (or stuck) and is dropped.
    fn send(&mut self, event: &Arc<str>) {
        self.browsers
            .retain(|tx| match tx.try_send(Arc::clone(event)) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            });
    }
}

/// The running page: its HTTP thread and its looker.
#[derive(Debug)]
pub(crate) struct Running {
    hub: Arc<Hub>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(self) {
        self.hub.stop();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds the page's address and starts serving; the hub is what the trace
/// sink feeds.
pub(crate) fn start(
    web: Web,
    spool: Arc<dyn Spool>,
    hub: Arc<Hub>,
) -> Result<Running, (String, io::Error)> {
    let server = tiny_http::Server::http(web.listen).map_err(|e| {
        let hint = "another program may be using the port: choose another with \
                    --web 127.0.0.1:PORT";
        (hint.to_string(), io::Error::other(e.to_string()))
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| ("not an IP address".to_string(), io::Error::other("unix")))?;
    let serving = {
        let hub = Arc::clone(&hub);
        thread::Builder::new()
            .name("web".into())
            .spawn(move || serve(&server, &hub))
            .map_err(|e| ("cannot start a thread".to_string(), e))?
    };
    let looking = {
        let hub = Arc::clone(&hub);
        thread::Builder::new()
            .name("web-look".into())
            .spawn(move || look(&*web.view, &*spool, &hub))
            .map_err(|e| ("cannot start a thread".to_string(), e))?
    };
    Ok(Running {
        hub,
        addr,
        threads: vec![serving, looking],
    })
}

/// Looks at the mailboxes and the queue until stopped, telling the hub
/// what changed. A message's rendering is kept while it is listed.
fn look(view: &dyn MailView, spool: &dyn Spool, hub: &Hub) {
    let mut shown: HashMap<(String, String), Message> = HashMap::new();
    let mut queued: HashMap<String, Option<String>> = HashMap::new();
    let (mut last_mailboxes, mut last_queue) = (Vec::new(), Vec::new());
    while !hub.stopped.load(Ordering::SeqCst) {
        match mailboxes(view, &mut shown) {
            Ok(listing) if listing != last_mailboxes => {
                hub.set_mailboxes(json(&listing));
                last_mailboxes = listing;
            }
            Ok(_) => {}
            Err(e) => eprintln!("teacher's page: cannot look at the mailboxes: {e}"),
        }
        match queue(spool, &mut queued) {
            Ok(listing) if listing != last_queue => {
                hub.set_queue(json(&listing));
                last_queue = listing;
            }
            Ok(_) => {}
            Err(e) => eprintln!("teacher's page: cannot look at the queue: {e}"),
        }
        thread::sleep(LOOK_GAP);
        hub.wait_for_news(LOOK_EVERY);
    }
}

fn mailboxes(
    view: &dyn MailView,
    shown: &mut HashMap<(String, String), Message>,
) -> Result<Vec<Mailbox>, postamt_store::StoreError> {
    let mut kept = HashMap::new();
    let mut listing = Vec::new();
    for name in view.mailboxes()? {
        let infos = view.peek(&name)?;
        let mut messages = Vec::new();
        for info in infos.iter().skip(infos.len().saturating_sub(MAX_MESSAGES)) {
            let key = (name.as_str().to_string(), info.uid.as_str().to_string());
            let message = match shown.remove(&key) {
                Some(m) => m,
                None => match read(view, &name, info)? {
                    Some(m) => m,
                    None => continue, // deleted meanwhile
                },
            };
            messages.push(message.clone());
            kept.insert(key, message);
        }
        listing.push(Mailbox {
            name: name.as_str().to_string(),
            count: infos.len(),
            size: infos.iter().map(|i| i.size).sum(),
            messages,
        });
    }
    *shown = kept;
    Ok(listing)
}

/// Reads the first [`MAX_SOURCE`] octets of a message and renders them.
fn read(
    view: &dyn MailView,
    mailbox: &MailboxName,
    info: &postamt_store::MessageInfo,
) -> Result<Option<Message>, postamt_store::StoreError> {
    let Some(reader) = view.peek_message(mailbox, &info.uid)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    if let Err(e) = reader.take(MAX_SOURCE as u64).read_to_end(&mut bytes) {
        eprintln!("teacher's page: cannot read a message of {mailbox}: {e}");
        return Ok(None);
    }
    Ok(Some(render(info.uid.as_str(), info.size, &bytes)))
}

/// A message (or its first octets) as the page shows it.
fn render(uid: &str, size: u64, bytes: &[u8]) -> Message {
    let summary = postamt_store::summary(bytes);
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |at| at + 2);
    let body = mail_parser::MessageParser::new()
        .parse(bytes)
        .and_then(|m| m.body_text(0).map(|text| text.into_owned()));
    let body = match body {
        Some(text) => visible(text.as_bytes()),
        None => visible(bytes.get(split + 2..).unwrap_or_default()),
    };
    Message {
        uid: uid.to_string(),
        size,
        from: summary.from.map(|t| visible(t.as_bytes())),
        to: summary.to.map(|t| visible(t.as_bytes())),
        subject: summary.subject.map(|t| visible(t.as_bytes())),
        date: summary.date,
        headers: visible(&bytes[..split]),
        body,
        source: visible(bytes),
        more: size.saturating_sub(bytes.len() as u64),
    }
}

/// Text with its line breaks kept and everything else that could steer a
/// display made visible, by the trace's own rule.
pub(crate) fn visible(bytes: &[u8]) -> String {
    let text = bytes.strip_suffix(b"\r\n").unwrap_or(bytes);
    text.split(|&b| b == b'\n')
        .map(|line| printable(line.strip_suffix(b"\r").unwrap_or(line)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn queue(
    spool: &dyn Spool,
    subjects: &mut HashMap<String, Option<String>>,
) -> Result<Vec<Queued>, postamt_store::StoreError> {
    let mut kept = HashMap::new();
    let mut listing = Vec::new();
    for entry in spool.list()? {
        let Ok(message) =
            QueuedMessage::from_record(MessageId::new(entry.id.as_str()), &entry.record)
        else {
            continue;
        };
        let id = entry.id.as_str().to_string();
        let subject = match subjects.remove(&id) {
            Some(subject) => subject,
            None => {
                let mut head = Vec::new();
                match spool.read(&entry.id) {
                    Ok(r) => {
                        let _ = r.take(16 * 1024).read_to_end(&mut head);
                    }
                    Err(_) => continue, // delivered and removed meanwhile
                }
                postamt_store::summary(&head)
                    .subject
                    .map(|s| visible(s.as_bytes()))
            }
        };
        kept.insert(id.clone(), subject.clone());
        listing.push(Queued {
            id,
            size: entry.size,
            from: printable(message.reverse_path().to_string().as_bytes()),
            subject,
            recipients: message
                .recipients()
                .iter()
                .map(|r| {
                    let (state, detail) = recipient_state(r.state());
                    QueuedRecipient {
                        to: printable(r.mailbox().to_string().as_bytes()),
                        state,
                        detail,
                    }
                })
                .collect(),
        });
    }
    *subjects = kept;
    Ok(listing)
}

/// A recipient's state in words, as `toy-server queue` prints it: its name
/// and what else is known (attempts, next attempt, last reply).
pub fn recipient_state(state: &RecipientState) -> (&'static str, String) {
    let date = |t: SystemTime| httpdate::fmt_http_date(t).replace("GMT", "+0000");
    let said = |r: &postamt_smtp::Reply| r.to_string().trim_end().replace("\r\n", " / ");
    match state {
        RecipientState::Pending => ("pending", String::new()),
        RecipientState::Deferred {
            attempts,
            next_attempt,
            last_reply,
        } => (
            "deferred",
            format!(
                "{attempts} attempt(s), next {}; last reply: {}",
                date(*next_attempt),
                said(last_reply)
            ),
        ),
        RecipientState::Delivered { reply } => ("delivered", said(reply)),
        RecipientState::Failed { reply } => ("failed", said(reply)),
    }
}

fn serve(server: &tiny_http::Server, hub: &Arc<Hub>) {
    while !hub.stopped.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("teacher's page: {e}");
                continue;
            }
        };
        let host = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Host"))
            .map(|h| h.value.as_str());
        if !host_allowed(host) {
            let refused = tiny_http::Response::from_string(
                "open this page by the server's address, such as http://127.0.0.1:8025/\n",
            )
            .with_status_code(403);
            let _ = request.respond(with_headers(refused, "text/plain; charset=utf-8"));
            continue;
        }
        let get = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let file = match (get, path.as_str()) {
            (false, _) => Err(405),
            (true, "/") => Ok((PAGE_HTML, "text/html; charset=utf-8")),
            (true, "/page.css") => Ok((PAGE_CSS, "text/css; charset=utf-8")),
            (true, "/page.js") => Ok((PAGE_JS, "text/javascript; charset=utf-8")),
            (true, "/events") => {
                stream(request, hub);
                continue;
            }
            (true, _) => Err(404),
        };
        let response = match file {
            Ok((body, kind)) => with_headers(tiny_http::Response::from_string(body), kind),
            Err(code) => with_headers(
                tiny_http::Response::from_string(if code == 404 {
                    "not found\n"
                } else {
                    "this page only reads\n"
                })
                .with_status_code(code),
                "text/plain; charset=utf-8",
            ),
        };
        let _ = request.respond(response);
    }
}

/// Whether a request's `Host` names the page by an address or as
/// `localhost`: a web site the teacher visits cannot then reach the page
/// under a name of its own that it makes resolve to 127.0.0.1 (DNS
/// rebinding) and read the class's mail.
fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn with_headers<R: Read>(response: tiny_http::Response<R>, kind: &str) -> tiny_http::Response<R> {
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
    };
    response
        .with_header(header("Content-Type", kind))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Content-Security-Policy", CSP))
}

/// Starts a browser's event stream on a thread of its own.
fn stream(request: tiny_http::Request, hub: &Arc<Hub>) {
    if hub.watching.fetch_add(1, Ordering::SeqCst) >= MAX_BROWSERS {
        hub.watching.fetch_sub(1, Ordering::SeqCst);
        let busy =
            tiny_http::Response::from_string("too many browsers watching\n").with_status_code(503);
        let _ = request.respond(with_headers(busy, "text/plain; charset=utf-8"));
        return;
    }
    let events = hub.watch();
    let watcher = Arc::clone(hub);
    let spawned = thread::Builder::new()
        .name("web-events".into())
        .spawn(move || {
            let _ = write_events(request.into_writer(), &events);
            watcher.watching.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        hub.watching.fetch_sub(1, Ordering::SeqCst);
        eprintln!("teacher's page: cannot start a thread: {e}");
    }
}

/// Writes the stream: the response head, then each event as it comes, one
/// chunk each, flushed. Ends (with the last chunk) when the hub lets this
/// browser go, or on a write error.
fn write_events(
    mut out: Box<dyn Write + Send>,
    events: &mpsc::Receiver<Arc<str>>,
) -> io::Result<()> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\n\
          Content-Type: text/event-stream; charset=utf-8\r\n\
          Cache-Control: no-store\r\n\
          X-Content-Type-Options: nosniff\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )?;
    let mut body = chunked_transfer::Encoder::new(out);
    // Reconnect soon after a drop.
    let mut send = |text: &str| -> io::Result<()> {
        body.write_all(text.as_bytes())?;
        body.flush()?;
        body.get_mut().flush()
    };
    send("retry: 1000\n\n")?;
    loop {
        match events.recv_timeout(KEEPALIVE) {
            Ok(event) => send(&event)?,
            Err(RecvTimeoutError::Timeout) => send(": still here\n\n")?,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_puts_each_line_in_a_data_field() {
        assert_eq!(sse(r#"{"a":1}"#), "data: {\"a\":1}\n\n");
        assert_eq!(
            sse("one\ntwo\r\nthree"),
            "data: one\ndata: two\ndata: three\n\n"
        );
        assert_eq!(sse(""), "data: \n\n");
    }

    #[test]
    fn events_are_json_with_a_type() {
        let line = Line {
            said: "C",
            text: "HELO <b>\u{1b}".to_string(),
        };
        assert_eq!(
            &*encode(&Event::Line {
                id: 7,
                protocol: "smtp",
                line: &line
            }),
            "data: {\"type\":\"line\",\"id\":7,\"protocol\":\"smtp\",\"said\":\"C\",\
             \"text\":\"HELO <b>\\u001b\"}\n\n"
        );
        assert_eq!(
            &*encode(&Event::Closed { id: 3 }),
            "data: {\"type\":\"closed\",\"id\":3}\n\n"
        );
    }

    #[test]
    fn only_addresses_and_localhost_name_the_page() {
        for ok in [
            "127.0.0.1:8025",
            "127.0.0.1",
            "localhost:8025",
            "LOCALHOST",
            "[::1]:8025",
            "[::1]",
            "192.168.1.5:8025",
        ] {
            assert!(host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8025",
            "evil.example",
            "127.0.0.1.evil.example",
            "[::1",
            "",
            "localhost.evil:80",
        ] {
            assert!(!host_allowed(Some(bad)), "{bad}");
        }
        assert!(!host_allowed(None));
    }

    #[test]
    fn visible_keeps_lines_and_escapes_the_rest() {
        assert_eq!(visible(b"a\r\nb\x1b[31m\r\n"), "a\nb\\u{1b}[31m");
        assert_eq!(visible(b"x\ny\xff"), "x\ny\\xff");
        assert_eq!(visible(b""), "");
    }

    #[test]
    fn a_message_is_rendered_in_parts() {
        let bytes =
            b"From: anna@kolleg.de\r\nSubject: <script>x()</script>\r\n\r\nHallo\r\nBob\r\n";
        let m = render("u1", 99, bytes);
        assert_eq!(m.subject.as_deref(), Some("<script>x()</script>"));
        assert_eq!(m.from.as_deref(), Some("anna@kolleg.de"));
        assert_eq!(
            m.headers,
            "From: anna@kolleg.de\nSubject: <script>x()</script>"
        );
        assert_eq!(m.body, "Hallo\nBob");
        assert_eq!(
            m.source,
            "From: anna@kolleg.de\nSubject: <script>x()</script>\n\nHallo\nBob"
        );
        assert_eq!(m.more, 99 - bytes.len() as u64);
    }

    fn drain(rx: &mpsc::Receiver<Arc<str>>) -> Vec<String> {
        rx.try_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn connections_and_lines_are_bounded() {
        let hub = Hub::new();
        for id in 0..(MAX_CONNECTIONS as u64 + 5) {
            hub.line(id, "smtp", Said::Note, "hi");
        }
        for n in 0..MAX_LINES + 3 {
            hub.line(99, "pop3", Said::Server, &format!("+OK {n}"));
        }
        let state = hub.lock();
        assert_eq!(state.connections.len(), MAX_CONNECTIONS);
        assert_eq!(state.connections[0].id, 6);
        let last = state.connections.back().unwrap();
        assert_eq!((last.id, last.lines.len(), last.cut), (99, MAX_LINES, 3));
        assert_eq!(last.lines[0].text, "+OK 3");
    }

    #[test]
    fn a_browser_gets_a_snapshot_then_events_in_order() {
        let hub = Hub::new();
        hub.line(1, "smtp", Said::Server, "220 hi");
        let rx = hub.watch();
        hub.line(1, "smtp", Said::Client, "QUIT");
        hub.line(1, "smtp", Said::Closed, "");
        let seen = drain(&rx);
        assert_eq!(seen.len(), 3);
        assert!(seen[0].starts_with("data: {\"type\":\"snapshot\",\"connections\":[{\"id\":1,\"protocol\":\"smtp\",\"open\":true,\"cut\":0,\"lines\":[{\"said\":\"S\",\"text\":\"220 hi\"}]}],\"mailboxes\":[],\"queue\":[]}"), "{}", seen[0]);
        assert_eq!(
            seen[1],
            "data: {\"type\":\"line\",\"id\":1,\"protocol\":\"smtp\",\"said\":\"C\",\"text\":\"QUIT\"}\n\n"
        );
        assert_eq!(seen[2], "data: {\"type\":\"closed\",\"id\":1}\n\n");
        assert!(!hub.lock().connections[0].open);
    }

    #[test]
    fn a_browser_that_falls_behind_is_dropped_and_nobody_waits() {
        let hub = Hub::new();
        let slow = hub.watch();
        let quick = hub.watch();
        for n in 0..BROWSER_QUEUE + 10 {
            hub.line(1, "smtp", Said::Client, &format!("NOOP {n}"));
            // The quick browser keeps up.
            assert!(quick.try_iter().count() > 0);
        }
        assert_eq!(
            hub.browsers(),
            1,
            "the slow one is gone, the quick one stays"
        );
        // What it had queued is still there, then its stream ends.
        assert_eq!(slow.try_iter().count(), BROWSER_QUEUE);
        assert!(matches!(
            slow.try_recv(),
            Err(mpsc::TryRecvError::Disconnected)
        ));
        hub.stop();
        assert!(matches!(
            quick.try_recv(),
            Err(mpsc::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn listings_go_out_whole_and_into_the_next_snapshot() {
        let hub = Hub::new();
        let rx = hub.watch();
        let _ = drain(&rx);
        let mailbox = Mailbox {
            name: "bob@kolleg.de".into(),
            count: 0,
            size: 0,
            messages: Vec::new(),
        };
        hub.set_mailboxes(json(&vec![mailbox]));
        let listed = r#"[{"name":"bob@kolleg.de","count":0,"size":0,"messages":[]}]"#;
        assert_eq!(
            drain(&rx),
            [format!(
                "data: {{\"type\":\"mailboxes\",\"mailboxes\":{listed}}}\n\n"
            )]
        );
        let later = hub.watch();
        assert_eq!(
            drain(&later),
            [format!(
                "data: {{\"type\":\"snapshot\",\"connections\":[],\"mailboxes\":{listed},\"queue\":[]}}\n\n"
            )]
        );
    }
}
