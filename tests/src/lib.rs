//! Helpers for moat integration tests.
#![forbid(unsafe_code)]
