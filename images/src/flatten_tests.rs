use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use tar::EntryType;

use super::*;
use crate::testutil::{gzip, sha256, zstd, Layer as Tar, TempDir, MTIME};

/// Writes the layer `blob` (of the tar `tar`) as a blob file named `name` in `dir`.
fn layer(dir: &Path, name: &str, tar: &[u8], blob: &[u8]) -> Layer {
    let path = dir.join(name);
    fs::write(&path, blob).unwrap();
    Layer {
        blob: path,
        digest: format!("sha256:{name}"),
        diff_id: sha256(tar),
    }
}

/// A work directory, an output directory and two layers: a gzip base and a zstd upper layer.
struct Fixture {
    tmp: TempDir,
    layers: Vec<Layer>,
}

const CAPS: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

impl Fixture {
    fn new(name: &str) -> Fixture {
        let tmp = TempDir::new(name);
        for dir in ["work", "blobs", "images"] {
            fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        let base = Tar::new()
            .dir("etc/", 0o755, MTIME)
            .file("etc/passwd", b"root:x:0:0")
            .file("etc/gone", b"x")
            .dir("opt/", 0o755, MTIME)
            .file("opt/old", b"old")
            .tar();
        let upper = Tar::new()
            .file("etc/.wh.gone", b"")
            .file("opt/new", b"new")
            .file("opt/.wh..wh..opq", b"")
            .dir("bin/", 0o755, 1_500_000_000)
            .file_with("bin/su", b"#!", 0o4755, (1000, 1000), 1_400_000_000)
            .hard_link("bin/su2", "bin/su")
            .symlink("bin/sh", "/bin/busybox")
            .pax(&[
                ("SCHILY.xattr.user.moat", b"1"),
                ("SCHILY.xattr.security.capability", CAPS),
            ])
            .file("bin/ping", b"ping")
            .node(EntryType::Char, "dev/null", 1, 3)
            .node(EntryType::Fifo, "run/fifo", 0, 0)
            .pax(&[("mtime", b"1300000000.123456789")])
            .file("nanos", b"")
            .tar();
        let blobs = tmp.path().join("blobs");
        let layers = vec![
            layer(&blobs, "base", &base, &gzip(&base)),
            layer(&blobs, "upper", &upper, &zstd(&upper)),
        ];
        Fixture { tmp, layers }
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("images/image.ext4")
    }

    fn flatten(&self) -> Result<FlattenStats, FlattenError> {
        flatten(&self.layers, &self.work(), &self.out())
    }

    /// The work directory is empty and the image directory holds only `names`.
    fn assert_clean(&self, names: &[&str]) {
        assert_eq!(
            fs::read_dir(self.work()).unwrap().count(),
            0,
            "work dir not empty"
        );
        let mut found: Vec<String> = fs::read_dir(self.tmp.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, names);
    }
}

/// debugfs's output for `request` on `image`.
fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn layers_flatten_into_an_ext4_image() {
    let fx = Fixture::new("flatten");
    let stats = fx.flatten().unwrap();
    let diff_ids: Vec<String> = fx.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(stats.chain_id, chain_id(&diff_ids));
    assert_eq!(stats.layers.len(), 2);
    assert_eq!(stats.image_bytes, fs::metadata(fx.out()).unwrap().len());
    fx.assert_clean(&["image.ext4"]);
    let image = fx.out();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    let su = debugfs(&image, "stat /bin/su");
    assert!(su.contains("Mode:  04755"), "{su}");
    assert!(su.contains("User:  1000   Group:  1000"), "{su}");
    assert!(su.contains("Links: 2"), "{su}");
    let ea = debugfs(&image, "ea_list /bin/ping");
    assert!(
        ea.contains("user.moat") && ea.contains("security.capability"),
        "{ea}"
    );
    let null = debugfs(&image, "stat /dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let root = debugfs(&image, "ls /");
    assert!(!root.contains("lost+found"), "{root}");
    for gone in [
        "/etc/gone",
        "/opt/old",
        "/etc/.wh.gone",
        "/opt/.wh..wh..opq",
    ] {
        let st = debugfs(&image, &format!("stat {gone}"));
        assert!(st.contains("File not found"), "{gone}: {st}");
    }
    check_mounted(&image);
}

/// Loop-mounts `image` read-only in a private mount namespace of a thread and checks what a
/// guest would see.
fn check_mounted(image: &Path) {
    let image = image.to_owned();
    std::thread::spawn(move || {
        // SAFETY: the descriptor table stays shared (no CLONE_FILES).
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::FS) }.unwrap();
        let flags = MountPropagationFlags::REC | MountPropagationFlags::PRIVATE;
        rustix::mount::mount_change("/", flags).unwrap();
        let mnt = image.with_extension("mnt");
        fs::create_dir(&mnt).unwrap();
        let status = Command::new("mount")
            .arg("-o")
            .arg("loop,ro")
            .arg(&image)
            .arg(&mnt)
            .status();
        assert!(status.unwrap().success());
        let result = std::panic::catch_unwind(|| check_tree(&mnt));
        rustix::mount::unmount(&mnt, UnmountFlags::empty()).unwrap();
        fs::remove_dir(&mnt).unwrap();
        result.unwrap();
    })
    .join()
    .unwrap();
}

fn check_tree(root: &Path) {
    let su = fs::symlink_metadata(root.join("bin/su")).unwrap();
    assert_eq!(
        (su.mode() & 0o7777, su.uid(), su.nlink()),
        (0o4755, 1000, 2)
    );
    assert_eq!(su.mtime(), 1_400_000_000);
    assert_eq!(
        fs::symlink_metadata(root.join("bin")).unwrap().mtime(),
        1_500_000_000
    );
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(root.join("bin/ping"), "security.capability", &mut buf).unwrap();
    assert_eq!(&buf[..n], CAPS);
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(fs::read(root.join("opt/new")).unwrap(), b"new");
    assert!(fs::symlink_metadata(root.join("opt/old")).is_err());
    assert!(fs::symlink_metadata(root.join("lost+found")).is_err());
    let nanos = fs::symlink_metadata(root.join("nanos")).unwrap();
    // The tree has the nanoseconds; e2fsprogs 1.47.0's `mkfs.ext4 -d` copies whole seconds only.
    assert_eq!(nanos.mtime(), 1_300_000_000);
    assert!([0, 123_456_789].contains(&nanos.mtime_nsec()));
}

#[test]
fn a_failed_flatten_leaves_nothing() {
    let mut fx = Fixture::new("failed");
    fs::write(fx.out(), b"old image").unwrap();
    let evil = Tar::new()
        .symlink("evil", "/etc")
        .file("evil/x", b"x")
        .tar();
    let blobs = fx.tmp.path().join("blobs");
    fx.layers.push(layer(&blobs, "evil", &evil, &evil));
    let err = fx.flatten().unwrap_err();
    assert!(
        matches!(err, FlattenError::Layer(LayerError::Refused { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("sha256:evil"), "{err}");
    assert_eq!(fs::read(fx.out()).unwrap(), b"old image");
    fx.assert_clean(&["image.ext4"]);

    fs::remove_file(fx.out()).unwrap();
    fx.layers[2].blob = blobs.join("missing");
    let err = fx.flatten().unwrap_err();
    assert!(matches!(err, FlattenError::Blob { .. }), "{err}");
    fx.assert_clean(&[]);
}

#[test]
fn a_wrong_diff_id_is_refused() {
    let mut fx = Fixture::new("diffid");
    let actual = fx.layers[1].diff_id.clone();
    let wrong = sha256(b"something else");
    fx.layers[1].diff_id = wrong.clone();
    let err = fx.flatten().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FlattenError::DiffId { .. }), "{text}");
    assert!(
        text.contains("sha256:upper") && text.contains(&wrong) && text.contains(&actual),
        "{text}"
    );
    fx.assert_clean(&[]);
}

#[test]
fn chain_ids() {
    let a = "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
    let b = "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d";
    let c = "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6";
    // printf 'A B' | sha256sum, and so on (computed with coreutils).
    let ab = "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676";
    let abc = "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106";
    let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(chain_id(&[]), "");
    assert_eq!(chain_id(&ids(&[a])), a);
    assert_eq!(chain_id(&ids(&[a, b])), ab);
    assert_eq!(chain_id(&ids(&[a, b, c])), abc);
}

/// The mountinfo line of the mount at `path`, if any.
fn mount_line(mountinfo: &str, path: &Path) -> Option<String> {
    let path = path.to_str().unwrap();
    mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path))
        .map(str::to_owned)
}

#[test]
fn the_tree_is_mounted_nodev_nosuid_noexec_only_in_the_thread() {
    let tmp = TempDir::new("namespace");
    let tree = tmp.path().to_owned();
    let inner = tree.clone();
    let (own, child) = std::thread::spawn(move || {
        enter_private_namespace(&inner).unwrap();
        let own = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let child = Command::new("cat")
            .arg("/proc/self/mountinfo")
            .output()
            .unwrap();
        let child = String::from_utf8(child.stdout).unwrap();
        rustix::mount::unmount(&inner, UnmountFlags::DETACH).unwrap();
        (mount_line(&own, &inner), mount_line(&child, &inner))
    })
    .join()
    .unwrap();
    let own = own.expect("the thread sees no mount at the tree");
    let options = own.split(' ').nth(5).unwrap();
    for option in ["nodev", "nosuid", "noexec"] {
        assert!(options.split(',').any(|o| o == option), "{own}");
    }
    assert_eq!(
        child.as_deref(),
        Some(own.as_str()),
        "the child has another namespace"
    );
    let host = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    assert_eq!(mount_line(&host, &tree), None);
}

/// A few hundred random files of ~100 MiB in all, flattened (`cargo test -- --ignored --nocapture`).
#[test]
#[ignore]
fn timing_a_100_mib_layer() {
    let tmp = TempDir::new("timing");
    let mut tar = Tar::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..400 {
        let data: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        tar.file(&format!("d{}/f{i}", i % 20), &data);
    }
    time_flatten(tmp.path(), "random", &tar.tar());
    let mut tar = Tar::new();
    for i in 0..20_000 {
        tar.file(&format!("d{}/f{i}", i % 200), &[i as u8; 5000]);
    }
    time_flatten(tmp.path(), "small", &tar.tar());
}

/// Flattens `tar` as a plain, a gzip and a zstd layer, and prints how long each took.
fn time_flatten(dir: &Path, what: &str, tar: &[u8]) {
    for (kind, blob) in [
        ("plain", tar.to_vec()),
        ("gzip", gzip(tar)),
        ("zstd", zstd(tar)),
    ] {
        let name = format!("{what}-{kind}");
        let work = dir.join(format!("work-{name}"));
        fs::create_dir(&work).unwrap();
        let layers = [layer(dir, &name, tar, &blob)];
        let start = std::time::Instant::now();
        let stats = flatten(&layers, &work, &dir.join(format!("{name}.ext4"))).unwrap();
        eprintln!(
            "{name}: {} MiB tar, {} MiB blob, {} MiB image, {} entries, {:.2?}",
            tar.len() >> 20,
            blob.len() >> 20,
            stats.image_bytes >> 20,
            stats.layers[0].entries,
            start.elapsed()
        );
    }
}
