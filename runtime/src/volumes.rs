//! Disks beyond the image: volumes (`-v`), `--device` nodes, and host directories packed into
//! ext4 images (a bundle's root, `-v DIR:DST:ro` snapshots). moat has no shared filesystem:
//! everything the guest sees of the host is a block device.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use moat_spec::parse::{DeviceArg, VolumeArg};

/// Offset of the ext2/3/4 superblock's magic number, and the magic.
const EXT4_MAGIC_OFFSET: u64 = 1024 + 56;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xef];

/// Errors about host paths given for volumes, devices and bundles.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The source does not exist or cannot be read.
    #[error("-v/--volume {}: cannot use it", .0.display())]
    Unreadable(PathBuf, #[source] std::io::Error),
    /// A directory without `:ro`.
    #[error("-v/--volume {}: a directory can only be mounted read-only (moat has no shared filesystem): use :ro or an ext4 image file", .0.display())]
    WritableDirectory(PathBuf),
    /// Not a directory or a regular file.
    #[error("-v/--volume {}: not a directory, a regular file or an ext4 image file", .0.display())]
    NotExt4(PathBuf),
    /// A comma, which `moat-vmm --disk` cannot take.
    #[error("-v/--volume {}: the path contains a comma, which moat cannot pass to the VM", .0.display())]
    Comma(PathBuf),
    /// `--device` on something that is not a device node.
    #[error("--device {}: not a character or block device", .0.display())]
    NotADevice(PathBuf),
    /// `--device` path cannot be read.
    #[error("--device {}: cannot use it", .0.display())]
    DeviceUnreadable(PathBuf, #[source] std::io::Error),
    /// Walking a directory to size its image failed.
    #[error("cannot read {}", .0.display())]
    Walk(PathBuf, #[source] std::io::Error),
    /// mkfs.ext4 could not run or failed.
    #[error("cannot pack {} into an ext4 image: {detail}", dir.display())]
    Mkfs {
        /// The directory.
        dir: PathBuf,
        /// mkfs.ext4's last stderr line or why it did not run.
        detail: String,
    },
}

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VolumeSource {
    /// A host directory, packed into an ext4 snapshot when the VM starts (read-only).
    Directory(PathBuf),
    /// An ext4 image file, attached as is (writes persist unless read-only).
    ImageFile(PathBuf),
    /// Host files (`-v FILE:DST`, an OCI bundle's file binds: Docker's /etc/hosts,
    /// /etc/resolv.conf, /etc/hostname), copied when the VM starts into one ext4 disk as `0`,
    /// `1`...; the spec's bind mounts name them there ([`Volume::bind_source`]).
    Files(Vec<PathBuf>),
}

/// A checked `-v`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// The data.
    pub source: VolumeSource,
    /// Where it appears in the container.
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
}

impl Volume {
    /// What the container's bind mount of this volume, the `index`th disk after the image,
    /// mounts from in the guest: the volume's mount point, or its first file for copied files.
    pub fn bind_source(&self, index: usize) -> String {
        let at = crate::run::volume_mountpoint(index);
        match self.source {
            VolumeSource::Files(_) => format!("{at}/0"),
            _ => at,
        }
    }
}

/// Checks a `-v` value's source on the host: an ext4 image file (attached), another regular
/// file (copied in when the VM starts), or a directory with `:ro` (a snapshot).
pub fn check_volume(arg: &VolumeArg) -> Result<Volume, VolumeError> {
    let path = &arg.source;
    if path.as_os_str().as_encoded_bytes().contains(&b',') {
        return Err(VolumeError::Comma(path.clone()));
    }
    let meta = std::fs::metadata(path).map_err(|e| VolumeError::Unreadable(path.clone(), e))?;
    let source = if meta.is_dir() {
        if !arg.readonly {
            return Err(VolumeError::WritableDirectory(path.clone()));
        }
        VolumeSource::Directory(path.clone())
    } else if meta.is_file()
        && is_ext4(path).map_err(|e| VolumeError::Unreadable(path.clone(), e))?
    {
        VolumeSource::ImageFile(path.clone())
    } else if meta.is_file() {
        // Opened now, so that an unreadable file fails here rather than when the VM starts.
        std::fs::File::open(path).map_err(|e| VolumeError::Unreadable(path.clone(), e))?;
        VolumeSource::Files(vec![path.clone()])
    } else {
        return Err(VolumeError::NotExt4(path.clone()));
    };
    Ok(Volume {
        source,
        destination: arg.destination.clone(),
        readonly: arg.readonly,
    })
}

/// Whether the file starts with an ext2/3/4 superblock.
fn is_ext4(path: &Path) -> std::io::Result<bool> {
    is_ext4_file(&mut std::fs::File::open(path)?)
}

/// Whether `file` starts with an ext2/3/4 superblock.
pub(crate) fn is_ext4_file(file: &mut std::fs::File) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    Ok(read_at(file, EXT4_MAGIC_OFFSET, &mut magic)? && magic == EXT4_MAGIC)
}

/// Reads `buf.len()` bytes at `offset`; false if the file ends first.
pub(crate) fn read_at(
    file: &mut std::fs::File,
    offset: u64,
    buf: &mut [u8],
) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Linux's major number of a `dev_t`.
fn dev_major(dev: u64) -> i64 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as i64
}

/// Linux's minor number of a `dev_t`.
fn dev_minor(dev: u64) -> i64 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as i64
}

/// A `--device`: `/dev/vda`, `/dev/vdb`... are the guest's own disks (the image, the volumes);
/// any other path is a host node whose type and numbers are used (the guest kernel numbers its
/// standard devices, e.g. /dev/kmsg or /dev/net/tun, the same way), made at the container path.
pub fn resolve_device(arg: &DeviceArg) -> Result<moat_spec::Device, VolumeError> {
    if let Some((major, minor)) = arg.host.to_str().and_then(moat_spec::guest_disk_numbers) {
        return Ok(moat_spec::Device {
            path: arg.container.clone(),
            block: true,
            major,
            minor,
            file_mode: 0o660,
            access: arg.access.clone(),
        });
    }
    let meta = std::fs::metadata(&arg.host)
        .map_err(|e| VolumeError::DeviceUnreadable(arg.host.clone(), e))?;
    let kind = meta.file_type();
    if !kind.is_char_device() && !kind.is_block_device() {
        return Err(VolumeError::NotADevice(arg.host.clone()));
    }
    Ok(moat_spec::Device {
        path: arg.container.clone(),
        block: kind.is_block_device(),
        major: dev_major(meta.rdev()),
        minor: dev_minor(meta.rdev()),
        file_mode: meta.mode() & 0o7777,
        access: arg.access.clone(),
    })
}

/// Bytes and inodes a directory tree needs in an ext4 image (4 KiB blocks).
fn tree_size(dir: &Path) -> Result<(u64, u64), VolumeError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| VolumeError::Walk(dir.clone(), e))?;
        bytes += 4096;
        inodes += 1;
        for entry in entries {
            let entry = entry.map_err(|e| VolumeError::Walk(dir.clone(), e))?;
            let meta = entry
                .metadata()
                .map_err(|e| VolumeError::Walk(entry.path(), e))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                inodes += 1;
                bytes += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok((bytes, inodes))
}

/// Packs `dir` into a new ext4 image `image` labelled `label`, sized for its contents with a
/// quarter more plus 16 MiB of room (`mkfs.ext4 -d`, run as root: owners and modes are kept).
/// The image holds exactly the directory's entries: the `lost+found` mkfs adds is removed
/// unless the directory has one.
pub fn pack_directory(dir: &Path, image: &Path, label: &str) -> Result<(), VolumeError> {
    let (bytes, inodes) = tree_size(dir)?;
    let size_kib = (bytes + bytes / 4 + (16 << 20)).div_ceil(1024);
    let inodes = inodes + inodes / 4 + 1024;
    let mkfs_err = |detail: String| VolumeError::Mkfs {
        dir: dir.to_owned(),
        detail,
    };
    let mut mkfs = e2fsprogs("mkfs.ext4");
    mkfs.arg("-q")
        .arg("-d")
        .arg(dir)
        .args(["-L", label, "-N", &inodes.to_string()])
        .arg(image)
        .arg(format!("{size_kib}k"));
    run_e2fsprogs(mkfs, "mkfs.ext4").map_err(mkfs_err)?;
    if std::fs::symlink_metadata(dir.join(LOST_FOUND)).is_err() {
        remove_lost_found(image).map_err(mkfs_err)?;
    }
    tracing::debug!(dir = %dir.display(), image = %image.display(), size_kib, "packed");
    Ok(())
}

/// A command of e2fsprogs with no stdin or stdout, its stderr kept, and a fixed PATH.
pub(crate) fn e2fsprogs(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin");
    cmd
}

/// Runs `cmd` (from [`e2fsprogs`]); a failure is its last line on stderr.
pub(crate) fn run_e2fsprogs(mut cmd: Command, program: &str) -> Result<(), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {program} (e2fsprogs): {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().rfind(|l| !l.trim().is_empty());
    Err(crate::console::sanitize(
        line.unwrap_or(&format!("{program} failed")).trim(),
    ))
}

/// The directory mkfs.ext4 makes in every new filesystem's root.
const LOST_FOUND: &str = "lost+found";

/// Removes the `lost+found` mkfs.ext4 made in `image` (`debugfs -w -R 'rmdir lost+found'`), so
/// that the image holds what its directory holds and no more.
fn remove_lost_found(image: &Path) -> Result<(), String> {
    let output = e2fsprogs("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("rmdir {LOST_FOUND}"))
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run debugfs (e2fsprogs): {e}"))?;
    // debugfs exits 0 when its command fails: anything on stderr but its banner is an error.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("debugfs "));
    match (output.status.success(), error) {
        (true, None) => Ok(()),
        (_, line) => Err(format!(
            "debugfs rmdir {LOST_FOUND}: {}",
            crate::console::sanitize(line.unwrap_or("failed"))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn arg(source: &Path, readonly: bool) -> VolumeArg {
        VolumeArg {
            source: source.to_owned(),
            destination: "/data".into(),
            readonly,
        }
    }

    #[test]
    fn volume_sources() {
        let tmp = TempDir::new("volumes");
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), b"hello").unwrap();
        let v = check_volume(&arg(&dir, true)).unwrap();
        assert_eq!(v.source, VolumeSource::Directory(dir.clone()));
        let err = check_volume(&arg(&dir, false)).unwrap_err();
        assert!(
            err.to_string().contains("use :ro or an ext4 image file"),
            "{err}"
        );
        let text = tmp.path().join("t");
        std::fs::write(&text, vec![0u8; 4096]).unwrap();
        let v = check_volume(&arg(&text, false)).unwrap();
        assert_eq!(v.source, VolumeSource::Files(vec![text.clone()]));
        assert_eq!(
            v.bind_source(2),
            format!("{}/2/0", moat_protocol::VOLUMES_DIR)
        );
        assert!(matches!(
            check_volume(&arg(Path::new("/dev/null"), false)),
            Err(VolumeError::NotExt4(_))
        ));
        let missing = tmp.path().join("missing");
        assert!(matches!(
            check_volume(&arg(&missing, true)),
            Err(VolumeError::Unreadable(..))
        ));
        let comma = tmp.path().join("a,b");
        assert!(matches!(
            check_volume(&arg(&comma, true)),
            Err(VolumeError::Comma(_))
        ));
        let image = tmp.path().join("v.ext4");
        pack_directory(&dir, &image, "volume").unwrap();
        let v = check_volume(&arg(&image, false)).unwrap();
        assert_eq!(v.source, VolumeSource::ImageFile(image));
        assert_eq!(
            v.bind_source(2),
            format!("{}/2", moat_protocol::VOLUMES_DIR)
        );
        assert!(!v.readonly);
    }

    /// The names in the root of the ext4 image `image` (`debugfs ls`), without `.` and `..`.
    fn image_root(image: &Path) -> Vec<String> {
        let out = Command::new("debugfs")
            .args(["-R", "ls -p /"])
            .arg(image)
            .output()
            .expect("debugfs");
        assert!(out.status.success());
        // Each entry: /INODE/MODE/UID/GID/NAME/SIZE/
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect();
        names.sort();
        names
    }

    #[test]
    fn snapshots_hold_exactly_the_directory() {
        let tmp = TempDir::new("snapshot");
        let dir = tmp.path().join("d");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("f"), b"hello").unwrap();
        let image = tmp.path().join("d.ext4");
        pack_directory(&dir, &image, "volume").unwrap();
        assert_eq!(image_root(&image), ["f", "sub"]);
        let fsck = Command::new("e2fsck").arg("-fn").arg(&image).output();
        assert!(fsck.unwrap().status.success(), "e2fsck found errors");
        // A lost+found of the directory's own is kept, with what it holds.
        std::fs::create_dir(dir.join(LOST_FOUND)).unwrap();
        std::fs::write(dir.join(LOST_FOUND).join("kept"), b"x").unwrap();
        let image = tmp.path().join("d2.ext4");
        pack_directory(&dir, &image, "volume").unwrap();
        assert_eq!(image_root(&image), ["f", LOST_FOUND, "sub"]);
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let image = tmp.path().join("e.ext4");
        pack_directory(&empty, &image, "volume").unwrap();
        assert!(image_root(&image).is_empty());
    }

    #[test]
    fn devices() {
        let null = DeviceArg {
            host: "/dev/null".into(),
            container: "/dev/mynull".into(),
            access: "rw".into(),
        };
        let d = resolve_device(&null).unwrap();
        assert_eq!(
            (d.block, d.major, d.minor, d.path.as_str()),
            (false, 1, 3, "/dev/mynull")
        );
        let disk = DeviceArg {
            host: "/dev/vdb".into(),
            container: "/dev/xvdb".into(),
            access: "r".into(),
        };
        let d = resolve_device(&disk).unwrap();
        assert_eq!((d.block, d.major, d.minor), (true, 254, 16));
        let not_dev = DeviceArg {
            host: "/etc/hostname".into(),
            ..null
        };
        assert!(resolve_device(&not_dev).is_err());
        assert_eq!((dev_major(0x0000_0103), dev_minor(0x0000_0103)), (1, 3));
        assert_eq!((dev_major(0xfe10), dev_minor(0xfe10)), (254, 16));
    }
}
