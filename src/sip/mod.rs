//! SIP on the hot path: a lazy, zero-copy scanner over `bytes::Bytes`, an
//! edit list over the received buffer (Kamailio's "lumps"), and TCP framing.
//! Depends on `bytes` and `memchr` only: no tokio, config or metrics, so it
//! can be fuzzed and benchmarked alone.

pub mod edits;
pub mod framing;
pub mod header;
pub mod message;
pub mod values;

pub use edits::Edits;
pub use header::HeaderName;
pub use message::{Header, Invalid, Message, Method, Parsed, ScanError, StartLine};
