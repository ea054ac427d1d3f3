//! Runs every `tests/transcripts/*.txt` through a `ServerSession` whole, byte
//! by byte and at random splits (of the client's bytes and of the message
//! chunks), with the default output high-water mark and with one so small that
//! every response waits for the output to drain. All runs must give exactly the
//! transcript's bytes and events.

mod support;

use std::path::Path;

use postamt_pop3::Session;
use support::{Split, parse_transcript, run};

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\u{21b5}\n")
}

fn check_file(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let t = parse_transcript(&text);
    let name = path.file_name().unwrap().to_string_lossy();
    let mut splits = vec![Split::Whole, Split::Bytewise];
    splits.extend((1..=20).map(Split::Random));
    for high_water in [256 * 1024, 1] {
        for split in &splits {
            let app = run(&t, split.clone(), high_water);
            assert!(
                app.output == t.expected_output,
                "{name}, {split:?}, high water {high_water}: output differs\n--- got:\n{}\n--- expected:\n{}",
                show(&app.output),
                show(&t.expected_output)
            );
            assert_eq!(app.events, t.expected_events, "{name}, {split:?}: events");
            if let Some(closed) = t.expect_closed {
                assert_eq!(app.session.is_closed(), closed, "{name}, {split:?}: closed");
            }
            assert!(app.max_buffered_input <= 64 * 1024, "{name}: input buffer");
        }
    }
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "transcripts missing: {files:?}");
    for file in files {
        check_file(&file);
    }
}
