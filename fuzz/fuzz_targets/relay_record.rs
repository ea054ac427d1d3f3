//! `QueuedMessage::from_record` fed arbitrary bytes: a queue record read
//! back after a crash or written by hand never panics; a record it accepts
//! writes back to a record that reads back to the same message, and that
//! record is a fixed point (writing it again gives the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postamt_relay::{MessageId, QueuedMessage};

fuzz_target!(|data: &[u8]| {
    let id = MessageId::new("m00000001");
    let Ok(message) = QueuedMessage::from_record(id.clone(), data) else {
        return;
    };
    let written = message.to_record();
    let again = QueuedMessage::from_record(id, &written).expect("a written record reads back");
    assert_eq!(again, message, "the record did not round-trip");
    assert_eq!(again.to_record(), written, "writing is not stable");
});
