//! A plain-text connection read line by line, for tests that type SMTP at
//! the toy server and compare the exact replies.
// Each test file uses what it needs of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One plain-text connection; each test file adds its own steps.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<TcpStream>,
    pub(crate) writer: TcpStream,
}

impl Conn {
    /// Connects; every read waits `timeout` at most.
    pub(crate) fn with_timeout(addr: SocketAddr, timeout: Duration) -> Self {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(timeout)).unwrap();
        Self {
            reader: BufReader::new(tcp.try_clone().unwrap()),
            writer: tcp,
        }
    }

    /// Reads and writes `tcp` (connected as the test needs); every read
    /// waits `timeout` at most.
    pub(crate) fn from_stream(tcp: TcpStream, timeout: Duration) -> Self {
        tcp.set_read_timeout(Some(timeout)).unwrap();
        Self {
            reader: BufReader::new(tcp.try_clone().unwrap()),
            writer: tcp,
        }
    }

    pub(crate) fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.writer.write_all(bytes.as_ref()).expect("send");
    }

    /// One line, CRLF included; empty when the server closed.
    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line
    }

    /// One SMTP reply, all its lines.
    pub(crate) fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let line = self.line();
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    }

    pub(crate) fn command(&mut self, text: &str) -> String {
        self.send(text);
        self.reply()
    }
}
