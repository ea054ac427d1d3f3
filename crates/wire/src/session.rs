//! The one driving contract of every postamt session: SMTP and POP3, server
//! and client.

use std::time::{Duration, Instant};

/// A protocol session that performs no I/O, driven by its caller.
///
/// All four sessions (`postamt_smtp::ServerSession` and `ClientSession`,
/// `postamt_pop3::ServerSession` and `ClientSession`) implement it with the
/// same meaning, so one driver (a `std::net` loop, a tokio task, an event
/// loop, a test harness) serves them all. What differs between them is only
/// the [`Event`](Session::Event) type and the decision methods each session
/// has of its own.
///
/// # Driving a session
///
/// ```text
/// loop {
///     while let Some(event) = session.poll_event() { /* answer decisions */ }
///     out.clear();
///     session.poll_transmit(&mut out);
///     socket.write_all(&out)?;
///     if session.is_closed() { break }            // closed and drained
///     match read with timeout session.time_to_timeout(now) {
///         bytes  => session.receive(now, bytes),
///         eof    => session.receive_eof(now),
///         timer  => session.handle_timeout(now),
///     }
/// }
/// ```
///
/// 1. [`receive`](Session::receive) takes whatever bytes arrived, split
///    anywhere; [`receive_eof`](Session::receive_eof) says the peer closed.
///    The same input, however split, gives the same events and output.
/// 2. [`poll_event`](Session::poll_event) returns what the application must
///    know or decide, one at a time, in protocol order. While a decision is
///    open the session processes no further input; answering it (with the
///    session's own methods) may process input that waited, so poll events
///    again afterwards.
/// 3. [`poll_transmit`](Session::poll_transmit) appends the bytes to send.
///    Writing them out may let a session go on (a POP3 server streaming a
///    message), so a driver polls events and output until neither gives
///    anything.
/// 4. [`poll_timeout`](Session::poll_timeout) says when to call
///    [`handle_timeout`](Session::handle_timeout); calling it early is
///    harmless, and no session ever reads a clock.
/// 5. After STARTTLS or STLS the session emits its TLS event and then
///    processes no input at all (servers) or sends no command (clients) until
///    the caller has run the handshake and called
///    [`tls_established`](Session::tls_established). Plaintext that arrived
///    in between is discarded, as RFC 3207 and RFC 2595 require.
/// 6. [`is_closed`](Session::is_closed) turns true only when the session has
///    ended **and** every event and every output byte has been taken, so a
///    loop written as `while !session.is_closed()` loses nothing, not even a
///    client's final `Closed` event. Then close the connection.
pub trait Session {
    /// What the application must know or decide.
    type Event;
    /// The caller's mistake: a method called in a state that does not allow
    /// it. Never caused by what the peer sent.
    type UsageError: std::error::Error;

    /// Hands the session bytes from the peer, in any split.
    fn receive(&mut self, now: Instant, data: &[u8]);

    /// The peer closed its side of the connection.
    fn receive_eof(&mut self, now: Instant);

    /// The next event, if any.
    #[must_use = "an event may be a decision the session waits for"]
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// Appends the bytes to send to `buf` and returns how many were appended.
    fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize;

    /// When [`handle_timeout`](Session::handle_timeout) should be called
    /// next, if at all (`None` while the application holds a decision, or
    /// once the session has ended).
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant>;

    /// Tells the session the time; past its deadline it ends (with the
    /// protocol's reply where there is one).
    fn handle_timeout(&mut self, now: Instant);

    /// The TLS handshake the session asked for (STARTTLS, STLS) has
    /// completed; the session goes on over TLS. An error when no handshake
    /// was due.
    fn tls_established(&mut self) -> Result<(), Self::UsageError>;

    /// Whether the session has ended and everything it had to say (events
    /// and output) has been taken: close the connection now.
    fn is_closed(&self) -> bool;

    /// How long to wait from `now` before calling
    /// [`handle_timeout`](Session::handle_timeout): zero when the deadline
    /// has passed, `None` when there is none.
    #[must_use]
    fn time_to_timeout(&self, now: Instant) -> Option<Duration> {
        self.poll_timeout()
            .map(|deadline| deadline.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session that ends after one line and says so in an event.
    #[derive(Default)]
    struct Echo {
        events: Vec<&'static str>,
        out: Vec<u8>,
        ended: bool,
        deadline: Option<Instant>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no handshake due")]
    struct NoHandshake;

    impl Session for Echo {
        type Event = &'static str;
        type UsageError = NoHandshake;
        fn receive(&mut self, _now: Instant, data: &[u8]) {
            self.out.extend_from_slice(data);
            self.events.push("closed");
            self.ended = true;
        }
        fn receive_eof(&mut self, _now: Instant) {
            self.ended = true;
        }
        fn poll_event(&mut self) -> Option<&'static str> {
            self.events.pop()
        }
        fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
            let n = self.out.len();
            buf.append(&mut self.out);
            n
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.deadline
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn tls_established(&mut self) -> Result<(), NoHandshake> {
            Err(NoHandshake)
        }
        fn is_closed(&self) -> bool {
            self.ended && self.events.is_empty() && self.out.is_empty()
        }
    }

    #[test]
    fn time_to_timeout_counts_from_now_and_never_goes_negative() {
        let now = Instant::now();
        let mut s = Echo::default();
        assert_eq!(s.time_to_timeout(now), None);
        s.deadline = Some(now + Duration::from_secs(5));
        assert_eq!(s.time_to_timeout(now), Some(Duration::from_secs(5)));
        assert_eq!(
            s.time_to_timeout(now + Duration::from_secs(9)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_loop_on_is_closed_sees_the_last_event() {
        let now = Instant::now();
        let mut s = Echo::default();
        s.receive(now, b"bye\r\n");
        let mut seen = Vec::new();
        let mut out = Vec::new();
        while !s.is_closed() {
            while let Some(e) = s.poll_event() {
                seen.push(e);
            }
            s.poll_transmit(&mut out);
        }
        assert_eq!(seen, ["closed"]);
        assert_eq!(out, b"bye\r\n");
    }
}
