//! Config loading: any UTF-8 text through parse + validate never panics,
//! a refusal carries at least one error, each at a real line and column
//! of the text; and an accepted config builds a runtime (or is refused
//! with located errors too).
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sipscreen::config::{self, ConfigError};
use sipscreen::runtime::Runtime;
use sipscreen::screening::exceptions::ExceptionSet;

fn check_located(text: &str, e: &ConfigError) {
    let errors = e.errors();
    assert!(!errors.is_empty(), "refused without an error: {e}");
    let lines = text.split('\n').count();
    for l in errors {
        assert!(l.line >= 1 && l.line <= lines, "line {} of {lines}: {e}", l.line);
        let width = text.split('\n').nth(l.line - 1).unwrap_or("").chars().count();
        assert!(
            l.column >= 1 && l.column <= width + 1,
            "column {} of {width}: {e}",
            l.column
        );
        assert!(!l.message.is_empty());
    }
    let shown = e.to_string();
    assert!(shown.starts_with("fuzz.toml:"), "{shown}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::from_toml(Path::new("fuzz.toml"), text.to_string()) {
        Err(e) => check_located(text, &e),
        Ok(loaded) => {
            if let Err(e) = Runtime::build(loaded, Arc::new(ExceptionSet::new())) {
                check_located(text, &e);
            }
        }
    }
});
