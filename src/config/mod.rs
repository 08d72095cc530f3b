//! Configuration: one TOML file, loaded in three steps so tests feed strings:
//! `load(path)` reads the file, `from_toml(&str)` parses it, `validate()`
//! checks what serde cannot. Every error names file, line and column.
//!
//! A config is only ever swapped in whole, after it and everything built
//! from it (routing table, line table, exception set) were built without
//! error; see `crate::runtime`.

mod schema;
pub mod target;
pub mod validate;

pub use schema::*;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem at a place in the source text (byte span).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the TOML text (empty when no place is known).
    pub span: Range<usize>,
    /// What is wrong, in plain words.
    pub message: String,
}

impl Diagnostic {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            span,
            message: message.into(),
        }
    }
}

/// A diagnostic resolved to 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{}", render(path, errors))]
    Invalid { path: PathBuf, errors: Vec<Located> },
}

impl ConfigError {
    /// The located errors (empty for a read error).
    pub fn errors(&self) -> &[Located] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { errors, .. } => errors,
        }
    }

    /// Builds an `Invalid` error from diagnostics over `text`.
    pub fn invalid(path: &Path, text: &str, diags: Vec<Diagnostic>) -> Self {
        let errors = diags
            .into_iter()
            .map(|d| {
                let (line, column) = line_col(text, d.span.start);
                Located {
                    line,
                    column,
                    message: d.message,
                }
            })
            .collect();
        ConfigError::Invalid {
            path: path.to_path_buf(),
            errors,
        }
    }
}

fn render(path: &Path, errors: &[Located]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{}:{}:{}: {}",
            path.display(),
            e.line,
            e.column,
            e.message
        ));
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A parsed config together with its source, for span lookups.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it came from (used in error messages).
    pub path: PathBuf,
    /// The TOML text, kept so later checks can locate their errors.
    pub text: String,
    /// The parsed, validated config.
    pub config: Config,
}

impl Loaded {
    /// Turns diagnostics found after parsing into a located error.
    pub fn error(&self, diags: Vec<Diagnostic>) -> ConfigError {
        ConfigError::invalid(&self.path, &self.text, diags)
    }
}

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_toml(path, text)
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn from_toml(path: &Path, text: String) -> Result<Loaded, ConfigError> {
    let config: Config = match toml::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let diag = Diagnostic::new(span, e.message().trim().to_string());
            return Err(ConfigError::invalid(path, &text, vec![diag]));
        }
    };
    let diags = validate::validate(&config);
    if !diags.is_empty() {
        return Err(ConfigError::invalid(path, &text, diags));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        text,
        config,
    })
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
"#;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        from_toml(Path::new("test.toml"), text.to_string())
    }

    #[test]
    fn minimal_config_gets_working_defaults() {
        let l = parse(MINIMAL).expect("valid");
        assert_eq!(l.config.sip.max_message_bytes, 65536);
        assert_eq!(l.config.defaults.source, "CALL");
        assert_eq!(l.config.screening.default_region.get_ref(), "DE");
        assert_eq!(l.config.trunks[0].name.get_ref(), "carrier");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let text = format!("{MINIMAL}\n[sip]\nmax_message_bytes = \"big\"\n");
        let err = parse(&text).unwrap_err();
        let e = &err.errors()[0];
        assert_eq!(e.line, 12, "{err}");
        assert_eq!(e.column, 21, "{err}");
        assert!(err.to_string().starts_with("test.toml:12:21: "), "{err}");
    }

    #[test]
    fn udp_receivers_out_of_range_is_refused() {
        assert_eq!(parse(MINIMAL).expect("valid").config.sip.udp_receivers, 1);
        for n in [0, 65] {
            let text = format!("{MINIMAL}\n[sip]\nudp_receivers = {n}\n");
            let err = parse(&text).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("sip.udp_receivers = {n} is outside 1..=64")),
                "{err}"
            );
        }
        let text = format!("{MINIMAL}\n[sip]\nudp_receivers = 8\n");
        assert_eq!(parse(&text).expect("valid").config.sip.udp_receivers, 8);
    }

    #[test]
    fn unknown_key_is_an_error_at_its_place() {
        let text = MINIMAL.replace("[pbx]\n", "[pbx]\ntargte = 1\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.errors()[0].line, 3, "{err}");
        assert!(err.to_string().contains("targte"), "{err}");
    }

    #[test]
    fn bad_cidr_is_located() {
        let text = MINIMAL.replace("127.0.0.2/32", "127.0.0.300/32");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.errors()[0].line, 9, "{err}");
        assert_eq!(err.errors()[0].column, 12, "{err}");
    }

    #[test]
    fn store_kind_defaults_to_sqlite_and_postgres_needs_url_env() {
        let l = parse(MINIMAL).expect("valid");
        assert_eq!(*l.config.store.kind.get_ref(), StoreKind::Sqlite);
        assert_eq!(*l.config.store.pool_size.get_ref(), DEFAULT_POOL_SIZE);
        let pg = format!(
            "{MINIMAL}\n[store]\nkind = \"postgres\"\nurl_env = \"SIPSCREEN_PG\"\npool_size = 3\n"
        );
        let l = parse(&pg).expect("valid");
        assert_eq!(*l.config.store.kind.get_ref(), StoreKind::Postgres);
        assert_eq!(
            l.config.store.url_env.as_ref().unwrap().get_ref(),
            "SIPSCREEN_PG"
        );
        assert_eq!(*l.config.store.pool_size.get_ref(), 3);

        let missing = format!("{MINIMAL}\n[store]\nkind = \"postgres\"\n");
        let err = parse(&missing).unwrap_err();
        assert!(
            err.to_string().starts_with("test.toml:12:8: ")
                && err.to_string().contains("needs url_env"),
            "{err}"
        );
        let unknown = format!("{MINIMAL}\n[store]\nkind = \"mysql\"\n");
        let err = parse(&unknown).unwrap_err();
        assert!(
            err.to_string().starts_with("test.toml:12:8: ") && err.to_string().contains("mysql"),
            "{err}"
        );
        let stray = format!("{MINIMAL}\n[store]\nurl_env = \"X\"\n");
        let err = parse(&stray).unwrap_err();
        assert!(err.to_string().contains("only with kind"), "{err}");
        let pool =
            format!("{MINIMAL}\n[store]\nkind = \"postgres\"\nurl_env = \"X\"\npool_size = 0\n");
        let err = parse(&pool).unwrap_err();
        assert!(
            err.to_string().contains("pool_size = 0 is outside"),
            "{err}"
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
