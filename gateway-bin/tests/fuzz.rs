//! The configuration parser and builder on arbitrary input: never a panic, and every error
//! points inside the file.
#![allow(missing_docs, clippy::unwrap_used)]

use gateway_bin::app;
use gateway_bin::config::Source;
use gateway_bin::serve::ServedBody;
use proptest::prelude::*;

fn check(text: String) -> Result<(), TestCaseError> {
    let lines = text.lines().count().max(1);
    let source = Source {
        name: "fuzz.toml".into(),
        text,
    };
    let error = match source.parse() {
        Ok(config) => match app::build::<ServedBody>(&config, &source) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let shown = error.to_string();
    prop_assert!(shown.starts_with("fuzz.toml"), "{}", shown);
    if let Some(line) = error.line {
        prop_assert!(
            line >= 1 && line <= lines + 1,
            "line {} of {}: {}",
            line,
            lines,
            shown
        );
    }
    Ok(())
}

/// A value of any TOML shape, some of them plausible for the keys.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("true".to_owned()),
        "\"[ -~]{0,24}\"",
        Just("\"http://127.0.0.1:1\"".to_owned()),
        Just("[\"http://127.0.0.1:1\", { url = \"http://127.0.0.1:2\", weight = 0 }]".to_owned()),
        Just("[\"GET\", \"BREW\", \"\"]".to_owned()),
        Just("[\"127.0.0.1:0\", \"nope\"]".to_owned()),
        Just("{ header = \"\", secrets = [] }".to_owned()),
        "\"/[a-z:*/%.]{0,16}\"",
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("listen"),
        Just("max_header_bytes"),
        Just("max_body_bytes"),
        Just("header_read_timeout_ms"),
        Just("idle_timeout_ms"),
        Just("max_connections"),
        Just("worker_threads"),
        Just("targets"),
        Just("strategy"),
        Just("weight"),
        Just("path"),
        Just("methods"),
        Just("upstream"),
        Just("auth"),
        Just("strip_prefix"),
        Just("response_timeout_ms"),
        Just("max_fails"),
        Just("trusted_proxies"),
        Just("pool_max_idle_per_target"),
        Just("unknown_key"),
    ]
    .prop_map(str::to_owned)
}

fn table() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[server]"),
        Just("[pre]"),
        Just("[index]"),
        Just("[upstreams.a]"),
        Just("[upstreams.b]"),
        Just("[[routes]]"),
        Just("[nonsense]"),
    ]
    .prop_map(str::to_owned)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(text)?;
    }

    #[test]
    fn plausible_files_build_or_name_a_line(
        sections in proptest::collection::vec(
            (table(), proptest::collection::vec((key(), value()), 0..6)),
            0..6,
        ),
    ) {
        let mut text = String::new();
        for (t, pairs) in sections {
            text.push_str(&t);
            text.push('\n');
            for (k, v) in pairs {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        check(text)?;
    }
}
