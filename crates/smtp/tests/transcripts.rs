//! Every transcript in tests/transcripts/, run whole, byte by byte and at random splits.

mod common;

macro_rules! transcripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                common::check_file(concat!(stringify!($name), ".txt"));
            }
        )*

        #[test]
        fn every_transcript_file_has_a_test() {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transcripts");
            let mut files: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            let mut listed = vec![$(concat!(stringify!($name), ".txt").to_string()),*];
            listed.sort();
            assert_eq!(files, listed);
        }
    };
}

transcripts!(
    auth,
    auth_authzid,
    auth_guessing,
    auth_plain,
    auth_plaintext,
    bdat,
    bdat_binarymime,
    bdat_disabled,
    bdat_long_line,
    bdat_normalize,
    bdat_smuggling,
    ehlo_pipelining,
    eof,
    error_limit,
    handout,
    helo_mode,
    helo_names,
    lmtp,
    long_lines,
    oversize,
    rset,
    sequence_errors,
    smuggling,
    smuggling_normalize,
    starttls,
    starttls_injection,
    syntax_errors,
    timeout,
    timeout_command,
    timeout_per_command,
    too_many_recipients,
    xclient,
    xclient_syntax,
    xclient_transaction,
    xclient_untrusted
);
