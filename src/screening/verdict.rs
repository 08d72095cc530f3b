//! STUB: replaced by the screening work.
use crate::config::Verdict;
use crate::screening::exceptions::ExceptionSet;
use crate::screening::lines::LineSettings;
use crate::screening::normalize::Normalizer;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}
impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Number(u64),
    Anonymous,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTag {
    Lead,
    Deal,
    Offer,
    None,
}
pub struct Screener;
pub struct Screening<'a> {
    pub direction: Direction,
    pub verdict: Verdict,
    pub client: Client,
    pub line: Option<u64>,
    pub settings: &'a LineSettings,
}
impl Screener {
    pub fn build(
        _l: &crate::config::Loaded,
        _e: Arc<ExceptionSet>,
    ) -> Result<Screener, crate::config::ConfigError> {
        todo!()
    }
    pub fn screen(
        &self,
        _d: Direction,
        _line_user: &[u8],
        _client_user: Option<&[u8]>,
    ) -> Screening<'_> {
        todo!()
    }
    pub fn normalizer(&self) -> &Normalizer {
        todo!()
    }
    pub fn line_trunk(&self, _l: Option<u64>) -> Option<&str> {
        todo!()
    }
}
impl Screening<'_> {
    pub fn write_tags(&self, _call_id: &str, _out: &mut Vec<u8>) {
        todo!()
    }
}
