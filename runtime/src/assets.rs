//! Finding the VMM binary, the guest kernel, the initramfs and the image disk.
//!
//! Order (docs/architecture.md): a command-line flag, then an environment variable (`MOAT_KERNEL`,
//! `MOAT_INITRAMFS`, `MOAT_VMM`, `MOAT_ASSETS_DIR`), then `<directory of moat>/moat-assets/` and
//! `<directory of moat>/moat-vmm`. Images are `<assets dir>/images/<name>.ext4`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::AssetOverrides;

/// Name of the image used when the user names none.
pub const DEFAULT_IMAGE: &str = "busybox";

/// Errors while locating assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// A file is missing where it was looked for.
    #[error("{what} not found at {} ({origin})", path.display())]
    Missing {
        /// Which asset.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Why there: the flag, variable or default that chose the path.
        origin: &'static str,
    },
    /// No location is known for an asset (no flag, no variable, no executable directory).
    #[error("cannot locate the {0}: set {1}")]
    NoLocation(&'static str, &'static str),
    /// The image name is not a built-in image.
    #[error("unknown image {name:?}: built-in images are: {available}")]
    UnknownImage {
        /// What the user asked for.
        name: String,
        /// Names of the images found, comma separated, or "none".
        available: String,
    },
}

/// The files a run needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assets {
    /// The `moat-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// The initramfs with the agent as `/init`.
    pub initramfs: PathBuf,
    /// The image's disk (`None` when the run brings its own root, e.g. a bundle).
    pub image: Option<PathBuf>,
}

/// Where to look: the user's overrides, the environment and the directory of the executable.
pub struct AssetSearch<'a> {
    /// `--kernel` / `--initramfs`.
    pub overrides: &'a AssetOverrides,
    /// Environment lookup (the process environment outside tests).
    pub env: &'a dyn Fn(&str) -> Option<OsString>,
    /// Directory of the running `moat` executable, if known.
    pub exe_dir: Option<PathBuf>,
}

impl AssetSearch<'_> {
    /// Finds every asset of a run of `image` (`None`: the VM assets only).
    pub fn locate(&self, image: Option<&str>) -> Result<Assets, AssetError> {
        Ok(Assets {
            vmm: self.vmm()?,
            kernel: self.asset(
                "kernel",
                self.overrides.kernel.as_ref(),
                "MOAT_KERNEL",
                "vmlinux",
            )?,
            initramfs: self.asset(
                "initramfs",
                self.overrides.initramfs.as_ref(),
                "MOAT_INITRAMFS",
                "initramfs.cpio",
            )?,
            image: image.map(|name| self.image(name)).transpose()?,
        })
    }

    fn var(&self, name: &str) -> Option<PathBuf> {
        (self.env)(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    fn vmm(&self) -> Result<PathBuf, AssetError> {
        if let Some(path) = self.var("MOAT_VMM") {
            return existing("moat-vmm", path, "from MOAT_VMM");
        }
        match &self.exe_dir {
            Some(dir) => existing(
                "moat-vmm",
                dir.join("moat-vmm"),
                "next to moat; set MOAT_VMM",
            ),
            None => Err(AssetError::NoLocation("moat-vmm", "MOAT_VMM")),
        }
    }

    /// The assets directory and the reason it was chosen.
    fn assets_dir(&self) -> Option<(PathBuf, &'static str)> {
        if let Some(dir) = self.var("MOAT_ASSETS_DIR") {
            return Some((dir, "from MOAT_ASSETS_DIR"));
        }
        let dir = self.exe_dir.as_ref()?.join("moat-assets");
        Some((dir, "next to moat; set MOAT_ASSETS_DIR"))
    }

    fn asset(
        &self,
        what: &'static str,
        flag: Option<&PathBuf>,
        var: &'static str,
        file: &str,
    ) -> Result<PathBuf, AssetError> {
        if let Some(path) = flag {
            return existing(what, path.clone(), "from the command line");
        }
        if let Some(path) = self.var(var) {
            let origin = if var == "MOAT_KERNEL" {
                "from MOAT_KERNEL"
            } else {
                "from MOAT_INITRAMFS"
            };
            return existing(what, path, origin);
        }
        match self.assets_dir() {
            Some((dir, origin)) => existing(what, dir.join(file), origin),
            None => Err(AssetError::NoLocation(what, var)),
        }
    }

    fn image(&self, name: &str) -> Result<PathBuf, AssetError> {
        let Some((dir, origin)) = self.assets_dir() else {
            return Err(AssetError::NoLocation("images", "MOAT_ASSETS_DIR"));
        };
        let images = dir.join("images");
        let unknown = || AssetError::UnknownImage {
            name: name.to_owned(),
            available: list_images(&images),
        };
        let base = name.strip_suffix(":latest").unwrap_or(name);
        if !valid_image_name(base) {
            return Err(unknown());
        }
        let path = images.join(format!("{base}.ext4"));
        if path.is_file() {
            return Ok(path);
        }
        if base == DEFAULT_IMAGE {
            // The default image missing is a broken installation, not a typo: say where.
            return existing("image", path, origin);
        }
        Err(unknown())
    }
}

fn existing(
    what: &'static str,
    path: PathBuf,
    origin: &'static str,
) -> Result<PathBuf, AssetError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::Missing { what, path, origin })
    }
}

fn valid_image_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Names of the images in `dir`, sorted and comma separated, or "none".
fn list_images(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|file| file.strip_suffix(".ext4").map(str::to_owned))
        .filter(|name| valid_image_name(name))
        .collect();
    names.sort();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The directory of the running executable.
pub fn current_exe_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::testutil::TempDir;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    /// A fake installation: `bin/moat-vmm`, `bin/moat-assets/{vmlinux,initramfs.cpio,images/busybox.ext4}`.
    fn install(root: &Path) -> PathBuf {
        let bin = root.join("bin");
        for f in [
            "moat-vmm",
            "moat-assets/vmlinux",
            "moat-assets/initramfs.cpio",
        ] {
            touch(&bin.join(f));
        }
        touch(&bin.join("moat-assets/images/busybox.ext4"));
        touch(&bin.join("moat-assets/images/alpine.ext4"));
        bin
    }

    fn search<'a>(
        overrides: &'a AssetOverrides,
        env: &'a dyn Fn(&str) -> Option<OsString>,
        exe_dir: &Path,
    ) -> AssetSearch<'a> {
        AssetSearch {
            overrides,
            env,
            exe_dir: Some(exe_dir.to_path_buf()),
        }
    }

    #[test]
    fn defaults_next_to_the_executable() {
        let tmp = TempDir::new("assets-default");
        let bin = install(tmp.path());
        let none = AssetOverrides::default();
        let env = |_: &str| None;
        let assets = search(&none, &env, &bin).locate(Some("busybox")).unwrap();
        assert_eq!(assets.vmm, bin.join("moat-vmm"));
        assert_eq!(assets.kernel, bin.join("moat-assets/vmlinux"));
        assert_eq!(assets.initramfs, bin.join("moat-assets/initramfs.cpio"));
        assert_eq!(
            assets.image,
            Some(bin.join("moat-assets/images/busybox.ext4"))
        );
        let latest = search(&none, &env, &bin)
            .locate(Some("busybox:latest"))
            .unwrap();
        assert_eq!(latest.image, assets.image);
    }

    #[test]
    fn flag_beats_variable_beats_assets_dir() {
        let tmp = TempDir::new("assets-order");
        let bin = install(tmp.path());
        let other = tmp.path().join("other");
        for f in [
            "vmlinux",
            "initramfs.cpio",
            "images/busybox.ext4",
            "k2",
            "vmm2",
        ] {
            touch(&other.join(f));
        }
        touch(&tmp.path().join("flag-kernel"));
        let vars: HashMap<&str, OsString> = [
            ("MOAT_ASSETS_DIR", other.clone().into_os_string()),
            ("MOAT_KERNEL", other.join("k2").into_os_string()),
            ("MOAT_VMM", other.join("vmm2").into_os_string()),
        ]
        .into();
        let env = move |k: &str| vars.get(k).cloned();
        let none = AssetOverrides::default();
        let assets = search(&none, &env, &bin).locate(Some("busybox")).unwrap();
        assert_eq!(assets.kernel, other.join("k2"));
        assert_eq!(assets.vmm, other.join("vmm2"));
        assert_eq!(assets.initramfs, other.join("initramfs.cpio"));
        assert_eq!(assets.image, Some(other.join("images/busybox.ext4")));
        let flags = AssetOverrides {
            kernel: Some(tmp.path().join("flag-kernel")),
            initramfs: None,
        };
        let assets = search(&flags, &env, &bin).locate(Some("busybox")).unwrap();
        assert_eq!(assets.kernel, tmp.path().join("flag-kernel"));
    }

    #[test]
    fn missing_files_and_unknown_images_are_clear_errors() {
        let tmp = TempDir::new("assets-missing");
        let bin = install(tmp.path());
        let none = AssetOverrides::default();
        let env = |_: &str| None;
        let err = search(&none, &env, &bin).locate(Some("nginx")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown image \"nginx\": built-in images are: alpine, busybox"
        );
        assert!(search(&none, &env, &bin)
            .locate(Some("../busybox"))
            .is_err());
        let flags = AssetOverrides {
            kernel: Some(tmp.path().join("nope")),
            initramfs: None,
        };
        let err = search(&flags, &env, &bin)
            .locate(Some("busybox"))
            .unwrap_err();
        assert!(err.to_string().starts_with("kernel not found at "), "{err}");
        std::fs::remove_file(bin.join("moat-vmm")).unwrap();
        let err = search(&none, &env, &bin)
            .locate(Some("busybox"))
            .unwrap_err();
        assert!(matches!(
            err,
            AssetError::Missing {
                what: "moat-vmm",
                ..
            }
        ));
        let nowhere = AssetSearch {
            overrides: &none,
            env: &env,
            exe_dir: None,
        };
        assert!(matches!(
            nowhere.locate(Some("busybox")),
            Err(AssetError::NoLocation(..))
        ));
    }
}
