//! POP3 commands (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH,
//! RFC 6856 UTF8): the types, a nom parser for one command line, and the
//! renderer.
//!
//! The parser sees one complete line without its CRLF (a session frames first
//! with [`postamt_wire::LineFramer`]), so a bad command is answered and the
//! stream stays in step. Keywords are case-insensitive; keywords and arguments
//! are separated by one space (RFC 1939 §3).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{tag, take_while_m_n, take_while1};
use nom::character::complete::digit1;
use nom::combinator::{all_consuming, opt};
use nom::sequence::preceded;
use postamt_wire::Secret;

use crate::error::CommandError;

/// Longest command line, CRLF included: 255 octets (RFC 2449 §4).
pub const MAX_COMMAND_LINE: usize = 255;

/// Longest argument: 40 octets (RFC 2449 §4). The password of `PASS`, which
/// RFC 1939 §7 lets hold spaces, and the initial response of `AUTH`, which
/// RFC 5034 §4 bounds only by the line, are held to the line limit instead.
pub const MAX_ARGUMENT: usize = 40;

/// A message number: a 1-based index into the maildrop as listed at login
/// (RFC 1939 §5). Built only from a value of 1 or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageNumber(NonZeroU32);

impl MessageNumber {
    /// The message number `n`, if `n` is at least 1.
    pub const fn new(n: u32) -> Option<Self> {
        match NonZeroU32::new(n) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The number, 1-based.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The 0-based index into a listing.
    pub const fn index(self) -> usize {
        self.0.get() as usize - 1
    }

    /// The number of the message at 0-based `index`, if it fits in 32 bits.
    pub fn from_index(index: usize) -> Option<Self> {
        u32::try_from(index.checked_add(1)?)
            .ok()
            .and_then(Self::new)
    }
}

impl fmt::Display for MessageNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageNumber {
    type Err = CommandError;

    /// Decimal digits only: `0` is [`CommandError::MessageNumberZero`], more
    /// than 32 bits [`CommandError::NumberTooLarge`], anything else
    /// [`CommandError::NotANumber`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        message_number(s.as_bytes())
    }
}

/// One POP3 command, borrowing its arguments from the line.
///
/// Secrets (the `PASS` password, the `APOP` digest, the `AUTH` initial
/// response) are [`Secret`]s, so `Debug` output never shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `USER name` (RFC 1939 §7).
    User(&'a str),
    /// `PASS string` (RFC 1939 §7); the string is the rest of the line.
    Pass(Secret<&'a str>),
    /// `APOP name digest` (RFC 1939 §7); the digest is 32 hex digits.
    Apop {
        /// The mailbox name.
        name: &'a str,
        /// The MD5 digest of timestamp and secret, in hex as sent.
        digest: Secret<&'a str>,
    },
    /// `QUIT`.
    Quit,
    /// `STAT`.
    Stat,
    /// `LIST [msg]`.
    List(Option<MessageNumber>),
    /// `RETR msg`.
    Retr(MessageNumber),
    /// `DELE msg`.
    Dele(MessageNumber),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `TOP msg n` (RFC 1939 §7).
    Top {
        /// The message.
        message: MessageNumber,
        /// How many lines of the body to send after the header.
        lines: u32,
    },
    /// `UIDL [msg]` (RFC 1939 §7).
    Uidl(Option<MessageNumber>),
    /// `CAPA` (RFC 2449 §5).
    Capa,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `AUTH mechanism [initial-response]` (RFC 5034 §4).
    Auth {
        /// The SASL mechanism name as sent.
        mechanism: &'a str,
        /// The base64 initial response; `=` stands for an empty one.
        initial_response: Option<Secret<&'a str>>,
    },
    /// `UTF8` (RFC 6856 §2).
    Utf8,
}

impl<'a> Command<'a> {
    /// Parses one command line, given without its CRLF.
    pub fn parse(line: &'a [u8]) -> Result<Self, CommandError> {
        if line.len() + 2 > MAX_COMMAND_LINE {
            return Err(CommandError::LineTooLong);
        }
        if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(CommandError::InvalidCharacters);
        }
        let Ok((args, word)) = keyword(line) else {
            return Err(CommandError::UnknownCommand);
        };
        if !args.is_empty() && args[0] != b' ' {
            return Err(CommandError::UnknownCommand);
        }
        let mut upper = [0u8; 4];
        for (u, b) in upper.iter_mut().zip(word) {
            *u = b.to_ascii_uppercase();
        }
        let upper = &upper[..word.len()];
        Ok(match upper {
            b"STAT" => no_args(args, Self::Stat)?,
            b"LIST" => Self::List(optional_number(args)?),
            b"RETR" => Self::Retr(one_number(args)?),
            b"DELE" => Self::Dele(one_number(args)?),
            b"NOOP" => no_args(args, Self::Noop)?,
            b"RSET" => no_args(args, Self::Rset)?,
            b"QUIT" => no_args(args, Self::Quit)?,
            b"UIDL" => Self::Uidl(optional_number(args)?),
            b"TOP" => {
                let (message, args) = required(args)?;
                let (lines, args) = required(args)?;
                end(args)?;
                Self::Top {
                    message: message_number(message)?,
                    lines: number(lines)?,
                }
            }
            b"USER" => {
                let (name, args) = required(args)?;
                end(args)?;
                Self::User(text(name)?)
            }
            b"PASS" => {
                // The whole rest of the line, spaces included (RFC 1939 §7).
                let password = match args {
                    [] | [b' '] => return Err(CommandError::MissingArgument),
                    [b' ', password @ ..] => password,
                    _ => return Err(CommandError::UnknownCommand),
                };
                Self::Pass(Secret::new(text(password)?))
            }
            b"APOP" => {
                let (name, args) = required(args)?;
                let (digest, args) = required(args)?;
                end(args)?;
                if digest.len() != 32 || !digest.iter().all(u8::is_ascii_hexdigit) {
                    return Err(CommandError::InvalidArgument);
                }
                Self::Apop {
                    name: text(name)?,
                    digest: Secret::new(text(digest)?),
                }
            }
            b"CAPA" => no_args(args, Self::Capa)?,
            b"STLS" => no_args(args, Self::Stls)?,
            b"UTF8" => no_args(args, Self::Utf8)?,
            b"AUTH" => {
                let (mechanism, args) = required(args)?;
                let initial_response = match next_arg(args, usize::MAX)? {
                    None => None,
                    Some((initial, args)) => {
                        end(args)?;
                        Some(Secret::new(text(initial)?))
                    }
                };
                Self::Auth {
                    mechanism: text(mechanism)?,
                    initial_response,
                }
            }
            _ => return Err(CommandError::UnknownCommand),
        })
    }

    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::User(_) => "USER",
            Self::Pass(_) => "PASS",
            Self::Apop { .. } => "APOP",
            Self::Quit => "QUIT",
            Self::Stat => "STAT",
            Self::List(_) => "LIST",
            Self::Retr(_) => "RETR",
            Self::Dele(_) => "DELE",
            Self::Noop => "NOOP",
            Self::Rset => "RSET",
            Self::Top { .. } => "TOP",
            Self::Uidl(_) => "UIDL",
            Self::Capa => "CAPA",
            Self::Stls => "STLS",
            Self::Auth { .. } => "AUTH",
            Self::Utf8 => "UTF8",
        }
    }

    /// Appends the command line, CRLF included, to `out` (secrets in clear:
    /// this is what a client sends).
    pub fn render(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.keyword().as_bytes());
        let mut arg = |a: &[u8]| {
            out.push(b' ');
            out.extend_from_slice(a);
        };
        match self {
            Self::User(name) => arg(name.as_bytes()),
            Self::Pass(password) => arg(password.expose().as_bytes()),
            Self::Apop { name, digest } => {
                arg(name.as_bytes());
                arg(digest.expose().as_bytes());
            }
            Self::List(Some(n)) | Self::Uidl(Some(n)) | Self::Retr(n) | Self::Dele(n) => {
                arg(n.to_string().as_bytes());
            }
            Self::Top { message, lines } => {
                arg(message.to_string().as_bytes());
                arg(lines.to_string().as_bytes());
            }
            Self::Auth {
                mechanism,
                initial_response,
            } => {
                arg(mechanism.as_bytes());
                if let Some(initial) = initial_response {
                    arg(initial.expose().as_bytes());
                }
            }
            Self::List(None)
            | Self::Uidl(None)
            | Self::Quit
            | Self::Stat
            | Self::Noop
            | Self::Rset
            | Self::Capa
            | Self::Stls
            | Self::Utf8 => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `keyword = 3*4VCHAR` (RFC 1939 §3; RFC 6856 adds the digit of `UTF8`).
fn keyword(input: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while_m_n(3, 4, |b: u8| b.is_ascii_alphanumeric()).parse(input)
}

/// ` arg`: one space, then one or more non-space octets.
fn argument(input: &[u8]) -> IResult<&[u8], &[u8]> {
    preceded(tag(&b" "[..]), take_while1(|b: u8| b != b' ')).parse(input)
}

/// The next argument and what follows it, if any; malformed spacing is an error.
/// An argument and the input after it.
type ArgAndRest<'a> = (&'a [u8], &'a [u8]);

fn next_arg(input: &[u8], limit: usize) -> Result<Option<ArgAndRest<'_>>, CommandError> {
    if input.is_empty() {
        return Ok(None);
    }
    match argument(input) {
        Ok((rest, arg)) if arg.len() <= limit => Ok(Some((arg, rest))),
        Ok(_) => Err(CommandError::ArgumentTooLong),
        Err(_) => Err(CommandError::InvalidArgument),
    }
}

fn required(input: &[u8]) -> Result<ArgAndRest<'_>, CommandError> {
    next_arg(input, MAX_ARGUMENT)?.ok_or(CommandError::MissingArgument)
}

fn end(input: &[u8]) -> Result<(), CommandError> {
    match next_arg(input, usize::MAX)? {
        None => Ok(()),
        Some(_) => Err(CommandError::TooManyArguments),
    }
}

fn no_args<'a>(input: &[u8], command: Command<'a>) -> Result<Command<'a>, CommandError> {
    end(input).map(|()| command)
}

fn one_number(input: &[u8]) -> Result<MessageNumber, CommandError> {
    let (arg, rest) = required(input)?;
    end(rest)?;
    message_number(arg)
}

fn optional_number(input: &[u8]) -> Result<Option<MessageNumber>, CommandError> {
    match next_arg(input, MAX_ARGUMENT)? {
        None => Ok(None),
        Some((arg, rest)) => {
            end(rest)?;
            message_number(arg).map(Some)
        }
    }
}

/// A decimal number of at most 32 bits.
fn number(arg: &[u8]) -> Result<u32, CommandError> {
    let parsed: IResult<&[u8], Option<&[u8]>> = all_consuming(opt(digit1)).parse(arg);
    match parsed {
        Ok((_, Some(digits))) => digits
            .iter()
            .try_fold(0u32, |n, &d| {
                n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
            })
            .ok_or(CommandError::NumberTooLarge),
        _ => Err(CommandError::NotANumber),
    }
}

fn message_number(arg: &[u8]) -> Result<MessageNumber, CommandError> {
    MessageNumber::new(number(arg)?).ok_or(CommandError::MessageNumberZero)
}

/// An argument as text: UTF-8 (RFC 6856 allows it in names and passwords).
fn text(arg: &[u8]) -> Result<&str, CommandError> {
    std::str::from_utf8(arg).map_err(|_| CommandError::InvalidCharacters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command<'_>, CommandError> {
        Command::parse(line.as_bytes())
    }

    fn n(v: u32) -> MessageNumber {
        MessageNumber::new(v).unwrap()
    }

    #[test]
    fn rfc_1939_examples() {
        assert_eq!(parse("USER mrose"), Ok(Command::User("mrose")));
        assert_eq!(
            parse("PASS secret"),
            Ok(Command::Pass(Secret::new("secret")))
        );
        assert_eq!(parse("STAT"), Ok(Command::Stat));
        assert_eq!(parse("LIST"), Ok(Command::List(None)));
        assert_eq!(parse("LIST 2"), Ok(Command::List(Some(n(2)))));
        assert_eq!(parse("RETR 1"), Ok(Command::Retr(n(1))));
        assert_eq!(parse("DELE 1"), Ok(Command::Dele(n(1))));
        assert_eq!(parse("NOOP"), Ok(Command::Noop));
        assert_eq!(parse("RSET"), Ok(Command::Rset));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
        assert_eq!(
            parse("TOP 1 10"),
            Ok(Command::Top {
                message: n(1),
                lines: 10
            })
        );
        assert_eq!(
            parse("TOP 1 0"),
            Ok(Command::Top {
                message: n(1),
                lines: 0
            })
        );
        assert_eq!(parse("UIDL"), Ok(Command::Uidl(None)));
        assert_eq!(parse("UIDL 2"), Ok(Command::Uidl(Some(n(2)))));
        assert_eq!(
            parse("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Ok(Command::Apop {
                name: "mrose",
                digest: Secret::new("c4c9334bac560ecc979e58001b3e22fb")
            })
        );
    }

    #[test]
    fn extensions() {
        assert_eq!(parse("CAPA"), Ok(Command::Capa));
        assert_eq!(parse("STLS"), Ok(Command::Stls));
        assert_eq!(parse("UTF8"), Ok(Command::Utf8));
        assert_eq!(
            parse("AUTH PLAIN"),
            Ok(Command::Auth {
                mechanism: "PLAIN",
                initial_response: None
            })
        );
        let long = "A".repeat(200);
        assert_eq!(
            parse(&format!("AUTH PLAIN {long}")),
            Ok(Command::Auth {
                mechanism: "PLAIN",
                initial_response: Some(Secret::new(&long))
            })
        );
        assert_eq!(parse("AUTH"), Err(CommandError::MissingArgument));
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse("stat"), Ok(Command::Stat));
        assert_eq!(parse("LiSt 3"), Ok(Command::List(Some(n(3)))));
        assert_eq!(parse("utf8"), Ok(Command::Utf8));
    }

    #[test]
    fn pass_takes_the_rest_of_the_line() {
        assert_eq!(
            parse("PASS two words "),
            Ok(Command::Pass(Secret::new("two words ")))
        );
        assert_eq!(parse("PASS"), Err(CommandError::MissingArgument));
        assert_eq!(parse("PASS "), Err(CommandError::MissingArgument));
        assert_eq!(
            format!("{:?}", parse("PASS topSecret")),
            "Ok(Pass(Secret(<redacted>)))"
        );
    }

    #[test]
    fn message_numbers() {
        assert_eq!(parse("RETR 0"), Err(CommandError::MessageNumberZero));
        assert_eq!(parse("RETR 00"), Err(CommandError::MessageNumberZero));
        assert_eq!(parse("RETR 007"), Ok(Command::Retr(n(7))));
        assert_eq!(parse("RETR 4294967295"), Ok(Command::Retr(n(u32::MAX))));
        assert_eq!(parse("RETR 4294967296"), Err(CommandError::NumberTooLarge));
        assert_eq!(
            parse("RETR 99999999999999999999"),
            Err(CommandError::NumberTooLarge)
        );
        assert_eq!(parse("RETR x"), Err(CommandError::NotANumber));
        assert_eq!(parse("RETR -1"), Err(CommandError::NotANumber));
        assert_eq!(parse("RETR +1"), Err(CommandError::NotANumber));
        assert_eq!(parse("RETR 1x"), Err(CommandError::NotANumber));
        assert_eq!(parse("RETR"), Err(CommandError::MissingArgument));
        assert_eq!(parse("RETR 1 2"), Err(CommandError::TooManyArguments));
        assert_eq!(parse("TOP 1"), Err(CommandError::MissingArgument));
        assert_eq!(parse("TOP 1 -1"), Err(CommandError::NotANumber));
        assert_eq!(parse("TOP 0 1"), Err(CommandError::MessageNumberZero));
        assert_eq!("12".parse::<MessageNumber>(), Ok(n(12)));
        assert_eq!(MessageNumber::from_index(0), Some(n(1)));
        assert_eq!(n(3).index(), 2);
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(parse(""), Err(CommandError::UnknownCommand));
        assert_eq!(parse("HELO x"), Err(CommandError::UnknownCommand));
        assert_eq!(parse("STATS"), Err(CommandError::UnknownCommand));
        assert_eq!(parse("ST"), Err(CommandError::UnknownCommand));
        assert_eq!(parse(" STAT"), Err(CommandError::UnknownCommand));
        assert_eq!(parse("STAT "), Err(CommandError::InvalidArgument));
        assert_eq!(parse("STAT 1"), Err(CommandError::TooManyArguments));
        assert_eq!(parse("LIST  1"), Err(CommandError::InvalidArgument));
        assert_eq!(parse("USER a\tb"), Err(CommandError::InvalidCharacters));
        assert_eq!(
            Command::parse(b"USER \xff"),
            Err(CommandError::InvalidCharacters)
        );
        assert_eq!(
            parse(&format!("USER {}", "u".repeat(41))),
            Err(CommandError::ArgumentTooLong)
        );
        assert_eq!(
            parse(&format!("USER {}", "u".repeat(40))),
            Ok(Command::User(&"u".repeat(40)))
        );
        // 255 octets with CRLF fit; 256 do not.
        assert!(parse(&format!("PASS {}", "p".repeat(248))).is_ok());
        assert_eq!(
            parse(&format!("PASS {}", "p".repeat(249))),
            Err(CommandError::LineTooLong)
        );
        assert_eq!(parse("APOP mrose c4c9"), Err(CommandError::InvalidArgument));
        assert_eq!(parse("APOP mrose"), Err(CommandError::MissingArgument));
    }

    #[test]
    fn renders() {
        for line in [
            "USER mrose",
            "PASS two words",
            "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
            "LIST",
            "LIST 1",
            "TOP 3 0",
            "UIDL 9",
            "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=",
            "AUTH LOGIN",
            "UTF8",
        ] {
            let mut out = Vec::new();
            parse(line).unwrap().render(&mut out);
            assert_eq!(out, format!("{line}\r\n").as_bytes());
        }
        let mut out = Vec::new();
        parse("retr 01").unwrap().render(&mut out);
        assert_eq!(out, b"RETR 1\r\n");
    }
}
