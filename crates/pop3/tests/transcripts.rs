//! Runs every `tests/transcripts/*.txt` through a `ServerSession` with the
//! shared harness: whole, byte by byte and at twenty random splits (of the
//! client's bytes and of the message chunks), with the default output
//! high-water mark and with one so small that every response waits for the
//! output to drain. Every run must give the transcript's bytes and events
//! after each action, and its end state.

mod support;

use postamt_transcript::{Setting, Split, Transcript, check, files};
use support::App;

#[test]
fn transcripts() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transcripts");
    let names = files(dir);
    assert!(names.len() >= 34, "transcripts missing: {names:?}");
    for name in names {
        let t = Transcript::load(dir, &name);
        check::<App>(&t, &Split::all(20));
        let mut tiny = t.clone();
        tiny.settings.push(Setting {
            key: "high-water".into(),
            value: "1".into(),
            line: 0,
        });
        check::<App>(&tiny, &Split::all(20));
    }
}
