//! Opens the store `[store] kind` names: the SQLite file in `data_dir`,
//! or the PostgreSQL database at the URL in the `url_env` variable.

use std::sync::Arc;

use super::{Store, StoreError};
use crate::config::{StoreConfig, StoreKind};

/// The `postgres://` URL in the variable `var` (an error names the
/// variable, never its value).
pub fn url_from_env(var: &str) -> Result<String, StoreError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        Ok(_) => Err(StoreError::Postgres(format!(
            "[store] url_env: the environment variable {var} is empty (it must hold the postgres:// URL)"
        ))),
        Err(_) => Err(StoreError::Postgres(format!(
            "[store] url_env: the environment variable {var} is not set (it must hold the postgres:// URL)"
        ))),
    }
}

/// Opens the configured store (blocking: call from a blocking thread).
pub fn open(cfg: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match cfg.kind.get_ref() {
        StoreKind::Sqlite => Ok(Arc::new(super::sqlite::SqliteStore::open_dir(
            &cfg.data_dir,
        )?)),
        StoreKind::Postgres => {
            let var = cfg
                .url_env
                .as_ref()
                .map(|v| v.get_ref().as_str())
                .ok_or_else(|| {
                    StoreError::Postgres("[store] kind = \"postgres\" needs url_env".to_string())
                })?;
            let url = url_from_env(var)?;
            let ca = cfg.ca.as_ref().map(|c| c.get_ref().as_path());
            Ok(Arc::new(super::postgres::PgStore::open(
                &url,
                ca,
                *cfg.pool_size.get_ref(),
            )?))
        }
    }
}
