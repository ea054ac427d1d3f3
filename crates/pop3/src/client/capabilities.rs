//! What the client learned from the server's CAPA response.

use postamt_wire::sasl::Mechanism;

/// What a server offered in its CAPA response (RFC 2449 §6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Whether the server answered CAPA at all; a server of RFC 1939 alone
    /// does not, and then nothing else here is known.
    pub capa: bool,
    /// `USER`: login with USER and PASS.
    pub user: bool,
    /// `SASL`: the mechanisms for AUTH, upper case (RFC 5034 §6).
    pub sasl: Vec<String>,
    /// `STLS` (RFC 2595 §4).
    pub stls: bool,
    /// `PIPELINING`: commands may be sent without waiting (RFC 2449 §6.6).
    pub pipelining: bool,
    /// `TOP`.
    pub top: bool,
    /// `UIDL`.
    pub uidl: bool,
    /// `UTF8` (RFC 6856 §2).
    pub utf8: bool,
    /// `RESP-CODES`: `-ERR` responses carry response codes (RFC 2449 §6.4).
    pub resp_codes: bool,
    /// `AUTH-RESP-CODE`: login failures carry `[AUTH]` (RFC 3206 §6).
    pub auth_resp_code: bool,
    /// `IMPLEMENTATION`'s text, if sent.
    pub implementation: Option<String>,
    /// `EXPIRE`'s arguments, if sent (RFC 2449 §6.7).
    pub expire: Option<String>,
    /// `LOGIN-DELAY`'s arguments, if sent (RFC 2449 §6.5).
    pub login_delay: Option<String>,
    /// Every other capability line, as sent.
    pub other: Vec<String>,
}

impl Capabilities {
    /// Reads the lines of a CAPA listing, each without its CRLF.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut caps = Self {
            capa: true,
            ..Self::default()
        };
        for line in lines {
            let line = String::from_utf8_lossy(line);
            let line = line.trim();
            let (keyword, args) = match line.split_once(' ') {
                Some((k, a)) => (k, a.trim()),
                None => (line, ""),
            };
            match keyword.to_ascii_uppercase().as_str() {
                "" => {}
                "USER" => caps.user = true,
                "SASL" => {
                    for name in args.split_ascii_whitespace() {
                        let name = name.to_ascii_uppercase();
                        if !caps.sasl.contains(&name) {
                            caps.sasl.push(name);
                        }
                    }
                }
                "STLS" => caps.stls = true,
                "PIPELINING" => caps.pipelining = true,
                "TOP" => caps.top = true,
                "UIDL" => caps.uidl = true,
                "UTF8" => caps.utf8 = true,
                "RESP-CODES" => caps.resp_codes = true,
                "AUTH-RESP-CODE" => caps.auth_resp_code = true,
                "IMPLEMENTATION" => caps.implementation = Some(args.to_string()),
                "EXPIRE" => caps.expire = Some(args.to_string()),
                "LOGIN-DELAY" => caps.login_delay = Some(args.to_string()),
                _ => caps.other.push(line.to_string()),
            }
        }
        caps
    }

    /// Whether AUTH with `mechanism` is offered.
    pub fn offers_sasl(&self, mechanism: Mechanism) -> bool {
        self.sasl.iter().any(|m| m == mechanism.as_str())
    }
}
