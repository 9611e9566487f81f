//! Test helpers shared by this crate, the runtime and the integration tests: a temporary
//! directory removed on drop, and executable scripts written without a leaked descriptor.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/moat-jail-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("moat-jail-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` as an executable file (mode 0755).
///
/// A child process writes the file, so no write descriptor to it ever exists in the calling
/// (multi-threaded test) process, where a concurrent fork could inherit one and make an exec of
/// the script fail with ETXTBSY.
pub fn write_executable(path: &Path, text: &str) {
    let status = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s\\n' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
        ])
        .arg(text)
        .arg(path)
        .status()
        .expect("run /bin/sh to write a script");
    assert!(status.success(), "cannot write {}", path.display());
}
