//! Any input gives an answer or an error, never a panic, and the answers keep
//! their promises.

use std::io::Read;

use postamt_store::{
    Directory, MailStore, MailboxName, MemoryStore, StaticDirectory, StoreError, Uid, summary,
};
use proptest::prelude::*;

fn users_text() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("anna@kolleg.de".to_owned()),
        Just("ANNA@Kolleg.de".to_owned()),
        Just("bob@kolleg.de".to_owned()),
        Just("#".to_owned()),
        Just("geheim".to_owned()),
        "[a-z.@#]{0,12}",
        any::<String>(),
    ];
    let line = proptest::collection::vec(field, 0..5).prop_map(|fields| fields.join(" "));
    proptest::collection::vec(line, 0..6).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn users_file_parses_or_names_a_real_line(text in users_text()) {
        match text.parse::<StaticDirectory>() {
            Ok(directory) => {
                // Every user line that parsed logs in with its own password.
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let mut fields = line.split_whitespace();
                    let (user, password) = (fields.next().unwrap(), fields.next().unwrap());
                    prop_assert_eq!(
                        directory.verify_password(user, password.as_bytes()).map(|m| m.to_string()),
                        Some(user.to_lowercase())
                    );
                }
            }
            Err(StoreError::UsersFile { path, line, message }) => {
                prop_assert!(path.is_none());
                prop_assert!(line >= 1 && line <= text.lines().count(), "line {} of {:?}", line, text);
                prop_assert!(!message.is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

    #[test]
    fn accepted_mailbox_names_are_one_safe_path_component(name in any::<String>()) {
        if let Ok(mailbox) = MailboxName::new(name.clone()) {
            let path = std::path::Path::new(mailbox.as_str());
            prop_assert_eq!(path.components().count(), 1);
            prop_assert!(matches!(path.components().next(), Some(std::path::Component::Normal(_))));
            prop_assert!(!name.starts_with('.') && !name.contains(['/', '\\', '\0']));
        }
    }

    #[test]
    fn derived_uids_are_valid_and_stable(name in any::<String>()) {
        let uid = Uid::from_name(&name);
        prop_assert!(Uid::new(uid.as_str()).is_some());
        prop_assert_eq!(uid, Uid::from_name(&name));
    }

    #[test]
    fn summary_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = summary(&bytes);
    }

    #[test]
    fn listed_size_is_the_number_of_octets_read(
        chunks in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..40),
            0..6,
        ),
    ) {
        let store = MemoryStore::new();
        let anna = MailboxName::new("anna").unwrap();
        let mut delivery = store.begin_delivery(std::slice::from_ref(&anna)).unwrap();
        for chunk in &chunks {
            delivery.write_chunk(chunk).unwrap();
        }
        delivery.commit().unwrap();
        let maildrop = store.open_maildrop(&anna).unwrap();
        let mut served = Vec::new();
        maildrop.read_message(0).unwrap().read_to_end(&mut served).unwrap();
        prop_assert_eq!(maildrop.messages()[0].size, served.len() as u64);
        // Every LF is preceded by CR in what is served.
        prop_assert!(served.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'));
        prop_assert!(served.first() != Some(&b'\n'));
    }
}
