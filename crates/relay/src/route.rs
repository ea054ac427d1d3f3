//! Where mail for a domain goes: a static route, the smart host, or the
//! domain's MX records, which the caller looks up and hands in.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use postamt_smtp::{EnhancedCode, Reply};

use crate::rng::SplitMix64;

/// A host to connect to: a name (resolved by the caller to A/AAAA) or an
/// address literal in brackets, and the port if a route named one (the
/// caller uses 25 otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    host: String,
    port: Option<u16>,
}

impl NextHop {
    /// A host without a port. Names are compared without case, so they are
    /// kept in lower case; a trailing dot (as DNS writes names) is dropped.
    pub fn new(host: &str) -> Self {
        let host = host.strip_suffix('.').unwrap_or(host);
        Self {
            host: host.to_ascii_lowercase(),
            port: None,
        }
    }

    /// The same host on `port`.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The host name or `[address literal]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port a route named, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// A `HOST[:PORT]` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadNextHop(String);

impl fmt::Display for BadNextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a HOST[:PORT]: {:?}", self.0)
    }
}

impl std::error::Error for BadNextHop {}

impl FromStr for NextHop {
    type Err = BadNextHop;

    /// Reads `host`, `host:port`, `[192.0.2.1]:2525` or `[IPv6:2001:db8::1]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadNextHop(s.to_owned());
        let (host, port) = if s.starts_with('[') {
            let end = s.find(']').ok_or_else(bad)?;
            match &s[end + 1..] {
                "" => (&s[..=end], None),
                rest => (&s[..=end], Some(rest.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match s.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        let name_ok = host.len() > 2 && host.starts_with('[')
            || !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !name_ok {
            return Err(bad());
        }
        let hop = Self::new(host);
        match port {
            None => Ok(hop),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Ok(hop.with_port(p)),
                _ => Err(bad()),
            },
        }
    }
}

/// How a recipient domain is reached, as [`Routes::route`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// One of our own domains: delivered here, never relayed.
    Local,
    /// A static route or the smart host: these hosts, in this order, no MX
    /// lookup.
    Hosts(Vec<NextHop>),
    /// Look up the MX records of this domain (lower case) and hand the
    /// answer to [`resolve_mx`].
    Dns(String),
}

/// The routing table: local domains, static routes, the smart host.
///
/// Decided in this order: local, a static route for exactly this domain,
/// the smart host, DNS (an address literal goes to that address).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    local: HashSet<String>,
    fixed: HashMap<String, NextHop>,
    smart_host: Option<NextHop>,
}

impl Routes {
    /// No local domains, no routes, no smart host: everything by DNS.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `domain` as ours.
    #[must_use]
    pub fn local_domain(mut self, domain: &str) -> Self {
        self.local.insert(domain.to_ascii_lowercase());
        self
    }

    /// Sends mail for `domain` to `hop` (Postfix's transport map).
    #[must_use]
    pub fn static_route(mut self, domain: &str, hop: NextHop) -> Self {
        self.fixed.insert(domain.to_ascii_lowercase(), hop);
        self
    }

    /// Sends all other foreign mail to `hop` (Postfix's relayhost).
    #[must_use]
    pub fn smart_host(mut self, hop: NextHop) -> Self {
        self.smart_host = Some(hop);
        self
    }

    /// Whether `domain` is one of ours.
    pub fn is_local(&self, domain: &str) -> bool {
        self.local.contains(&domain.to_ascii_lowercase())
    }

    /// Where mail for `domain` goes.
    pub fn route(&self, domain: &str) -> Route {
        let domain = domain.to_ascii_lowercase();
        if self.local.contains(&domain) {
            Route::Local
        } else if let Some(hop) = self.fixed.get(&domain) {
            Route::Hosts(vec![hop.clone()])
        } else if let Some(hop) = &self.smart_host {
            Route::Hosts(vec![hop.clone()])
        } else if domain.starts_with('[') {
            Route::Hosts(vec![NextHop::new(&domain)])
        } else {
            Route::Dns(domain)
        }
    }
}

/// One MX record: preference and exchange host, as DNS returned them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// Lower is tried first.
    pub preference: u16,
    /// The host name; `.` (or empty) is the null MX of RFC 7505.
    pub exchange: String,
}

impl MxRecord {
    /// A record.
    pub fn new(preference: u16, exchange: impl Into<String>) -> Self {
        Self {
            preference,
            exchange: exchange.into(),
        }
    }
}

/// What the caller's DNS lookup for a domain found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MxAnswer {
    /// The domain has these MX records.
    Records(Vec<MxRecord>),
    /// The domain exists but has no MX records; `has_address` says whether
    /// it has A or AAAA records (the implicit MX of RFC 5321 §5.1).
    NoMx {
        /// A or AAAA records exist for the domain itself.
        has_address: bool,
    },
    /// NXDOMAIN: there is no such domain.
    NoSuchDomain,
    /// The lookup failed for now (SERVFAIL, timeout); the text says how.
    TryAgain(String),
}

/// `556 5.1.10`: the domain publishes a null MX, it takes no mail (RFC 7505 §3).
pub fn null_mx_reply(domain: &str) -> Reply {
    Reply::new(
        556,
        EnhancedCode::new(5, 1, 10),
        format!("Recipient address has null MX: {domain} accepts no mail"),
    )
}

/// The hosts to try for `domain`, from the caller's DNS answer.
///
/// In preference order, equal preferences shuffled with `seed` (the caller's
/// randomness, RFC 5321 §5.1). No MX but an address: the domain itself
/// (implicit MX). A null MX: `556 5.1.10`. When `own_name` (this server) is
/// among the exchanges, it and every record of equal or higher preference
/// are dropped, as RFC 5321 §5.1 says; if none is left, mail for the domain
/// would loop: `554 5.4.6`. A lookup that failed for now gives a 451 4.4.3
/// (defer); no such domain or no address at all gives 550 5.1.2.
pub fn resolve_mx(
    domain: &str,
    answer: &MxAnswer,
    own_name: &str,
    seed: u64,
) -> Result<Vec<NextHop>, Reply> {
    let mut records = match answer {
        MxAnswer::Records(records) if !records.is_empty() => records.clone(),
        MxAnswer::Records(_) | MxAnswer::NoMx { has_address: true } => {
            return Ok(vec![NextHop::new(domain)]);
        }
        MxAnswer::NoMx { has_address: false } | MxAnswer::NoSuchDomain => {
            return Err(Reply::new(
                550,
                EnhancedCode::new(5, 1, 2),
                format!("Host or domain name not found: {domain}"),
            ));
        }
        MxAnswer::TryAgain(why) => {
            let why: String = why.chars().filter(|c| !c.is_control()).collect();
            return Err(Reply::new(
                451,
                EnhancedCode::new(4, 4, 3),
                format!("DNS lookup for {domain} failed: {why}"),
            ));
        }
    };
    let is_null = |r: &MxRecord| matches!(r.exchange.as_str(), "." | "");
    if records.len() == 1 && records[0].preference == 0 && is_null(&records[0]) {
        return Err(null_mx_reply(domain));
    }
    // A "." among real records is no host; RFC 7505 §3 forbids mixing.
    records.retain(|r| !is_null(r));
    if records.is_empty() {
        return Err(null_mx_reply(domain));
    }
    let own = NextHop::new(own_name);
    if let Some(ours) = records
        .iter()
        .filter(|r| NextHop::new(&r.exchange).host() == own.host())
        .map(|r| r.preference)
        .min()
    {
        records.retain(|r| r.preference < ours);
        if records.is_empty() {
            return Err(loops_back_reply(domain));
        }
    }
    records.sort_by_key(|r| r.preference);
    let mut rng = SplitMix64::new(seed);
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].preference;
        let end = start
            + records[start..]
                .iter()
                .take_while(|r| r.preference == pref)
                .count();
        rng.shuffle(&mut records[start..end]);
        start = end;
    }
    let mut hosts: Vec<NextHop> = Vec::with_capacity(records.len());
    for r in records {
        let hop = NextHop::new(&r.exchange);
        if !hosts.contains(&hop) {
            hosts.push(hop);
        }
    }
    Ok(hosts)
}

/// `554 5.4.6`: mail for `domain` would come back here (RFC 5321 §5.1).
pub fn loops_back_reply(domain: &str) -> Reply {
    Reply::new(
        554,
        EnhancedCode::new(5, 4, 6),
        format!("Mail for {domain} loops back to myself"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(s: &str) -> NextHop {
        s.parse().unwrap()
    }

    #[test]
    fn next_hop_forms() {
        assert_eq!(hop("MX.Example.COM."), NextHop::new("mx.example.com"));
        assert_eq!(hop("mx.example:2525").port(), Some(2525));
        assert_eq!(hop("[192.0.2.1]:26").host(), "[192.0.2.1]");
        assert_eq!(hop("[IPv6:2001:db8::1]").port(), None);
        assert_eq!(
            hop("[ipv6:2001:db8::1]:587").to_string(),
            "[ipv6:2001:db8::1]:587"
        );
        for bad in [
            "",
            "a:b",
            "a:0",
            "a:70000",
            "[1.2.3.4",
            "[1.2.3.4]x",
            "a b",
            "a/b",
        ] {
            assert!(bad.parse::<NextHop>().is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_decide_in_order() {
        let routes = Routes::new()
            .local_domain("Kolleg.de")
            .static_route("schule.example", hop("127.0.0.2:2525"));
        assert_eq!(routes.route("KOLLEG.DE"), Route::Local);
        assert_eq!(
            routes.route("Schule.Example"),
            Route::Hosts(vec![hop("127.0.0.2:2525")])
        );
        assert_eq!(
            routes.route("other.example"),
            Route::Dns("other.example".into())
        );
        assert_eq!(
            routes.route("[192.0.2.7]"),
            Route::Hosts(vec![hop("[192.0.2.7]")])
        );
        let smart = routes.clone().smart_host(hop("relay.isp.example"));
        assert_eq!(
            smart.route("other.example"),
            Route::Hosts(vec![hop("relay.isp.example")])
        );
        // The static route still wins over the smart host, local over both.
        assert_eq!(
            smart.route("schule.example"),
            Route::Hosts(vec![hop("127.0.0.2:2525")])
        );
        assert_eq!(smart.route("kolleg.de"), Route::Local);
        assert!(smart.is_local("KOLLEG.de"));
    }

    fn names(hosts: &[NextHop]) -> Vec<&str> {
        hosts.iter().map(NextHop::host).collect()
    }

    #[test]
    fn mx_in_preference_order() {
        let answer = MxAnswer::Records(vec![
            MxRecord::new(20, "b.example."),
            MxRecord::new(10, "A.example."),
            MxRecord::new(30, "c.example"),
        ]);
        let hosts = resolve_mx("d.example", &answer, "me.example", 1).unwrap();
        assert_eq!(names(&hosts), ["a.example", "b.example", "c.example"]);
    }

    #[test]
    fn equal_preferences_shuffled_by_the_seed_only() {
        let answer = MxAnswer::Records(
            (0..6)
                .map(|i| MxRecord::new(10, format!("mx{i}.example")))
                .chain([
                    MxRecord::new(5, "first.example"),
                    MxRecord::new(50, "last.example"),
                ])
                .collect(),
        );
        let mut orders = HashSet::new();
        for seed in 0..40 {
            let hosts = resolve_mx("d.example", &answer, "me.example", seed).unwrap();
            assert_eq!(
                hosts,
                resolve_mx("d.example", &answer, "me.example", seed).unwrap()
            );
            assert_eq!(hosts[0].host(), "first.example");
            assert_eq!(hosts[7].host(), "last.example");
            let mut middle: Vec<_> = names(&hosts[1..7]).into_iter().map(String::from).collect();
            orders.insert(middle.clone());
            middle.sort();
            assert_eq!(
                middle,
                (0..6).map(|i| format!("mx{i}.example")).collect::<Vec<_>>()
            );
        }
        assert!(orders.len() > 10, "the seed does shuffle: {}", orders.len());
    }

    #[test]
    fn implicit_mx_and_missing_domains() {
        let implicit = resolve_mx("d.example", &MxAnswer::NoMx { has_address: true }, "me", 0);
        assert_eq!(implicit.unwrap(), vec![NextHop::new("d.example")]);
        for answer in [
            MxAnswer::NoMx { has_address: false },
            MxAnswer::NoSuchDomain,
        ] {
            let reply = resolve_mx("d.example", &answer, "me", 0).unwrap_err();
            assert_eq!(
                reply.to_string(),
                "550 5.1.2 Host or domain name not found: d.example"
            );
        }
        let reply = resolve_mx(
            "d.example",
            &MxAnswer::TryAgain("SERVFAIL\r\n".into()),
            "me",
            0,
        )
        .unwrap_err();
        assert_eq!(
            reply.to_string(),
            "451 4.4.3 DNS lookup for d.example failed: SERVFAIL"
        );
    }

    #[test]
    fn null_mx_is_permanent() {
        for exchange in [".", ""] {
            let answer = MxAnswer::Records(vec![MxRecord::new(0, exchange)]);
            let reply = resolve_mx("nomail.example", &answer, "me", 0).unwrap_err();
            assert_eq!(reply.code(), 556);
            assert_eq!(reply.enhanced().unwrap().to_string(), "5.1.10");
        }
        // A "." beside real hosts is skipped, not followed.
        let mixed = MxAnswer::Records(vec![MxRecord::new(0, "."), MxRecord::new(10, "mx.example")]);
        assert_eq!(
            names(&resolve_mx("d", &mixed, "me", 0).unwrap()),
            ["mx.example"]
        );
    }

    #[test]
    fn own_name_in_the_mx_list() {
        let answer = MxAnswer::Records(vec![
            MxRecord::new(10, "primary.example"),
            MxRecord::new(20, "Me.Example."),
            MxRecord::new(20, "peer.example"),
            MxRecord::new(30, "tertiary.example"),
        ]);
        // We are the backup: only the better-preferred host is left.
        let hosts = resolve_mx("d.example", &answer, "me.example", 0).unwrap();
        assert_eq!(names(&hosts), ["primary.example"]);
        let only_us = MxAnswer::Records(vec![MxRecord::new(10, "me.example")]);
        let reply = resolve_mx("d.example", &only_us, "me.example", 0).unwrap_err();
        assert_eq!(
            reply.to_string(),
            "554 5.4.6 Mail for d.example loops back to myself"
        );
    }
}
