//! What the client learned from the server's EHLO reply.

use postamt_wire::sasl::Mechanism;

use crate::reply::Reply;

/// What a server offered in its EHLO reply (or said to HELO).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The name the server gave itself: the first word of the reply's first
    /// line (`Domain` in RFC 5321 §4.1.1.1's `ehlo-ok-rsp`), as sent, not
    /// checked. Not the 220 greeting.
    pub domain: String,
    /// The free text after that name on the first line (`ehlo-greet`), often
    /// empty; for people, not for parsing.
    pub greet: String,
    /// Whether EHLO worked; after a HELO fallback nothing else is offered.
    pub extended: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// BINARYMIME (RFC 3030).
    pub binary_mime: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH mechanisms as advertised (RFC 4954), upper case.
    pub auth: Vec<String>,
    /// Every other keyword line, as sent.
    pub other: Vec<String>,
}

impl Capabilities {
    /// Reads the lines of a 250 reply to EHLO.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self {
            extended: true,
            ..Self::from_helo(reply)
        };
        let mut lines = reply.lines();
        lines.next();
        for line in lines {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let upper = keyword.to_ascii_uppercase();
            match upper.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binary_mime = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                "AUTH" => caps.add_auth(words),
                _ if upper.starts_with("AUTH=") => {
                    // The pre-standard form some servers still send.
                    let first = &keyword[5..];
                    caps.add_auth(std::iter::once(first).chain(words));
                }
                _ => caps.other.push(line.to_string()),
            }
        }
        caps
    }

    /// Reads the 250 reply to HELO: the server's name and nothing offered.
    pub fn from_helo(reply: &Reply) -> Self {
        let first = reply.lines().next().unwrap_or_default();
        let (domain, greet) = first.split_once(' ').unwrap_or((first, ""));
        Self {
            domain: domain.to_string(),
            greet: greet.trim_start().to_string(),
            ..Self::default()
        }
    }

    fn add_auth<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        for name in names {
            let name = name.to_ascii_uppercase();
            if !name.is_empty() && !self.auth.contains(&name) {
                self.auth.push(name);
            }
        }
    }

    /// Whether AUTH with `mechanism` is offered.
    pub fn offers_auth(&self, mechanism: Mechanism) -> bool {
        self.auth.iter().any(|m| m == mechanism.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_the_name_and_a_greeting() {
        let (reply, _) = Reply::parse(
            b"250-mx.kolleg.de Hello client.example [192.0.2.1]\r\n250-SIZE 1000\r\n250-AUTH=LOGIN\r\n250-auth plain LOGIN\r\n250 X-FOO bar\r\n",
        )
        .unwrap()
        .unwrap();
        let caps = Capabilities::from_ehlo(&reply);
        assert_eq!(caps.domain, "mx.kolleg.de");
        assert_eq!(caps.greet, "Hello client.example [192.0.2.1]");
        assert!(caps.extended);
        assert_eq!(caps.size, Some(1000));
        assert_eq!(caps.auth, ["LOGIN", "PLAIN"]);
        assert_eq!(caps.other, ["X-FOO bar"]);

        let (reply, _) = Reply::parse(b"250 old.example\r\n").unwrap().unwrap();
        let caps = Capabilities::from_helo(&reply);
        assert_eq!(
            (caps.domain.as_str(), caps.greet.as_str()),
            ("old.example", "")
        );
        assert!(!caps.extended && caps.auth.is_empty());
    }
}
