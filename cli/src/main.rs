//! The `moat` command.
#![forbid(unsafe_code)]

fn main() {}
