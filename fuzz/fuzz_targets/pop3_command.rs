//! The POP3 command and response parsers on arbitrary bytes.
//!
//! Checks: no panic; a parsed command renders to a line that parses to the
//! same command and renders to the same bytes again (a fixed point); a parsed
//! response line renders and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postamt_pop3::{Command, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = Command::parse(data) {
        let mut line = Vec::new();
        command.render(&mut line);
        assert!(line.ends_with(b"\r\n"));
        let again = Command::parse(&line[..line.len() - 2]).expect("a rendered command parses");
        assert_eq!(again, command);
        let mut twice = Vec::new();
        again.render(&mut twice);
        assert_eq!(twice, line);
    }
    if let Ok(Some((response, used))) = Response::parse(data) {
        assert!(used <= data.len() && data[..used].ends_with(b"\r\n"));
        let mut line = Vec::new();
        response.render(&mut line);
        let (again, n) = Response::parse(&line)
            .expect("a rendered response parses")
            .expect("and is complete");
        assert_eq!(n, line.len());
        // Text opening with `[` may read as a code the second time; the
        // rendering is then still a fixed point.
        let mut twice = Vec::new();
        again.render(&mut twice);
        assert_eq!(twice, line);
    }
});
