//! Helpers for the unit tests.

use std::path::{Path, PathBuf};

pub use moat_jail::testutil::TempDir;

/// Writes an executable `sh` script `dir/fake-vmm` with `body` and returns its path.
///
/// A child process writes the file, so no write descriptor to it ever exists in this
/// multi-threaded test process, where a concurrent fork could inherit it and make exec of the
/// script fail with ETXTBSY.
pub fn fake_vmm(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-vmm");
    let status = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s\\n' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
        ])
        .arg(format!("#!/bin/sh\n{body}"))
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}
