//! `Command::parse` on arbitrary bytes never panics, and whatever it accepts
//! renders to a strict command line that parses back to a command rendering
//! to the same bytes (render is a fixed point after one parse).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postamt_smtp::Command;

fuzz_target!(|data: &[u8]| {
    let Ok(command) = Command::parse(data) else {
        return;
    };
    let mut wire = Vec::new();
    command.render(&mut wire);
    let Some(line) = wire.strip_suffix(b"\r\n") else {
        panic!("render without CRLF: {wire:?}");
    };
    // The line framer never hands over CR or LF, so a rendered command made
    // from such a line must not carry one either: it would forge a second
    // command on the wire.
    if !data.contains(&b'\r') && !data.contains(&b'\n') {
        assert!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "render of {data:?} holds a line break: {wire:?}"
        );
    }
    let again = Command::parse(line).unwrap_or_else(|e| {
        panic!(
            "{:?} parsed as {command:?}, rendered as {:?}, which fails to parse: {e}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&wire)
        )
    });
    let mut wire2 = Vec::new();
    again.render(&mut wire2);
    assert_eq!(
        String::from_utf8_lossy(&wire),
        String::from_utf8_lossy(&wire2),
        "render(parse(render(parse(input)))) differs for input {:?}",
        String::from_utf8_lossy(data)
    );
    // Once in strict form the command is stable as a value, too.
    let third = Command::parse(&wire2[..wire2.len() - 2]).expect("parsed before");
    assert_eq!(again, third);
});
