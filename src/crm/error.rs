//! What went wrong delivering to a CRM, as a type: the text goes to the
//! log and the outbox (`last_error`, the dead-letter reason), the variant
//! decides nothing by itself (the sink says retry or reject, see
//! [`super::Delivery`]) but names the failure ([`CrmError::kind`]).
//!
//! No variant holds a URL: a Bitrix24 inbound webhook URL carries its
//! secret token in the path, a webhook URL may carry one in its query,
//! and OAuth secrets travel in the refresh request's query.

use std::fmt;

use crate::events::PayloadError;

/// An HTTP client error without its URL, shown with its whole cause chain
/// ("error sending request: client error (Connect): tcp connect error:
/// Connection refused").
#[derive(Debug)]
pub struct HttpError(reqwest::Error);

impl From<reqwest::Error> for HttpError {
    fn from(e: reqwest::Error) -> Self {
        HttpError(e.without_url())
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::error_chain(&self.0))
    }
}

// No `source`: the chain is already in the text.
impl std::error::Error for HttpError {}

/// Why a delivery (or building a sink) failed.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// The HTTP client could not be built (no CA roots, say).
    #[error("HTTP client: {0}")]
    Client(HttpError),
    /// No answer: connect, timeout, TLS, reading the body.
    #[error("{method}: {error}")]
    Transport {
        method: &'static str,
        error: HttpError,
    },
    /// An HTTP status the receiver should not have answered (the first
    /// 200 characters of the body).
    #[error("{method}: HTTP {status}: {body}")]
    Status {
        method: &'static str,
        status: u16,
        body: String,
    },
    /// The CRM refused the request with its own error code (Bitrix24
    /// `error`, `error_description`; the code may be empty).
    #[error("{method}: HTTP {status} {code} {description}")]
    Refused {
        method: &'static str,
        status: u16,
        code: String,
        description: String,
    },
    /// One command of a batch failed with the CRM's error code.
    #[error("{method}: {code} {description}")]
    Command {
        method: &'static str,
        code: String,
        description: String,
    },
    /// The CRM said "too many requests" (HTTP 429, Bitrix24
    /// `QUERY_LIMIT_EXCEEDED`).
    #[error("{method}: QUERY_LIMIT_EXCEEDED")]
    RateLimited { method: &'static str },
    /// The access token was refused again right after a refresh.
    #[error("{method}: token still refused after a refresh")]
    TokenRefused { method: &'static str },
    /// The OAuth token endpoint did not answer.
    #[error("OAuth refresh: {0}")]
    RefreshTransport(HttpError),
    /// The OAuth token endpoint answered without new tokens.
    #[error("OAuth refresh refused: HTTP {status} {code}")]
    RefreshRefused { status: u16, code: String },
    /// The outbox payload is not a call event of its kind.
    #[error(transparent)]
    BadPayload(#[from] PayloadError),
    /// A finish for a call whose register never got a `CALL_ID`.
    #[error("no CALL_ID: the call was never registered")]
    NotRegistered,
    /// Register answered, but without a `CALL_ID` (the answer, cut).
    #[error("register answered without CALL_ID: {0}")]
    NoCallId(String),
    /// The store could not read or keep the CRM's id of a call.
    #[error("cannot {op} the CRM call id: {error}")]
    CallIdStore {
        /// `read` or `record`.
        op: &'static str,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A command of a batch did not run (halted before it, or no answer).
    #[error("batch: {method} not run")]
    NotRun { method: &'static str },
    /// The application has no tokens yet (`sipscreen crm bitrix24
    /// connect`, or the portal's install call).
    #[error(
        "not connected: run `sipscreen crm bitrix24 connect --sink NAME` or install the application"
    )]
    NotConnected,
    /// Bitrix24's per-method operating time is used up (429
    /// `OPERATION_TIME_LIMIT`): the method is paused this long.
    #[error("{method}: OPERATION_TIME_LIMIT, paused for {wait_ms} ms")]
    OperationLimit { method: String, wait_ms: u64 },
    /// The OAuth exchange of an authorization code was refused.
    #[error("OAuth code exchange refused: HTTP {status} {code}")]
    CodeRefused { status: u16, code: String },
    /// The store could not keep the tokens.
    #[error("cannot keep the tokens: {0}")]
    TokenStore(String),
}

impl CrmError {
    /// The CRM asked us to slow down.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            CrmError::RateLimited { .. } | CrmError::Status { status: 429, .. }
        )
    }

    /// How long the worker should pause the sink instead of counting a
    /// failed attempt (the CRM's own reset time).
    pub fn pause(&self) -> Option<std::time::Duration> {
        match self {
            CrmError::OperationLimit { wait_ms, .. } => {
                Some(std::time::Duration::from_millis(*wait_ms))
            }
            _ => None,
        }
    }

    /// A short name of what failed, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CrmError::Client(_) => "client",
            CrmError::Transport { .. } | CrmError::RefreshTransport(_) => "transport",
            CrmError::Status { .. } => "http_status",
            CrmError::Refused { .. } | CrmError::Command { .. } => "crm_error",
            CrmError::RateLimited { .. } => "rate_limited",
            CrmError::TokenRefused { .. } | CrmError::RefreshRefused { .. } => "auth",
            CrmError::BadPayload(_) => "bad_payload",
            CrmError::NotRegistered | CrmError::NoCallId(_) => "no_call_id",
            CrmError::CallIdStore { .. } => "store",
            CrmError::NotRun { .. } => "not_run",
            CrmError::NotConnected => "not_connected",
            CrmError::OperationLimit { .. } => "operation_limit",
            CrmError::CodeRefused { .. } => "auth",
            CrmError::TokenStore(_) => "store",
        }
    }
}
