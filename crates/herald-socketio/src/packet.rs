//! Filled in by #14 (see the crate documentation).
