//! The exceptions `VALUE; comment` line parser (file loads and API
//! imports): never panics; an accepted value round-trips through its
//! canonical form, and the line rebuilt from it parses to the same entry.
#![no_main]

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use sipscreen::config;
use sipscreen::runtime::Runtime;
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::screening::source::{ParsedEntry, Value, load_from, parse_entry};

const CONFIG: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
[screening]
default_region = "DE"
bare_country_codes = ["49"]
"#;

static RT: LazyLock<Runtime> = LazyLock::new(|| {
    let loaded = config::from_toml(Path::new("fuzz.toml"), CONFIG.to_string()).expect("config");
    Runtime::build(loaded, Arc::new(ExceptionSet::new())).expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let normalizer = RT.screener.normalizer();
    // The whole input as a file: every line is accepted or reported.
    let max = RT.screener.max_range_numbers();
    let report = load_from(Cursor::new(data), normalizer, max).expect("in-memory read");
    let lines = data.split(|&b| b == b'\n').count();
    for r in &report.rejected {
        assert!(r.line >= 1 && r.line <= lines, "line {} of {lines}", r.line);
        assert!(r.text.chars().count() <= 200);
    }
    // The first line on its own.
    let first = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let Ok(Some(ParsedEntry {
        value,
        comment,
        allow: false,
        ..
    })) = parse_entry(first, normalizer, max)
    else {
        return;
    };
    // Every stored value of a range reads back as itself.
    for (_, stored) in value.stored() {
        let again = Value::parse(&stored, normalizer)
            .unwrap_or_else(|e| panic!("stored {stored:?} of {value:?} refused: {e}"));
        assert_eq!(again.canonical(), stored, "stored {stored:?} of {value:?} changed");
    }
    if matches!(value, Value::Range(..)) {
        return;
    }
    let canonical = value.canonical();
    let again = Value::parse(&canonical, normalizer)
        .unwrap_or_else(|e| panic!("canonical {canonical:?} of {value:?} refused: {e}"));
    assert_eq!(again, value, "canonical form {canonical:?} changed the value");
    let line = if comment.is_empty() {
        canonical.clone()
    } else {
        format!("{canonical}; {comment}")
    };
    let entry = parse_entry(line.as_bytes(), normalizer, max)
        .unwrap_or_else(|e| panic!("rebuilt line {line:?} refused: {e}"))
        .expect("rebuilt line is an entry");
    assert_eq!(entry.value, value);
    assert_eq!(entry.comment, comment);
});
