//! STUB
use std::path::PathBuf;
pub trait ExceptionSource {
    fn load(&self, normalizer: &super::normalize::Normalizer) -> Result<LoadReport, SourceError>;
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct SourceError;
pub struct FileSource;
impl FileSource {
    pub fn new(_p: PathBuf) -> Self {
        FileSource
    }
}
impl ExceptionSource for FileSource {
    fn load(&self, _n: &super::normalize::Normalizer) -> Result<LoadReport, SourceError> {
        todo!()
    }
}
pub struct LoadReport {
    pub phones: Vec<u64>,
    pub emails: Vec<String>,
    pub rejected: Vec<Rejected>,
}
pub struct Rejected {
    pub line: usize,
    pub text: String,
    pub reason: String,
}
