//! STUB: replaced by the screening work.
pub struct LineSettings {
    pub trunk: Option<String>,
}
