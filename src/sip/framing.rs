//! STUB: replaced by the transport work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not a SIP message")]
    Garbage,
    #[error("bad Content-Length")]
    BadContentLength,
}
