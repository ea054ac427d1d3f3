//! One-line facts about a message for listings and logs.

use mail_parser::{Address, MessageParser};

/// The headers a listing or a log line shows. A header that is missing or
/// cannot be parsed is `None`; nothing here fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// `From`, as `Name <address>` or the bare address.
    pub from: Option<String>,
    /// `To`, every address, separated by `, `.
    pub to: Option<String>,
    /// `Subject`, with encoded words decoded.
    pub subject: Option<String>,
    /// `Date`, normalised to RFC 5322 form.
    pub date: Option<String>,
}

/// Summarises a message from its bytes; only the header section is read, so
/// passing the first few kilobytes of a large message is enough.
pub fn summary(bytes: &[u8]) -> Summary {
    let Some(message) = MessageParser::new().parse_headers(bytes) else {
        return Summary::default();
    };
    Summary {
        from: message.from().and_then(render),
        to: message.to().and_then(render),
        subject: message.subject().map(str::to_owned),
        date: message.date().map(|date| date.to_rfc822()),
    }
}

fn render(address: &Address<'_>) -> Option<String> {
    let parts: Vec<String> = address
        .iter()
        .filter_map(|addr| match (addr.name(), addr.address()) {
            (Some(name), Some(email)) => Some(format!("{name} <{email}>")),
            (None, Some(email)) => Some(email.to_owned()),
            (Some(name), None) => Some(name.to_owned()),
            (None, None) => None,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_ordinary_headers() {
        let message = b"From: Anna Schmidt <anna@kolleg.de>\r\n\
            To: bob@kolleg.de, Carl <carl@kolleg.de>\r\n\
            Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
            Date: Tue, 1 Jul 2025 10:52:37 +0200\r\n\
            \r\n\
            Hallo Bob\r\n";
        assert_eq!(
            summary(message),
            Summary {
                from: Some("Anna Schmidt <anna@kolleg.de>".into()),
                to: Some("bob@kolleg.de, Carl <carl@kolleg.de>".into()),
                subject: Some("Grüße".into()),
                date: Some("Tue, 1 Jul 2025 10:52:37 +0200".into()),
            }
        );
    }

    #[test]
    fn tolerates_broken_and_missing_headers() {
        assert_eq!(summary(b""), Summary::default());
        assert_eq!(summary(b"\xff\xfe\x00garbage\r\n\r\n").subject, None);
        let broken = summary(b"From: <<<\nDate: yesterday\nSubject: ok\n\nbody");
        assert_eq!(broken.subject.as_deref(), Some("ok"));
        assert_eq!(broken.date, None);
        let bare = summary(b"Subject: only\n\n");
        assert_eq!((bare.from, bare.to), (None, None));
    }
}
