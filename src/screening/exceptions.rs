//! STUB: replaced by the screening work.
