//! Postfix's XCLIENT extension (`XCLIENT_README`): a trusted proxy or filter
//! in front of the server tells it who the real client is, so access
//! decisions, `Received:` lines and logs name that client, not the proxy.
//!
//! `XCLIENT attribute=value ...`, values in xtext (RFC 3461 §4), attribute
//! names in any case. Only attributes sent change; the others keep what the
//! server believed before.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::address::{Domain, has_steering_chars};
use crate::command::{decode_xtext, encode_xtext, is_xtext};
use crate::error::CommandError;

/// The attributes the server supports, as its EHLO reply lists them after
/// the `XCLIENT` keyword (Postfix's order).
pub const XCLIENT_ATTRIBUTES: &str = "NAME ADDR PROTO HELO LOGIN PORT DESTADDR DESTPORT";

/// `[UNAVAILABLE]`: the proxy does not know the value.
const UNAVAILABLE: &str = "[UNAVAILABLE]";
/// `[TEMPUNAVAIL]`: the client's host name lookup failed for now (NAME only).
const TEMPUNAVAIL: &str = "[TEMPUNAVAIL]";

/// The longest NAME, HELO or LOGIN value after xtext decoding; Postfix's
/// limit for host names and HELO arguments.
const MAX_TEXT: usize = 255;

/// One attribute's value as the proxy sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XclientValue<T> {
    /// The value.
    Known(T),
    /// `[UNAVAILABLE]`: the proxy does not know it; forget the old one.
    Unavailable,
    /// `[TEMPUNAVAIL]` (NAME only): the client's name lookup failed for now.
    TempUnavailable,
}

impl<T> XclientValue<T> {
    /// The value, when the proxy knows it.
    pub fn known(&self) -> Option<&T> {
        match self {
            Self::Known(v) => Some(v),
            _ => None,
        }
    }
}

/// The protocol the real client spoke to the proxy (`PROTO=`), for the
/// `with` clause of `Received:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientProtocol {
    /// `SMTP`: the client said HELO.
    Smtp,
    /// `ESMTP`: the client said EHLO.
    Esmtp,
}

/// The attributes of one XCLIENT command. `None`: not sent, keep what was
/// known before. `login` is the exception: after XCLIENT the client is
/// authenticated exactly when `login` names a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Xclient {
    /// `NAME=`: the client's host name (a name, never an address literal).
    pub name: Option<XclientValue<Domain<'static>>>,
    /// `ADDR=`: the client's address (`IPv6:` before an IPv6 one).
    pub addr: Option<XclientValue<IpAddr>>,
    /// `PORT=`: the client's TCP port.
    pub port: Option<XclientValue<u16>>,
    /// `PROTO=`: SMTP or ESMTP.
    pub proto: Option<XclientValue<ClientProtocol>>,
    /// `HELO=`: what the client gave in HELO or EHLO.
    pub helo: Option<XclientValue<String>>,
    /// `LOGIN=`: the user the client authenticated as at the proxy.
    pub login: Option<XclientValue<String>>,
    /// `DESTADDR=`: the address the client connected to.
    pub destaddr: Option<XclientValue<IpAddr>>,
    /// `DESTPORT=`: the port the client connected to.
    pub destport: Option<XclientValue<u16>>,
}

impl Xclient {
    /// No attributes; set the fields, then render it with
    /// [`Command::Xclient`](crate::Command::Xclient).
    pub fn new() -> Self {
        Self::default()
    }

    /// The user the client is authenticated as after this command.
    pub fn login_name(&self) -> Option<&str> {
        self.login.as_ref()?.known().map(String::as_str)
    }

    /// Parses the arguments after the verb: `1*(SP name=value)`.
    pub(crate) fn parse(args: &str) -> Result<Self, CommandError> {
        let bad = CommandError::BadXclient;
        if !args.starts_with(' ') {
            return Err(bad);
        }
        let mut x = Self::default();
        let mut any = false;
        for item in args.split(' ').filter(|s| !s.is_empty()) {
            let (key, raw) = item.split_once('=').ok_or(bad)?;
            if raw.is_empty() || !is_xtext(raw.as_bytes()) {
                return Err(bad);
            }
            let value = decode_xtext(raw).ok_or(bad)?;
            let key = key.to_ascii_uppercase();
            match key.as_str() {
                "NAME" => set(&mut x.name, special(&value, true, name)?),
                "ADDR" => set(&mut x.addr, special(&value, false, address)?),
                "PORT" => set(&mut x.port, special(&value, false, port)?),
                "PROTO" => set(&mut x.proto, special(&value, false, protocol)?),
                "HELO" => set(&mut x.helo, special(&value, false, text)?),
                "LOGIN" => set(&mut x.login, special(&value, false, text)?),
                "DESTADDR" => set(&mut x.destaddr, special(&value, false, address)?),
                "DESTPORT" => set(&mut x.destport, special(&value, false, port)?),
                _ => Err(bad),
            }?;
            any = true;
        }
        if any { Ok(x) } else { Err(bad) }
    }

    /// Appends ` NAME=value ...` for the attributes that are set.
    pub(crate) fn render(&self, out: &mut Vec<u8>) {
        fn attr<T>(
            out: &mut Vec<u8>,
            key: &str,
            v: &Option<XclientValue<T>>,
            f: impl Fn(&T) -> String,
        ) {
            let Some(v) = v else { return };
            out.push(b' ');
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            let text = match v {
                XclientValue::Known(v) => encode_xtext(&f(v)),
                XclientValue::Unavailable => UNAVAILABLE.to_owned(),
                XclientValue::TempUnavailable => TEMPUNAVAIL.to_owned(),
            };
            out.extend_from_slice(text.as_bytes());
        }
        let ip = |ip: &IpAddr| match ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("IPV6:{ip}"),
        };
        attr(out, "NAME", &self.name, |d| d.as_str().to_owned());
        attr(out, "ADDR", &self.addr, ip);
        attr(out, "PORT", &self.port, u16::to_string);
        attr(out, "PROTO", &self.proto, |p| {
            match p {
                ClientProtocol::Smtp => "SMTP",
                ClientProtocol::Esmtp => "ESMTP",
            }
            .to_owned()
        });
        attr(out, "HELO", &self.helo, String::clone);
        attr(out, "LOGIN", &self.login, String::clone);
        attr(out, "DESTADDR", &self.destaddr, ip);
        attr(out, "DESTPORT", &self.destport, u16::to_string);
    }
}

fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::BadXclient);
    }
    *slot = Some(value);
    Ok(())
}

/// The special values first, then the attribute's own grammar.
fn special<T>(
    value: &str,
    temp: bool,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<XclientValue<T>, CommandError> {
    match value {
        UNAVAILABLE => Ok(XclientValue::Unavailable),
        TEMPUNAVAIL if temp => Ok(XclientValue::TempUnavailable),
        _ => parse(value)
            .map(XclientValue::Known)
            .ok_or(CommandError::BadXclient),
    }
}

fn name(value: &str) -> Option<Domain<'static>> {
    Domain::parse_str(value)
        .ok()
        .filter(|d| !d.is_address_literal())
        .map(Domain::into_owned)
}

/// An IPv4 address, or `IPv6:` (any case) and an IPv6 one, not in brackets.
fn address(value: &str) -> Option<IpAddr> {
    match value.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            value[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ => value.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// A decimal port, digits only.
fn port(value: &str) -> Option<u16> {
    if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn protocol(value: &str) -> Option<ClientProtocol> {
    if value.eq_ignore_ascii_case("SMTP") {
        Some(ClientProtocol::Smtp)
    } else if value.eq_ignore_ascii_case("ESMTP") {
        Some(ClientProtocol::Esmtp)
    } else {
        None
    }
}

/// HELO and LOGIN values end up in headers and logs: no controls, no
/// characters that steer a terminal, at most 255 octets.
fn text(value: &str) -> Option<String> {
    let ok = value.len() <= MAX_TEXT && !has_steering_chars(value);
    ok.then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn parse(line: &str) -> Result<Xclient, CommandError> {
        match Command::parse(line.as_bytes())? {
            Command::Xclient(x) => Ok(x),
            other => panic!("{other:?}"),
        }
    }

    fn render(x: &Xclient) -> String {
        let mut out = Vec::new();
        Command::Xclient(x.clone()).render(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_readme_example() {
        let x = parse("XCLIENT NAME=spike.porcupine.org ADDR=168.100.189.2").unwrap();
        assert_eq!(
            x.name,
            Some(XclientValue::Known("spike.porcupine.org".parse().unwrap()))
        );
        assert_eq!(
            x.addr,
            Some(XclientValue::Known("168.100.189.2".parse().unwrap()))
        );
        assert_eq!((x.port, x.helo, x.login), (None, None, None));
    }

    #[test]
    fn every_attribute_in_any_case() {
        let x = parse(
            "xclient name=[TEMPUNAVAIL] Addr=IPv6:2001:db8::1 PORT=4242 proto=esmtp \
             HELO=[UNAVAILABLE] LOGIN=anna+40example.org DESTADDR=192.0.2.25 DESTPORT=25  ",
        )
        .unwrap();
        assert_eq!(x.name, Some(XclientValue::TempUnavailable));
        assert_eq!(
            x.addr,
            Some(XclientValue::Known("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(x.port, Some(XclientValue::Known(4242)));
        assert_eq!(x.proto, Some(XclientValue::Known(ClientProtocol::Esmtp)));
        assert_eq!(x.helo, Some(XclientValue::Unavailable));
        assert_eq!(x.login_name(), Some("anna@example.org"));
        assert_eq!(
            x.destaddr,
            Some(XclientValue::Known("192.0.2.25".parse().unwrap()))
        );
        assert_eq!(x.destport, Some(XclientValue::Known(25)));
        assert_eq!(
            render(&x),
            "XCLIENT NAME=[TEMPUNAVAIL] ADDR=IPV6:2001:db8::1 PORT=4242 PROTO=ESMTP \
             HELO=[UNAVAILABLE] LOGIN=anna@example.org DESTADDR=192.0.2.25 DESTPORT=25\r\n"
        );
        assert_eq!(parse(render(&x).trim_end()).unwrap(), x);
    }

    #[test]
    fn xtext_values_are_decoded_and_encoded() {
        let x = parse("XCLIENT HELO=a+20b+2Bc LOGIN=x+3Dy").unwrap();
        assert_eq!(x.helo, Some(XclientValue::Known("a b+c".into())));
        assert_eq!(x.login_name(), Some("x=y"));
        assert_eq!(render(&x), "XCLIENT HELO=a+20b+2Bc LOGIN=x+3Dy\r\n");
    }

    #[test]
    fn bad_syntax() {
        for line in [
            "XCLIENT",
            "XCLIENT ",
            "XCLIENT NAME",
            "XCLIENT NAME=",
            "XCLIENT =a",
            "XCLIENT COLOR=blue",
            "XCLIENT NAME=a NAME=b",
            "XCLIENT NAME=a=b",
            "XCLIENT NAME=[192.0.2.1]",
            "XCLIENT NAME=bad_host",
            "XCLIENT ADDR=[TEMPUNAVAIL]",
            "XCLIENT ADDR=2001:db8::1",
            "XCLIENT ADDR=[192.0.2.1]",
            "XCLIENT ADDR=192.0.2.01",
            "XCLIENT ADDR=IPv6:192.0.2.1",
            "XCLIENT PORT=65536",
            "XCLIENT PORT=+25",
            "XCLIENT PORT=-1",
            "XCLIENT PROTO=LMTP",
            "XCLIENT HELO=a+0Db",
            "XCLIENT HELO=a+2b",
            "XCLIENT HELO=a+2",
            "XCLIENT LOGIN=+E2+80+AEevil",
            "XCLIENT LOGIN=+FF",
        ] {
            assert_eq!(
                Command::parse(line.as_bytes()),
                Err(CommandError::BadXclient),
                "{line}"
            );
        }
        assert_eq!(
            Command::parse(b"XCLIENTNAME=a"),
            Err(CommandError::UnknownCommand)
        );
        let long = format!("XCLIENT HELO={}", "h".repeat(256));
        assert_eq!(
            Command::parse(long.as_bytes()),
            Err(CommandError::BadXclient)
        );
    }
}
