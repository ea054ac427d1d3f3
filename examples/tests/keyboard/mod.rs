//! Typing into a terminal program through a pseudo-terminal (`keyboard.py`,
//! Python's `pty` module), for tests of what a person at the keyboard sees.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// What the terminal showed: one entry per step, then what came after the
/// last step, and the program's exit status.
pub(crate) struct Screen {
    pub steps: Vec<Vec<u8>>,
    pub rest: Vec<u8>,
    pub status: i32,
}

/// One step: the keys typed (Enter is `\r`), then what the terminal must
/// show before the next step begins.
pub(crate) type Step = (Vec<u8>, Vec<u8>);

/// Runs `program` on a pseudo-terminal, types each step's keys and waits
/// (up to `wait` seconds a step) for its text; panics with what the
/// terminal showed when a text does not come.
pub(crate) fn type_into(program: &[&str], steps: &[Step], wait: u32) -> Screen {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keyboard.py");
    let mut command = Command::new("python3");
    command.arg(script).args(["--wait", &wait.to_string()]);
    for (keys, until) in steps {
        command.arg(hex(keys)).arg(hex(until));
    }
    let out = command.arg("--").args(program).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program:?} on a terminal: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), steps.len() + 2, "{stdout}");
    let status = lines.pop().unwrap().parse().unwrap();
    let rest = unhex(lines.pop().unwrap());
    Screen {
        steps: lines.into_iter().map(unhex).collect(),
        rest,
        status,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Shows bytes as text with control characters escaped, for messages.
pub(crate) fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
