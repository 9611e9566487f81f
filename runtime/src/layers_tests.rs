use std::process::Command;

use super::*;
use crate::testutil::TempDir;

const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw
90 22 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/I:/var/lib/docker/overlay2/l/A,upperdir=/var/lib/docker/overlay2/abc/diff,workdir=/var/lib/docker/overlay2/abc/work
91 22 0:51 / /srv/with\\040space rw - overlay overlay rw,lowerdir=l/X:l/Y,upperdir=up,workdir=wk
92 22 0:52 / /srv/plain rw - tmpfs tmpfs rw
";

#[test]
fn overlay_options_of_a_mount_point() {
    let docker = overlay_options(MOUNTINFO, Path::new("/var/lib/docker/overlay2/abc/merged"));
    let (lowers, upper) = parse_options(&docker.expect("docker's overlay"));
    assert_eq!(
        lowers,
        [
            "/var/lib/docker/overlay2/l/I",
            "/var/lib/docker/overlay2/l/A"
        ]
    );
    assert_eq!(upper.as_deref(), Some("/var/lib/docker/overlay2/abc/diff"));
    let spaced = overlay_options(MOUNTINFO, Path::new("/srv/with space")).expect("escaped");
    assert_eq!(parse_options(&spaced).0, ["l/X", "l/Y"]);
    assert_eq!(overlay_options(MOUNTINFO, Path::new("/srv/plain")), None);
    assert_eq!(overlay_options(MOUNTINFO, Path::new("/srv")), None);
    assert_eq!(unescape("a\\040b\\134c\\0"), "a b\\c\\0");
}

/// Docker's overlay2 layout under `base`: layers `a` (bottom) and `b`, the container's `c-init`
/// and its upperdir, linked from `l/` as Docker does.
fn docker_layout(base: &Path) -> [PathBuf; 4] {
    let layer = |name: &str, files: &[(&str, &str)]| {
        let diff = base.join(name).join("diff");
        std::fs::create_dir_all(&diff).unwrap();
        for (path, text) in files {
            let file = diff.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        std::os::unix::fs::symlink(format!("../{name}/diff"), base.join("l").join(name)).unwrap();
        diff
    };
    std::fs::create_dir_all(base.join("l")).unwrap();
    let a = layer(
        "a",
        &[("etc/os", "a\n"), ("bin/tool", "a\n"), ("gone", "a\n")],
    );
    let b = layer("b", &[("etc/os", "b\n")]);
    let init = layer("c-init", &[(".dockerenv", ""), ("etc/hosts", "")]);
    let upper = base.join("c").join("diff");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/hosts"), "written\n").unwrap();
    std::fs::write(upper.join("new"), "upper\n").unwrap();
    [a, b, init, upper]
}

fn debugfs_cat(image: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_docker_overlay_becomes_a_cached_image_and_a_container_layer() {
    let tmp = TempDir::new("layers");
    let base = tmp.path().join("overlay2");
    let [a, b, init, upper] = docker_layout(&base);
    let merged = base.join("c").join("merged");
    let work = base.join("c").join("work");
    std::fs::create_dir_all(&merged).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let options = format!(
        "lowerdir=l/c-init:l/b:l/a,upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .current_dir(&base)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount an overlay here (needs root and overlayfs)");
        return;
    }
    let found = layered_root(&merged);
    let data_root = tmp.path().join("data");
    let result = found.clone().map(|root| {
        let first = image_disk(&data_root, &root, &tmp.path().join("m1")).unwrap();
        let again = image_disk(&data_root, &root, &tmp.path().join("m2")).unwrap();
        let stage = tmp.path().join("stage");
        copy_container_layers(&root, &stage).unwrap();
        (first, again, stage)
    });
    let _ = Command::new("umount").arg(&merged).status();
    let root = found.expect("the overlay's layers");
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(root.image, [canon(&b), canon(&a)]);
    assert_eq!(root.container, [canon(&upper), canon(&init)]);
    let (first, again, stage) = result.unwrap();
    assert_eq!(first, again, "one image for the same layers");
    assert_eq!(debugfs_cat(&first, "/etc/os"), "b\n");
    assert_eq!(debugfs_cat(&first, "/bin/tool"), "a\n");
    assert_eq!(
        debugfs_cat(&first, "/.dockerenv"),
        "",
        "the init layer is the container's"
    );
    assert_eq!(
        std::fs::read_to_string(stage.join("etc/hosts")).unwrap(),
        "written\n"
    );
    assert!(stage.join(".dockerenv").is_file());
    assert_eq!(
        std::fs::read_to_string(stage.join("new")).unwrap(),
        "upper\n"
    );
    // The layers' own directory is gone: prune removes the image made of them.
    assert_eq!(prune(&data_root), 0);
    std::fs::remove_dir_all(&a).unwrap();
    assert_eq!(prune(&data_root), 1);
    assert!(!first.exists());
}

#[test]
fn a_plain_directory_has_no_layers() {
    let tmp = TempDir::new("layers-plain");
    assert_eq!(layered_root(tmp.path()), None);
    assert_eq!(layered_root(&tmp.path().join("missing")), None);
}
