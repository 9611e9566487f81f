use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::EntryType;

use super::*;
use crate::testutil::{gzip, sha256, zstd, Layer, TempDir, MTIME};

const DIGEST: &str = "sha256:feedface";

fn apply(root: &Path, blob: &[u8]) -> Result<LayerStats, LayerError> {
    apply_layer(root, &mut &blob[..], DIGEST)
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// A layer with a bit of everything, for the lower layers.
fn base() -> Vec<u8> {
    Layer::new()
        .dir("etc/", 0o755, MTIME)
        .file("etc/passwd", b"root:x:0:0")
        .file("etc/gone", b"x")
        .dir("gone/", 0o755, MTIME)
        .file("gone/inner", b"x")
        .dir("opt/", 0o755, MTIME)
        .file("opt/old", b"old")
        .dir("opt/sub/", 0o755, MTIME)
        .file("opt/sub/deep", b"deep")
        .dir("keep/", 0o755, MTIME)
        .file("keep/a", b"a")
        .file("replaced", b"file")
        .dir("dirfile/", 0o755, MTIME)
        .file("dirfile/x", b"x")
        .tar()
}

#[test]
fn whiteouts_and_opaque_directories() {
    let tmp = TempDir::new("whiteouts");
    let root = tmp.path();
    apply(root, &base()).unwrap();
    let upper = Layer::new()
        .file("etc/.wh.gone", b"")
        .file(".wh.gone", b"")
        // Same-layer entries before the marker survive it, as do those after.
        .file("opt/new", b"new")
        .dir("opt/sub/", 0o755, MTIME)
        .file("opt/sub/mine", b"mine")
        .file("opt/.wh..wh..opq", b"")
        .file("opt/after", b"after")
        // A whiteout of an entry of this layer only hides the lower content under it.
        .dir("keep/", 0o755, MTIME)
        .file("keep/b", b"b")
        .file(".wh.keep", b"")
        .file(".wh..wh.plnk", b"")
        .tar();
    let stats = apply(root, &upper).unwrap();
    assert_eq!(stats.entries, 11);
    assert!(exists(&root.join("etc/passwd")));
    for gone in ["etc/gone", "gone", "opt/old", "opt/sub/deep", "keep/a"] {
        assert!(!exists(&root.join(gone)), "{gone} is still there");
    }
    for kept in ["opt/new", "opt/sub/mine", "opt/after", "keep/b"] {
        assert!(exists(&root.join(kept)), "{kept} is gone");
    }
    for marker in [
        "etc/.wh.gone",
        ".wh.gone",
        "opt/.wh..wh..opq",
        ".wh..wh.plnk",
    ] {
        assert!(!exists(&root.join(marker)), "{marker} is in the tree");
    }
}

#[test]
fn entry_kinds_and_metadata() {
    let tmp = TempDir::new("kinds");
    let root = tmp.path();
    apply(root, &base()).unwrap();
    let caps: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let long = format!("{}/file", "d".repeat(150));
    let upper = Layer::new()
        .dir("bin/", 0o755, 1_500_000_000)
        .file_with("bin/su", b"#!", 0o4755, (1000, 1000), 1_400_000_000)
        .hard_link("bin/su2", "bin/su")
        .symlink("bin/sh", "/bin/busybox")
        .pax(&[
            ("SCHILY.xattr.user.moat", b"1"),
            ("SCHILY.xattr.security.capability", caps),
        ])
        .file("bin/ping", b"ping")
        .pax(&[("mtime", b"1300000000.123456789")])
        .file("nanos", b"")
        .node(EntryType::Fifo, "run/fifo", 0, 0)
        .node(EntryType::Char, "dev/null", 1, 3)
        .dir("tmp/", 0o1777, 1_200_000_000)
        .dir("etc/", 0o700, 1_100_000_000)
        .dir("replaced/", 0o755, MTIME)
        .file("dirfile", b"now a file")
        .long_file(&long, b"long")
        .tar();
    apply(root, &upper).unwrap();

    let su = fs::symlink_metadata(root.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!(
        (su.uid(), su.gid(), su.mtime()),
        (1000, 1000, 1_400_000_000)
    );
    let su2 = fs::symlink_metadata(root.join("bin/su2")).unwrap();
    assert_eq!((su.nlink(), su2.ino()), (2, su.ino()));
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let sh = fs::symlink_metadata(root.join("bin/sh")).unwrap();
    assert_eq!(sh.mtime(), MTIME as i64);
    assert_eq!(xattr(&root.join("bin/ping"), "user.moat"), b"1");
    assert_eq!(xattr(&root.join("bin/ping"), "security.capability"), caps);
    let nanos = fs::symlink_metadata(root.join("nanos")).unwrap();
    assert_eq!(
        (nanos.mtime(), nanos.mtime_nsec()),
        (1_300_000_000, 123_456_789)
    );
    let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o620)
    );
    let tmpdir = fs::symlink_metadata(root.join("tmp")).unwrap();
    assert_eq!(
        (tmpdir.mode() & 0o7777, tmpdir.mtime()),
        (0o1777, 1_200_000_000)
    );
    // Directory mtimes hold although children came after them.
    let bin = fs::symlink_metadata(root.join("bin")).unwrap();
    assert_eq!(bin.mtime(), 1_500_000_000);
    // An existing directory is kept, its metadata updated.
    let etc = fs::symlink_metadata(root.join("etc")).unwrap();
    assert_eq!((etc.mode() & 0o7777, etc.mtime()), (0o700, 1_100_000_000));
    assert!(exists(&root.join("etc/passwd")));
    assert!(fs::symlink_metadata(root.join("replaced"))
        .unwrap()
        .is_dir());
    assert_eq!(fs::read(root.join("dirfile")).unwrap(), b"now a file");
    assert_eq!(fs::read(root.join(&long)).unwrap(), b"long");
}

#[test]
fn compression_and_diff_ids() {
    let tar = base();
    for (blob, compression) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
        (zstd(&tar), Compression::Zstd),
    ] {
        let tmp = TempDir::new("compression");
        let stats = apply(tmp.path(), &blob).unwrap();
        assert_eq!(stats.compression, compression);
        assert_eq!(stats.diff_id, sha256(&tar), "{compression:?}");
        assert_eq!(stats.tar_bytes, tar.len() as u64);
        assert_eq!((stats.entries, stats.bytes), (14, 25));
        assert_eq!(fs::read(tmp.path().join("opt/sub/deep")).unwrap(), b"deep");
    }
    let tmp = TempDir::new("garbage");
    let err = apply(tmp.path(), &gzip(b"not a tar")[..8]).unwrap_err();
    assert!(matches!(err, LayerError::Read { .. }), "{err}");
}

/// A tree `root` in a directory with a canary file `outside/canary` next to it.
struct Hostile {
    tmp: TempDir,
}

impl Hostile {
    fn new() -> Hostile {
        let tmp = TempDir::new("hostile");
        fs::create_dir_all(tmp.path().join("a/b/root")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/canary"), b"canary").unwrap();
        Hostile { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("a/b/root")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Applies `blob`, expects a refusal naming the digest and `entry`, and nothing changed
    /// outside the root.
    fn refused(&self, blob: &[u8], entry: &str) -> String {
        let err = apply(&self.root(), blob).unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, LayerError::Refused { .. }), "{text}");
        assert!(
            text.contains(DIGEST) && text.contains(&format!("{entry:?}")),
            "{text}"
        );
        let names: Vec<_> = fs::read_dir(self.outside()).unwrap().collect();
        assert_eq!(names.len(), 1, "something was written outside: {text}");
        assert_eq!(fs::read(self.outside().join("canary")).unwrap(), b"canary");
        assert!(!exists(&self.tmp.path().join("x")) && !exists(&self.tmp.path().join("a/x")));
        text
    }
}

#[test]
fn hostile_layers_are_refused() {
    let h = Hostile::new();
    let out = h.outside();
    let out = out.to_str().unwrap();
    h.refused(&Layer::new().file("../../x", b"x").tar(), "../../x");
    h.refused(
        &Layer::new().file("ok/../../../x", b"x").tar(),
        "ok/../../../x",
    );
    let text = h.refused(
        &Layer::new()
            .symlink("evil", out)
            .file("evil/canary", b"pwned")
            .tar(),
        "evil/canary",
    );
    assert!(text.contains("symlink"), "{text}");
    h.refused(
        &Layer::new()
            .symlink("rel", "../../..")
            .file("rel/outside/new", b"x")
            .tar(),
        "rel/outside/new",
    );
    h.refused(
        &Layer::new()
            .symlink("etc", "/etc")
            .file("etc/moat-test-canary", b"x")
            .tar(),
        "etc/moat-test-canary",
    );
    assert!(!exists(Path::new("/etc/moat-test-canary")));
    h.refused(&Layer::new().hard_link("l", "../outside/canary").tar(), "l");
    h.refused(
        &Layer::new()
            .symlink("s", out)
            .hard_link("l", "s/canary")
            .tar(),
        "l",
    );
    h.refused(
        &Layer::new()
            .dir("d/", 0o755, MTIME)
            .hard_link("l", "d")
            .tar(),
        "l",
    );
    h.refused(&Layer::new().hard_link("l", "missing").tar(), "l");
    h.refused(
        &Layer::new()
            .symlink("s", out)
            .file("s/.wh.canary", b"")
            .tar(),
        "s/.wh.canary",
    );
    h.refused(
        &Layer::new()
            .symlink("s", out)
            .file("s/.wh..wh..opq", b"")
            .tar(),
        "s/.wh..wh..opq",
    );
    h.refused(
        &Layer::new().pax(&[("path", b"a\0b")]).file("x", b"").tar(),
        "a\0b",
    );
    let long = "d/".repeat(2100);
    h.refused(&Layer::new().long_file(&long, b"").tar(), &long);
}

#[test]
fn replacing_never_follows_symlinks() {
    let h = Hostile::new();
    let canary = h.outside().join("canary");
    let layer = Layer::new()
        .symlink("f", canary.to_str().unwrap())
        .file("f", b"replaced")
        .symlink("g", canary.to_str().unwrap())
        .hard_link("g", "f")
        .symlink("d", h.outside().to_str().unwrap())
        .dir("d/", 0o755, MTIME)
        .tar();
    apply(&h.root(), &layer).unwrap();
    assert_eq!(fs::read(&canary).unwrap(), b"canary");
    assert_eq!(fs::read(h.root().join("g")).unwrap(), b"replaced");
    assert!(fs::symlink_metadata(h.root().join("d")).unwrap().is_dir());
    assert_eq!(fs::read_dir(h.outside()).unwrap().count(), 1);
}

#[test]
fn too_many_entries() {
    let tmp = TempDir::new("many");
    let mut layer = Layer::new();
    for i in 0..5 {
        layer.file(&format!("f{i}"), b"");
    }
    let blob = layer.tar();
    let tree = Tree::open(tmp.path()).unwrap();
    let mut apply = Apply::new(tree, DIGEST);
    apply.max_entries = 4;
    let mut archive = tar::Archive::new(&blob[..]);
    let err = archive
        .entries()
        .unwrap()
        .try_for_each(|e| apply.entry(&mut e.unwrap()))
        .unwrap_err();
    assert!(matches!(err, LayerError::TooManyEntries { .. }), "{err}");
}

#[test]
fn paths_and_pax_times() {
    assert_eq!(normalize(b"/a/./b//c/").unwrap(), Path::new("a/b/c"));
    assert_eq!(normalize(b"./").unwrap(), Path::new(""));
    assert!(normalize(b"a/../b").is_err());
    assert!(normalize(b"a\0b").is_err());
    assert!(normalize(&[b'a'; MAX_PATH + 1]).is_err());
    let t = pax_time(b"12.5").unwrap();
    assert_eq!((t.tv_sec, t.tv_nsec), (12, 500_000_000));
    assert!(pax_time(b"12.x").is_none());
    assert!(whiteout(Path::new("a/.wh.")).is_err());
    assert!(whiteout(Path::new("a/.wh..")).is_err());
}

#[test]
fn bounds_and_overlay_tricks() {
    let tmp = TempDir::new("bounds");
    let root = tmp.path();
    let deep = format!("{}f", "d/".repeat(MAX_DEPTH));
    let err = apply(root, &Layer::new().long_file(&deep, b"x").tar())
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 256 components"), "{err}");
    let err = apply(root, &Layer::new().node(EntryType::Char, "wh", 0, 0).tar())
        .unwrap_err()
        .to_string();
    assert!(err.contains("overlay whiteout"), "{err}");
    // A whiteout of something absent: nothing to do, no directory made for it.
    apply(root, &Layer::new().file("nothere/.wh.x", b"").tar()).unwrap();
    assert!(!exists(&root.join("nothere")));
    // overlayfs' attributes are not an image's to set; others are kept.
    let layer = Layer::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.kept", b"1"),
        ])
        .file("o", b"x")
        .tar();
    apply(root, &layer).unwrap();
    assert_eq!(xattr(&root.join("o"), "user.kept"), b"1");
    let mut buf = [0u8; 8];
    assert!(rustix::fs::lgetxattr(root.join("o"), "trusted.overlay.opaque", &mut buf).is_err());
}

#[test]
fn a_layer_may_replace_its_own_directory() {
    let tmp = TempDir::new("replace-own");
    let root = tmp.path();
    let layer = Layer::new()
        .dir("d/", 0o755, MTIME)
        .file("d/x", b"x")
        .file(".wh.d", b"")
        .symlink("d", "elsewhere")
        .tar();
    apply(root, &layer).unwrap();
    assert_eq!(
        fs::read_link(root.join("d")).unwrap(),
        Path::new("elsewhere")
    );
}
