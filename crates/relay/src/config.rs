//! What the relay is told once: its name, the retry schedule, the limits.

use std::time::Duration;

/// The relay's settings. Build with [`RelayConfig::new`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// This server's host name: `Reporting-MTA` of notices, the name a peer
    /// must not greet with (that would be a loop), and our own name in an
    /// MX list.
    pub hostname: String,
    /// Wait before the first retry: 5 minutes (Postfix's
    /// `minimal_backoff_time`; RFC 5321 §4.5.4.1 asks for at least 30).
    pub retry_after: Duration,
    /// The wait doubles after each failure up to this: 1 hour (Postfix's
    /// `maximal_backoff_time`).
    pub retry_max: Duration,
    /// How long after arrival a recipient is given up: 5 days (RFC 5321
    /// §4.5.4.1 says 4 to 5; Postfix's `maximal_queue_lifetime`).
    pub queue_lifetime: Duration,
    /// How long after arrival a recipient that asked for `NOTIFY=DELAY` is
    /// told once that it is still being tried: 4 hours (Postfix's
    /// `delay_warning_time` when set).
    pub delay_warning: Duration,
    /// Deliveries running at once, across all hosts: 20 (Postfix's
    /// `default_destination_concurrency_limit`).
    pub concurrency: usize,
    /// A failure notice returns the whole message only up to this size, its
    /// headers beyond: 50 000 octets (Postfix's `bounce_size_limit`).
    pub return_size_limit: u64,
}

impl RelayConfig {
    /// The defaults above, for the server called `hostname`.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            retry_after: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(60 * 60),
            queue_lifetime: Duration::from_secs(5 * 24 * 60 * 60),
            delay_warning: Duration::from_secs(4 * 60 * 60),
            concurrency: 20,
            return_size_limit: 50_000,
        }
    }

    /// The wait after the `attempts`-th failed attempt (1-based).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.retry_after
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
            .max(self.retry_after.min(self.retry_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = RelayConfig::new("mx.example");
        let minutes: Vec<u64> = (1..=8).map(|n| config.backoff(n).as_secs() / 60).collect();
        assert_eq!(minutes, [5, 10, 20, 40, 60, 60, 60, 60]);
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(3600));
        let fast = RelayConfig {
            retry_after: Duration::from_secs(1),
            retry_max: Duration::from_secs(2),
            ..config
        };
        let secs: Vec<u64> = (1..=4).map(|n| fast.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 2, 2]);
    }
}
