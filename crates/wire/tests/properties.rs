//! Properties of the shared codecs over arbitrary bytes and arbitrary splits.

use postamt_wire::{BareLineEndings, Decoded, DotDecoder, DotEncoder, Frame, LineFramer};
use proptest::prelude::*;

/// What the encoder promises to preserve: the bytes with every line end made CRLF,
/// and a CRLF added at the end when missing.
fn normalized(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn splits(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points
}

fn bytes_with_line_ends() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'.'),
            2 => Just(b'\r'),
            2 => Just(b'\n'),
        ],
        0..400,
    )
}

proptest! {
    #[test]
    fn stuff_then_decode_is_identity(
        input in bytes_with_line_ends(),
        enc_cuts in prop::collection::vec(any::<usize>(), 0..8),
        dec_cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut encoder = DotEncoder::new();
        let mut wire = Vec::new();
        let points = splits(input.len(), &enc_cuts);
        for w in points.windows(2) {
            encoder.encode(&input[w[0]..w[1]], &mut wire);
        }
        encoder.finish(&mut wire);
        let marker = wire.len();
        wire.extend_from_slice(b"NEXT\r\n");

        let mut decoder = DotDecoder::new(BareLineEndings::Reject, usize::MAX);
        let mut out = Vec::new();
        let mut end = None;
        let points = splits(wire.len(), &dec_cuts);
        for w in points.windows(2) {
            match decoder.decode(&wire[w[0]..w[1]], &mut out) {
                Decoded::Incomplete => {}
                Decoded::Complete { consumed } => {
                    end = Some(w[0] + consumed);
                    break;
                }
            }
        }
        prop_assert_eq!(end, Some(marker));
        prop_assert!(!decoder.saw_bare_line_ending());
        prop_assert_eq!(out, normalized(&input));
    }

    #[test]
    fn decoder_output_does_not_depend_on_splits(
        input in bytes_with_line_ends(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        normalize in any::<bool>(),
    ) {
        let policy = if normalize { BareLineEndings::Normalize } else { BareLineEndings::Reject };
        let mut whole = DotDecoder::new(policy, 80);
        let mut expected = Vec::new();
        let expected_end = whole.decode(&input, &mut expected);

        let mut split = DotDecoder::new(policy, 80);
        let mut out = Vec::new();
        let mut end = Decoded::Incomplete;
        let points = splits(input.len(), &cuts);
        for w in points.windows(2) {
            if let Decoded::Complete { consumed } = split.decode(&input[w[0]..w[1]], &mut out) {
                end = Decoded::Complete { consumed: w[0] + consumed };
                break;
            }
        }
        prop_assert_eq!(end, expected_end);
        prop_assert_eq!(out, expected);
        prop_assert_eq!(split.saw_bare_line_ending(), whole.saw_bare_line_ending());
        prop_assert_eq!(split.saw_long_line(), whole.saw_long_line());
    }

    #[test]
    fn framer_never_buffers_past_its_limit(
        input in bytes_with_line_ends(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        limit in 2usize..40,
    ) {
        let mut framer = LineFramer::new(limit);
        let mut buf = Vec::new();
        let points = splits(input.len(), &cuts);
        let mut consumed_total = 0;
        for w in points.windows(2) {
            buf.extend_from_slice(&input[w[0]..w[1]]);
            loop {
                let used = match framer.next(&buf) {
                    Frame::Incomplete => break,
                    Frame::Line { line, consumed, .. } => {
                        prop_assert!(consumed <= limit);
                        prop_assert_eq!(&buf[line.len()..consumed], b"\r\n");
                        consumed
                    }
                    Frame::Discarded { consumed } | Frame::TooLong { consumed } => consumed,
                };
                prop_assert!(used > 0);
                consumed_total += used;
                buf.drain(..used);
            }
            prop_assert!(buf.len() < limit.max(1) + 1);
        }
        prop_assert_eq!(consumed_total + buf.len(), input.len());
    }
}

/// Runs `decode_checked` over `input` cut at `points`; returns the output, and
/// where it stopped (absolute position and why) or where the message ended.
fn checked(input: &[u8], points: &[usize], max_line: usize) -> (Vec<u8>, String) {
    use postamt_wire::Checked;
    let mut d = DotDecoder::new(BareLineEndings::Reject, max_line);
    let mut out = Vec::new();
    for w in points.windows(2) {
        match d.decode_checked(&input[w[0]..w[1]], &mut out) {
            Checked::Decoded(Decoded::Incomplete) => {}
            Checked::Decoded(Decoded::Complete { consumed }) => {
                return (out, format!("end at {}", w[0] + consumed));
            }
            Checked::Violation { consumed, kind } => {
                return (out, format!("{kind:?} at {}", w[0] + consumed));
            }
        }
    }
    (out, "incomplete".to_string())
}

proptest! {
    #[test]
    fn violations_are_found_at_the_same_byte_however_split(
        input in bytes_with_line_ends(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max_line in 2usize..30,
    ) {
        let whole = checked(&input, &[0, input.len()], max_line);
        let bytewise: Vec<usize> = (0..=input.len()).collect();
        prop_assert_eq!(&checked(&input, &bytewise, max_line), &whole);
        let points = splits(input.len(), &cuts);
        prop_assert_eq!(&checked(&input, &points, max_line), &whole);
    }
}

/// The checker over `text` cut at `points`, then ended: the output and where
/// a rule broke.
fn line_checked(
    policy: BareLineEndings,
    text: &[u8],
    points: &[usize],
    max_line: usize,
) -> (Vec<u8>, String) {
    use postamt_wire::{Checked, LineChecker};
    let mut c = LineChecker::new(policy, max_line);
    let mut out = Vec::new();
    for w in points.windows(2) {
        match c.check(&text[w[0]..w[1]], &mut out) {
            Checked::Decoded(Decoded::Incomplete) => {}
            Checked::Decoded(Decoded::Complete { .. }) => return (out, "ended".into()),
            Checked::Violation { consumed, kind } => {
                return (out, format!("{kind:?} at {}", w[0] + consumed));
            }
        }
    }
    match c.finish(&mut out) {
        Some(kind) => (out, format!("{kind:?} at {}", text.len())),
        None => (out, "fine".into()),
    }
}

proptest! {
    /// The BDAT path and the DATA path are one machinery: the same lines
    /// (with no dot to unstuff) give the same text and break the same rule
    /// at the same octet, under either policy, however the BDAT text is cut.
    #[test]
    fn line_checker_agrees_with_the_data_decoder(
        body in bytes_with_line_ends(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        // From 3: DATA's own end line `.` CRLF is a line the decoder
        // measures, and BDAT has none to compare it with.
        max_line in 3usize..30,
        normalize in any::<bool>(),
    ) {
        use postamt_wire::Checked;
        let policy = if normalize { BareLineEndings::Normalize } else { BareLineEndings::Reject };
        let mut text: Vec<u8> = body.iter().map(|&b| if b == b'.' { b',' } else { b }).collect();
        text.extend_from_slice(b"\r\n");
        let mut data = text.clone();
        data.extend_from_slice(b".\r\n");
        let mut d = DotDecoder::new(policy, max_line);
        let mut want = Vec::new();
        let stop = match d.decode_checked(&data, &mut want) {
            Checked::Decoded(Decoded::Complete { consumed }) => {
                prop_assert_eq!(consumed, data.len());
                "fine".to_string()
            }
            Checked::Decoded(Decoded::Incomplete) => "incomplete".to_string(),
            Checked::Violation { consumed, kind } => format!("{kind:?} at {consumed}"),
        };
        let want = (want, stop);
        prop_assert_eq!(&line_checked(policy, &text, &[0, text.len()], max_line), &want);
        let bytewise: Vec<usize> = (0..=text.len()).collect();
        prop_assert_eq!(&line_checked(policy, &text, &bytewise, max_line), &want);
        let points = splits(text.len(), &cuts);
        prop_assert_eq!(&line_checked(policy, &text, &points, max_line), &want);
    }
}

/// Bytes rich in line ends, dots and the cases the rule names.
fn line_end_text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b'.'),
            Just(b'a'),
            any::<u8>()
        ],
        0..300,
    )
}

proptest! {
    /// The encoder, the counter and the normalizer keep one rule: the text a
    /// client decodes from the encoder's output is the normalizer's output,
    /// `crlf_size` octets long, however the input is split; and normalized
    /// text goes through the encoder with its line ends unchanged.
    #[test]
    fn encoder_counter_and_normalizer_agree(text in line_end_text(), step in 1usize..40) {
        let mut encoder = DotEncoder::new();
        let mut wire = Vec::new();
        let mut size = postamt_wire::CrlfSize::new();
        let mut normalizer = postamt_wire::CrlfNormalizer::new();
        let mut normal = Vec::new();
        for chunk in text.chunks(step) {
            encoder.encode(chunk, &mut wire);
            size.update(chunk);
            normalizer.push(chunk, &mut normal);
        }
        encoder.finish(&mut wire);
        normalizer.finish(&mut normal);
        let mut decoded = Vec::new();
        let mut decoder = DotDecoder::new(BareLineEndings::Reject, usize::MAX);
        prop_assert_eq!(decoder.decode(&wire, &mut decoded), Decoded::Complete { consumed: wire.len() });
        prop_assert!(!decoder.saw_bare_line_ending());
        prop_assert_eq!(&decoded, &normal);
        prop_assert_eq!(size.size(), normal.len() as u64);
        prop_assert_eq!(postamt_wire::crlf_size(&text), normal.len() as u64);
        let mut again = Vec::new();
        let mut encoder = DotEncoder::new();
        encoder.encode(&normal, &mut again);
        encoder.finish(&mut again);
        prop_assert_eq!(again, wire);
    }
}

/// The telnet filter over `text` cut at `points`, asking for `reads`
/// throughout: what the session gets and what the client gets back.
fn telnet_filtered(
    text: &[u8],
    points: &[usize],
    reads: postamt_wire::Reads,
) -> (Vec<u8>, Vec<u8>) {
    let mut f = postamt_wire::TelnetFilter::new(16);
    let (mut out, mut replies) = (Vec::new(), Vec::new());
    for w in points.windows(2) {
        let mut rest = &text[w[0]..w[1]];
        while !rest.is_empty() {
            let n = f.push(rest, reads, &mut out);
            assert!(n > 0 && n <= rest.len());
            rest = &rest[n..];
        }
        f.poll_reply(&mut replies);
    }
    (out, replies)
}

/// Bytes rich in what the telnet filter looks at.
fn typed_text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(255u8),
            Just(251u8),
            Just(253u8),
            Just(250u8),
            Just(240u8),
            Just(b'\r'),
            Just(b'\n'),
            Just(0u8),
            Just(8u8),
            Just(0x7fu8),
            Just(0xc3u8),
            Just(0xbcu8),
            Just(b'a'),
            any::<u8>()
        ],
        0..200,
    )
}

proptest! {
    /// However typed input is cut, the session gets the same bytes and the
    /// client the same refusals; no output line is ever longer than what
    /// came in; and a mail client's message (no negotiation) passes as is.
    #[test]
    fn telnet_filter_does_not_depend_on_the_split(
        text in typed_text(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        use postamt_wire::Reads;
        for reads in [Reads::Lines, Reads::Message] {
            let whole = telnet_filtered(&text, &[0, text.len()], reads);
            let bytewise: Vec<usize> = (0..=text.len()).collect();
            prop_assert_eq!(&telnet_filtered(&text, &bytewise, reads), &whole);
            let points = splits(text.len(), &cuts);
            prop_assert_eq!(&telnet_filtered(&text, &points, reads), &whole);
            prop_assert!(whole.0.len() <= text.len());
        }
        if postamt_wire::TelnetFilter::new(16).passes_unchanged(&text) {
            for reads in [Reads::Lines, Reads::Message] {
                let (out, replies) = telnet_filtered(&text, &[0, text.len()], reads);
                prop_assert_eq!(&out, &text);
                prop_assert!(replies.is_empty());
            }
        }
        if !text.contains(&255) {
            let (out, replies) = telnet_filtered(&text, &[0, text.len()], Reads::Message);
            prop_assert_eq!(out, text);
            prop_assert!(replies.is_empty());
        }
    }
}
