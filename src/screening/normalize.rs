//! STUB
pub struct Normalizer;
