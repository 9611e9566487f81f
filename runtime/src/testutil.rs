//! Helpers for the unit tests.

use std::path::{Path, PathBuf};

use moat_jail::testutil::write_executable;
pub use moat_jail::testutil::TempDir;

/// Writes an executable `sh` script `dir/fake-vmm` with `body` and returns its path.
pub fn fake_vmm(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-vmm");
    write_executable(&path, &format!("#!/bin/sh\n{body}"));
    path
}
