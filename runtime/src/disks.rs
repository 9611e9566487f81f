//! The VM's disks, in guest order: the image (`/dev/vda`, read-only), the volumes (`/dev/vdb`,
//! `/dev/vdc`... in `-v` order), then the scratch disk that holds the container's writable
//! layer. Image volumes are locked for the VM's life ([`crate::locks`]); the scratch disk is a
//! sparse ext4 file under the data root, removed with the run.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use moat_protocol::UpperLayer;

use crate::assets::Assets;
use crate::config::{ConfigError, Rootfs, RunConfig};
use crate::layers::{copy_container_layers, image_disk, layered_root, LayerError, LayeredRoot};
use crate::locks::{lock_all, Attach, LockError, VolumeLocks};
use crate::state::StateDir;
use crate::vmm::Disk;
use crate::volumes::{e2fsprogs, pack_directory, run_e2fsprogs, VolumeError, VolumeSource};

/// Where moat keeps data that outlives a process (`MOAT_DATA_ROOT` moves it).
pub const DATA_ROOT: &str = "/var/lib/moat";

/// The writable layer's size unless `--storage-opt size=` says otherwise. The disk is sparse:
/// it costs host disk only for what the container writes.
pub const DEFAULT_STORAGE_BYTES: u64 = 10 << 30;

/// The smallest writable layer (ext4 and its journal need room of their own).
pub const MIN_STORAGE_BYTES: u64 = 32 << 20;

/// The largest writable layer `--storage-opt size=` takes (ext4 with 4 KiB blocks goes further;
/// this bounds a typo).
pub const MAX_STORAGE_BYTES: u64 = 16 << 40;

/// Most volumes a VM takes: moat-vmm has 19 virtio devices (GSIs 5..=23); the vsock, the image
/// and the scratch disk take three.
pub const MAX_VOLUMES: usize = 16;

/// Errors assembling the disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No image was located for the run.
    #[error("no image {0:?} located")]
    NoImage(String),
    /// Too many volumes.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A directory could not be packed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A volume is in use or unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A `--storage-opt` value moat does not take (clap names the flag and the value).
    #[error("{1}")]
    StorageOpt(String, &'static str),
    /// A bundle's bind-mounted files could not be copied.
    #[error("cannot copy the bind-mounted files into {}", dir.display())]
    CopyFiles {
        /// The staging directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An overlay root's layers could not be turned into disks.
    #[error(transparent)]
    Layers(#[from] LayerError),
    /// A pod's later container has files of its own in its snapshot.
    #[error("a pod's container starts from its image: its own layer {} must be empty", .0.display())]
    PodLayer(PathBuf),
    /// A pod's later container has a writable volume.
    #[error(
        "{0}: a pod's later container takes read-only volumes and file binds only (its disks \
         are read-only disk slots)"
    )]
    PodWritable(String),
    /// A pod's later container's file binds are too large to copy into the guest.
    #[error(
        "the bind-mounted files take {bytes} bytes; a pod's later container takes at most {} \
         (they are copied into its memory in the guest)",
        moat_protocol::COPY_VOLUME_MAX
    )]
    PodFiles {
        /// Their size.
        bytes: u64,
    },
    /// The scratch disk could not be made.
    #[error("cannot create the writable layer's disk {}: {detail}", path.display())]
    Scratch {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The disks of one VM and what keeps them valid: the volume locks and the scratch file.
#[derive(Debug)]
pub struct VmDisks {
    /// In guest order.
    pub disks: Vec<Disk>,
    /// The writable layer for the agent's request.
    pub upper: UpperLayer,
    _locks: VolumeLocks,
    _scratch: Option<Scratch>,
}

/// A scratch disk file, removed when dropped unless it is a container's that outlives its VM.
#[derive(Debug)]
struct Scratch {
    path: PathBuf,
    keep: bool,
}

/// The scratch disk of container `id` under `data_root`.
pub fn scratch_path(data_root: &Path, id: &str) -> PathBuf {
    data_root.join("scratch").join(format!("{id}.ext4"))
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the scratch disk");
        }
    }
}

/// Parses a `--storage-opt` value: `size=SIZE` (a docker-style size, as `-m` takes), from
/// [`MIN_STORAGE_BYTES`] to [`MAX_STORAGE_BYTES`]; the writable layer's size in bytes.
pub fn parse_storage_opt(text: &str) -> Result<u64, DiskError> {
    let bad = |why| DiskError::StorageOpt(text.to_owned(), why);
    let Some(value) = text.strip_prefix("size=") else {
        return Err(bad("the only storage option is size=SIZE (e.g. size=20g)"));
    };
    let bytes = moat_spec::parse::parse_size(value)
        .map_err(|_| bad("expected size=SIZE with a number and an optional unit k, m, g or t"))?;
    if bytes < MIN_STORAGE_BYTES {
        return Err(bad("the writable layer must be at least 32m"));
    }
    if bytes > MAX_STORAGE_BYTES {
        return Err(bad("the writable layer can be at most 16t"));
    }
    Ok(bytes)
}

/// The guest device of disk `index` (0 is the image, `/dev/vda`).
pub fn guest_device(index: usize) -> String {
    let letter = char::from(b'a' + index as u8);
    format!("/dev/vd{letter}")
}

/// The guest device of volume `index`: `/dev/vdb` for the first.
pub fn volume_device(index: usize) -> String {
    guest_device(index + 1)
}

/// Assembles the VM's disks: packs directories into ext4 images in the state directory, locks
/// image volumes, and (unless the root is read-only) creates the scratch disk under
/// `data_root`.
pub fn vm_disks(
    config: &RunConfig,
    assets: &Assets,
    state: &StateDir,
    data_root: &Path,
    state_root: &Path,
) -> Result<VmDisks, DiskError> {
    if config.volumes.len() > MAX_VOLUMES {
        return Err(ConfigError::TooManyVolumes(MAX_VOLUMES).into());
    }
    let readonly_root = config
        .spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly() == Some(true));
    let (root, root_dest, layered) =
        root_disk(config, assets, state.path(), data_root, readonly_root)?;
    let mut disks = vec![Disk {
        path: root,
        readonly: true,
    }];
    let mut destinations = vec![root_dest];
    for (i, volume) in config.volumes.iter().enumerate() {
        let (path, destination) = match &volume.source {
            VolumeSource::ImageFile(path) => (path.clone(), Some(volume.destination.as_str())),
            VolumeSource::Directory(dir) => {
                let image = state.path().join(format!("volume-{i}.ext4"));
                pack_directory(dir, &image, "volume")?;
                (image, None)
            }
            VolumeSource::Files(files) => {
                let image = state.path().join(format!("volume-{i}.ext4"));
                pack_files(files, &state.path().join(format!("volume-{i}.d")), &image)?;
                (image, None)
            }
        };
        disks.push(Disk {
            path,
            readonly: volume.readonly,
        });
        destinations.push(destination);
    }
    let (upper, scratch) = if readonly_root {
        (UpperLayer::Memory { mib: 1 }, None)
    } else {
        let seed = layered.as_ref().map(|l| (l, state));
        let scratch = if state.is_persistent() {
            reuse_scratch(data_root, &config.id, config.storage_bytes, seed)?
        } else {
            create_scratch(data_root, &config.id, config.storage_bytes, seed)?
        };
        disks.push(Disk {
            path: scratch.path.clone(),
            readonly: false,
        });
        destinations.push(Some("the writable layer"));
        let device = guest_device(disks.len() - 1);
        (UpperLayer::Disk { device }, Some(scratch))
    };
    let locks = lock_disks(&disks, &destinations, state_root)?;
    Ok(VmDisks {
        disks,
        upper,
        _locks: locks,
        _scratch: scratch,
    })
}

/// The read-only disks of a pod's later container (docs/vmm-control.md), made in its state
/// directory `dir`: its image (the overlay's image layers, cached as for a first container),
/// then its volumes. Its writes go to the pod's writable layer in the guest, so its own
/// snapshot layer must be empty (as containerd's CRI makes it) and its volumes read-only.
pub fn pod_disks(
    config: &RunConfig,
    assets: &Assets,
    dir: &Path,
    data_root: &Path,
) -> Result<Vec<PathBuf>, DiskError> {
    let (root, _, layered) = root_disk(config, assets, dir, data_root, false)?;
    let own = layered.iter().flat_map(|l| l.container.iter());
    if let Some(layer) = own.into_iter().find(|l| has_entries(l)) {
        return Err(DiskError::PodLayer(layer.clone()));
    }
    let mut disks = vec![root];
    for (i, volume) in config.volumes.iter().enumerate() {
        if is_copied(volume) {
            check_copy_size(volume)?;
        } else if !volume.readonly {
            return Err(DiskError::PodWritable(volume.destination.clone()));
        }
        let path = match &volume.source {
            VolumeSource::ImageFile(path) => path.clone(),
            VolumeSource::Directory(source) => {
                let image = dir.join(format!("volume-{i}.ext4"));
                pack_directory(source, &image, "volume")?;
                image
            }
            VolumeSource::Files(files) => {
                let image = dir.join(format!("volume-{i}.ext4"));
                pack_files(files, &dir.join(format!("volume-{i}.d")), &image)?;
                image
            }
        };
        disks.push(path);
    }
    Ok(disks)
}

/// Whether a pod's later container gets `volume` as a writable copy in the guest
/// ([`moat_protocol::VolumeSpec::copy`]): its writable file binds.
pub fn is_copied(volume: &crate::volumes::Volume) -> bool {
    !volume.readonly && matches!(volume.source, VolumeSource::Files(_))
}

/// Refuses a copied volume whose files take more than [`moat_protocol::COPY_VOLUME_MAX`]
/// bytes in all.
fn check_copy_size(volume: &crate::volumes::Volume) -> Result<(), DiskError> {
    let VolumeSource::Files(files) = &volume.source else {
        return Ok(());
    };
    let mut bytes = 0;
    for file in files {
        let meta = std::fs::metadata(file).map_err(|source| DiskError::CopyFiles {
            dir: file.clone(),
            source,
        })?;
        bytes += meta.len();
    }
    if bytes > moat_protocol::COPY_VOLUME_MAX {
        return Err(DiskError::PodFiles { bytes });
    }
    Ok(())
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// The image disk, its name in messages (`None` for one the run made), and the layers of a
/// bundle root that is an overlay (docs/docker.md): its image layers as a cached image, its
/// container layers for the writable layer. A read-only root or a plain directory is packed
/// whole, as it is.
fn root_disk(
    config: &RunConfig,
    assets: &Assets,
    state: &Path,
    data_root: &Path,
    readonly_root: bool,
) -> Result<(PathBuf, Option<&'static str>, Option<LayeredRoot>), DiskError> {
    let dir = match &config.rootfs {
        Rootfs::Image(name) => {
            let image = assets.image.clone();
            let image = image.ok_or_else(|| DiskError::NoImage(name.clone()))?;
            return Ok((image, Some("/"), None));
        }
        Rootfs::Directory(dir) => dir,
    };
    if let Some(layered) = layered_root(dir).filter(|_| !readonly_root) {
        let work = state.join("layers.mnt");
        let image = image_disk(data_root, &layered, &work)?;
        return Ok((image, None, Some(layered)));
    }
    let image = state.join("rootfs.ext4");
    pack_directory(dir, &image, "rootfs")?;
    Ok((image, None, None))
}

/// What a new scratch disk starts with: the container's own layers as its upper directory,
/// staged in the state directory and removed once the disk is made.
struct ScratchContent {
    dir: PathBuf,
}

impl ScratchContent {
    fn stage(layered: &LayeredRoot, state: &StateDir, id: &str) -> Result<Self, DiskError> {
        let dir = state.path().join("scratch.d");
        let _ = std::fs::remove_dir_all(&dir);
        let content = Self { dir };
        let upper = content.dir.join("containers").join(id).join("upper");
        copy_container_layers(layered, &upper)?;
        Ok(content)
    }
}

impl Drop for ScratchContent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies `files` into `stage` as `0`, `1`... and packs it into `image` (the stage goes after).
fn pack_files(files: &[PathBuf], stage: &Path, image: &Path) -> Result<(), DiskError> {
    let _ = std::fs::remove_dir_all(stage);
    let copied = std::fs::create_dir(stage).and_then(|()| {
        files
            .iter()
            .enumerate()
            .try_for_each(|(k, f)| std::fs::copy(f, stage.join(k.to_string())).map(drop))
    });
    let packed = copied
        .map_err(|source| DiskError::CopyFiles {
            dir: stage.to_owned(),
            source,
        })
        .and_then(|()| Ok(pack_directory(stage, image, "files")?));
    let _ = std::fs::remove_dir_all(stage);
    packed
}

/// Locks every disk but the packed directories (the run's own files): the root image shared,
/// the image volumes as attached, the scratch disk exclusive, so no other VM can attach any of
/// them read-write. `destinations[i]` names disk i in messages; `None` for a packed one.
fn lock_disks(
    disks: &[Disk],
    destinations: &[Option<&str>],
    state_root: &Path,
) -> Result<VolumeLocks, LockError> {
    let attaches: Vec<Attach<'_>> = disks
        .iter()
        .zip(destinations)
        .filter_map(|(d, dest)| {
            dest.map(|destination| Attach {
                path: &d.path,
                destination,
                readonly: d.readonly,
            })
        })
        .collect();
    lock_all(&attaches, state_root)
}

/// The container layers a new scratch disk starts with, and the state dir to stage them in.
type Seed<'a> = Option<(&'a LayeredRoot, &'a StateDir)>;

/// Creates `<data_root>/scratch/<id>.ext4`: a sparse file of `bytes` with an empty ext4 (4 MiB
/// allocated for 10 GiB; about 20 ms), or one that holds `seed`'s layers as the container's
/// upper directory. A file left by a run that was killed is replaced: the caller holds the id's
/// state directory.
fn create_scratch(
    data_root: &Path,
    id: &str,
    bytes: u64,
    seed: Seed<'_>,
) -> Result<Scratch, DiskError> {
    let dir = data_root.join("scratch");
    let path = dir.join(format!("{id}.ext4"));
    let failed = |detail: String| DiskError::Scratch {
        path: path.clone(),
        detail,
    };
    make_private_dir(data_root).map_err(failed)?;
    make_private_dir(&dir).map_err(failed)?;
    let _ = std::fs::remove_file(&path);
    // O_CREAT|O_EXCL: never through a link left in its place.
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| failed(e.to_string()))?;
    let scratch = Scratch {
        path: path.clone(),
        keep: false,
    };
    file.set_len(bytes).map_err(|e| failed(e.to_string()))?;
    // mkfs opens the very file created above, whatever happens to the name meanwhile.
    let by_fd = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ));
    let content = seed
        .map(|(layered, state)| ScratchContent::stage(layered, state, id))
        .transpose()?;
    mkfs_scratch(&by_fd, content.as_ref().map(|c| c.dir.as_path())).map_err(failed)?;
    drop(file);
    tracing::debug!(path = %path.display(), bytes, "scratch disk created");
    Ok(scratch)
}

/// The scratch disk of a container that outlives its VM: the one its last VM left (its
/// writable layer as it was), or a new one; kept when the VM ends.
fn reuse_scratch(
    data_root: &Path,
    id: &str,
    bytes: u64,
    seed: Seed<'_>,
) -> Result<Scratch, DiskError> {
    let path = scratch_path(data_root, id);
    let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
    let mut scratch = if is_file {
        Scratch { path, keep: false }
    } else {
        create_scratch(data_root, id, bytes, seed)?
    };
    scratch.keep = true;
    Ok(scratch)
}

/// Makes `dir` (0700) unless it exists; either way it must be a real directory of ours that
/// nobody else can write to, or a file in it could be swapped for a link.
pub(crate) fn make_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other.map_err(|e| format!("cannot create {}: {e}", dir.display()))?,
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    if !meta.is_dir() || !ours || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory owned by uid {} and writable by nobody else",
            dir.display(),
            rustix::process::geteuid().as_raw()
        ));
    }
    Ok(())
}

/// `mkfs.ext4` on the sparse file, keeping its size.
fn mkfs_scratch(path: &Path, content: Option<&Path>) -> Result<(), String> {
    let mut mkfs = e2fsprogs("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", "moat-scratch", "-m", "0"]);
    if let Some(dir) = content {
        mkfs.arg("-d").arg(dir);
    }
    mkfs
        // mke2fs discards (punches) a file first, which reads back as zeros: its inode tables
        // are then marked zeroed, so the guest's ext4 does not zero them in the background.
        .args(["-E", "lazy_journal_init=1"])
        .arg(path);
    run_e2fsprogs(mkfs, "mkfs.ext4")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn storage_opts() {
        assert_eq!(parse_storage_opt("size=128m").unwrap(), 128 << 20);
        assert_eq!(parse_storage_opt("size=2G").unwrap(), 2 << 30);
        assert_eq!(parse_storage_opt("size=1gb").unwrap(), 1 << 30);
        assert_eq!(parse_storage_opt("size=33554432").unwrap(), 32 << 20);
        for bad in [
            "size=",
            "size=1m",
            "size=-1g",
            "size=17t",
            "size=x",
            "dm.basesize=1g",
            "size=99999999999t",
        ] {
            assert!(
                matches!(parse_storage_opt(bad), Err(DiskError::StorageOpt(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_scratch_directory_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("scratch-dir");
        let dir = tmp.path().join("scratch");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_scratch(tmp.path(), "c1", 64 << 20, None).unwrap_err();
        assert!(err.to_string().contains("writable by nobody else"), "{err}");
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &dir).unwrap();
        assert!(create_scratch(tmp.path(), "c1", 64 << 20, None).is_err());
    }

    #[test]
    fn guest_devices() {
        assert_eq!(guest_device(0), "/dev/vda");
        assert_eq!(volume_device(0), "/dev/vdb");
        assert_eq!(volume_device(MAX_VOLUMES - 1), "/dev/vdq");
        assert_eq!(guest_device(MAX_VOLUMES + 1), "/dev/vdr");
    }

    #[test]
    fn scratch_is_sparse_ext4_and_goes_when_dropped() {
        let tmp = TempDir::new("scratch");
        let scratch = create_scratch(tmp.path(), "c1", 1 << 30, None).unwrap();
        let path = tmp.path().join("scratch/c1.ext4");
        assert_eq!(scratch.path, path);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        let out = Command::new("dumpe2fs").arg(&path).output().unwrap();
        let groups = String::from_utf8_lossy(&out.stdout);
        // No background zeroing in the guest: every group's inode table is marked zeroed.
        let group_lines = groups
            .lines()
            .filter(|l| l.starts_with("Group ") && l.contains("(Blocks"));
        assert!(group_lines.clone().count() > 1);
        assert!(
            group_lines.clone().all(|l| l.contains("ITABLE_ZEROED")),
            "{groups}"
        );
        use std::os::unix::fs::MetadataExt;
        // Sparse: only the metadata mkfs wrote is allocated.
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "{} bytes",
            meta.blocks() * 512
        );
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("moat-scratch"), "{text}");
        // A leftover of the same id is replaced.
        std::mem::forget(scratch);
        let again = create_scratch(tmp.path(), "c1", 64 << 20, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);
        drop(again);
        assert!(!path.exists());
    }

    #[test]
    fn a_members_writable_file_binds_are_copied_up_to_the_limit() {
        let tmp = TempDir::new("copied");
        let small = tmp.path().join("hosts");
        std::fs::write(&small, "127.0.0.1 localhost\n").unwrap();
        let big = tmp.path().join("big");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(moat_protocol::COPY_VOLUME_MAX + 1).unwrap();
        let volume = |file: &Path, readonly| crate::volumes::Volume {
            source: VolumeSource::Files(vec![file.to_path_buf()]),
            destination: "/etc/hosts".into(),
            readonly,
        };
        assert!(is_copied(&volume(&small, false)));
        assert!(!is_copied(&volume(&small, true)));
        assert!(!is_copied(&volume(&big, true)));
        check_copy_size(&volume(&small, false)).unwrap();
        let err = check_copy_size(&volume(&big, false)).unwrap_err();
        assert!(matches!(err, DiskError::PodFiles { bytes } if bytes == (16 << 20) + 1));
        assert!(err.to_string().contains("at most 16777216"), "{err}");
    }
}
