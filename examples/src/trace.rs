//! The live `C:`/`S:` transcript a teacher shows on the projector, with
//! passwords and SASL payloads masked.

/// Which protocol's secrets to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Smtp,
    Pop3,
}

/// Longest line kept whole in the transcript.
const MAX_LINE: usize = 1000;

#[derive(Debug)]
pub(crate) struct Trace {
    id: u64,
    protocol: Protocol,
    enabled: bool,
    client: Vec<u8>,
    server: Vec<u8>,
    /// The server asked for a SASL response: the next client line is secret.
    secret_next: bool,
}

impl Trace {
    pub(crate) fn new(id: u64, protocol: Protocol, enabled: bool) -> Self {
        Self {
            id,
            protocol,
            enabled,
            client: Vec::new(),
            server: Vec::new(),
            secret_next: false,
        }
    }

    fn tag(&self) -> String {
        let p = match self.protocol {
            Protocol::Smtp => "smtp",
            Protocol::Pop3 => "pop3",
        };
        format!("[{p} #{}]", self.id)
    }

    /// Something about the connection that is not protocol text.
    pub(crate) fn note(&self, text: &str) {
        if self.enabled {
            println!("{} -- {text}", self.tag());
        }
    }

    /// A failure worth a log line, printed whether tracing is on or not.
    pub(crate) fn error(&self, text: &str) {
        eprintln!("{} error: {text}", self.tag());
    }

    pub(crate) fn client(&mut self, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        for line in split_lines(&mut self.client, bytes) {
            let shown = if std::mem::take(&mut self.secret_next) {
                "****".to_string()
            } else {
                mask(self.protocol, &line)
            };
            println!("{} C: {shown}", self.tag());
        }
    }

    pub(crate) fn server(&mut self, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        for line in split_lines(&mut self.server, bytes) {
            self.secret_next = match self.protocol {
                Protocol::Smtp => line.starts_with("334"),
                Protocol::Pop3 => line.starts_with("+ ") || line == "+",
            };
            println!("{} S: {line}", self.tag());
        }
    }
}

/// Appends `bytes` to `partial` and returns the complete lines, without CRLF.
fn split_lines(partial: &mut Vec<u8>, bytes: &[u8]) -> Vec<String> {
    partial.extend_from_slice(bytes);
    let mut lines = Vec::new();
    while let Some(lf) = partial.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = partial.drain(..=lf).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(printable(&line));
    }
    if partial.len() > MAX_LINE {
        lines.push(format!("{} [...]", printable(&partial[..MAX_LINE])));
        partial.clear();
    }
    lines
}

fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Hides what follows a command that carries a secret.
fn mask(protocol: Protocol, line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let verb = words[0].to_ascii_uppercase();
    let keep = match (protocol, verb.as_str()) {
        (Protocol::Smtp, "AUTH") | (Protocol::Pop3, "AUTH" | "APOP") => 2,
        (Protocol::Pop3, "PASS") => 1,
        _ => return line.to_string(),
    };
    if words.len() <= keep {
        return line.to_string();
    }
    format!("{} ****", words[..keep].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask(Protocol::Pop3, "PASS topSecret"), "PASS ****");
        assert_eq!(mask(Protocol::Pop3, "pass top secret"), "pass ****");
        assert_eq!(
            mask(Protocol::Pop3, "APOP bob c4c9334bac560ecc979e58001b3e22fb"),
            "APOP bob ****"
        );
        assert_eq!(
            mask(Protocol::Smtp, "AUTH PLAIN AGFubmEAZ2VoZWlt"),
            "AUTH PLAIN ****"
        );
        assert_eq!(mask(Protocol::Smtp, "AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(mask(Protocol::Smtp, "PASS x"), "PASS x");
        assert_eq!(mask(Protocol::Pop3, "USER bob"), "USER bob");
    }

    #[test]
    fn lines_are_split_across_reads() {
        let mut partial = Vec::new();
        assert!(split_lines(&mut partial, b"HEL").is_empty());
        assert_eq!(
            split_lines(&mut partial, b"O a\r\nNOOP\r\nQ"),
            ["HELO a", "NOOP"]
        );
        assert_eq!(partial, b"Q");
    }
}
