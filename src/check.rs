//! What `sipscreen check-config` runs: everything a config names is loaded
//! and built as `serve` would build it (the runtime, the exceptions file,
//! the CRM sinks), without a store, a socket or anything running.

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, ConfigError, CrmConfig};
use crate::crm;
use crate::runtime::Runtime;
use crate::screening::exceptions::ExceptionSet;
use crate::screening::source::{ExceptionSource, FileSource, LoadReport, SourceError};

/// Why a config does not pass; each says where.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("exceptions file: {0}")]
    ExceptionsFile(#[from] SourceError),
    #[error("[crm]: {0}")]
    Crm(#[from] crm::factory::SinkConfigError),
}

/// Loads and builds everything a config names, without touching anything
/// running: the runtime and the exception list it seeds (refused lines
/// are in the report, and logged).
pub fn prepare(
    path: &Path,
    exceptions: Arc<ExceptionSet>,
) -> Result<(Runtime, LoadReport), CheckError> {
    let loaded = config::load(path)?;
    let runtime = Runtime::build(loaded, exceptions)?;
    let report = match &runtime.loaded.config.screening.exceptions_file {
        Some(path) => {
            let report = FileSource::new(path.get_ref().clone())
                .with_max_range(runtime.screener.max_range_numbers())
                .load(runtime.screener.normalizer())?;
            for r in &report.rejected {
                tracing::warn!(file = %path.get_ref().display(), line = r.line, text = %r.text, reason = %r.reason, "exception entry refused");
            }
            report
        }
        None => LoadReport {
            phones: Vec::new(),
            emails: Vec::new(),
            other: 0,
            rejected: Vec::new(),
        },
    };
    Ok((runtime, report))
}

/// Builds the CRM sinks as `serve` would, without a store, and drops
/// them; how many there are (see [`crm::factory::check_sinks`]).
pub fn crm_sinks(cfg: &CrmConfig) -> Result<usize, CheckError> {
    Ok(crm::factory::check_sinks(cfg)?)
}
