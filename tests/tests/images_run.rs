//! `moat run IMAGE`: images pulled from a real registry (started here) and loaded from archives,
//! checked from inside the VM: the tree the layers make, and docker's Entrypoint/Cmd/Env/
//! WorkingDir/User rules. Each test boots real microVMs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_tests::registry::{docker_archive, push};
use moat_tests::registry::{Compression, Layer, Meta};
use moat_tests::registry::{Image, ImageConfig, OciLayout};
use moat_tests::registry::{Registry, RegistryOpts};
use moat_tests::{moat_bin, moat_with_env, vm_available, Outcome, ProbeVolume};

const TIMEOUT: Duration = Duration::from_secs(600);

/// A private data root for one test (on the data disk where there is one).
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let base = Path::new("/var/lib/moat");
        let base = if base.is_dir() {
            base
        } else {
            Path::new("/var/tmp")
        };
        let dir = base.join(format!("images-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Root(dir)
    }

    fn moat(&self, args: &[&str]) -> Outcome {
        let env: [(&str, &OsStr); 1] = [("MOAT_DATA_ROOT", self.0.as_os_str())];
        moat_with_env(args, None, TIMEOUT, &env)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.moat(args);
        o.expect_code(0);
        o.out()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(what: &str) -> PathBuf {
    let dir = Path::new("/var/tmp").join(format!("moat-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve(registry: &Registry, image: Image, reference: &str) {
    let dir = tempdir(&format!("layout-{}", reference.replace([':', '/'], "-")));
    let written = OciLayout::single(image).write(&dir, "t");
    push(&written, registry, reference);
    let _ = std::fs::remove_dir_all(dir);
}

/// A base, then a layer with each kind of change the tree check looks for.
fn tree_image() -> Image {
    let base = Layer::busybox()
        .dir("gone/")
        .file("gone/file", "old\n")
        .dir("opaque/")
        .file("opaque/lower", "lower\n")
        .file("deleted", "x\n")
        .compression(Compression::Gzip);
    let top = Layer::new()
        .whiteout("deleted")
        .whiteout("gone")
        .opaque("opaque")
        .file("opaque/upper", "upper\n")
        .file("data/original", "linked\n")
        .hardlink("data/link", "data/original")
        .symlink("data/sym", "original")
        .file("data/suid", "#!/bin/sh\n")
        .meta(Meta {
            mode: 0o4755,
            uid: 1000,
            gid: 1000,
            mtime: 1_600_000_000,
        })
        .file("data/xattr", "x\n")
        .xattr("user.moat", "1")
        .fifo("data/fifo")
        .char_device("data/null", 1, 3)
        .compression(Compression::Zstd);
    Image::new(ImageConfig::default()).layer(base).layer(top)
}

#[test]
fn the_layers_make_the_tree_the_image_describes() {
    if !vm_available("the_layers_make_the_tree_the_image_describes") {
        return;
    }
    let root = Root::new("tree");
    let registry = Registry::start(RegistryOpts::plain());
    serve(&registry, tree_image(), "tree:1");
    let name = format!("{}/tree:1", registry.addr());
    root.ok(&["pull", &name]);
    let probe = ProbeVolume::new();
    let script = "ls /gone /deleted 2>&1; ls /opaque; \
                  stat -c '%n %a %u:%g %h %F %Y' /data/original /data/link /data/suid; \
                  readlink /data/sym; cat /data/sym; \
                  stat -c '%n %F %t:%T' /data/fifo /data/null; \
                  /probe/moat-probe getxattr /data/xattr user.moat";
    let volume = probe.volume_arg();
    let out = root.ok(&[
        "run",
        "--privileged",
        "-v",
        &volume,
        &name,
        "sh",
        "-c",
        script,
    ]);
    let want = "ls: /gone: No such file or directory\n\
                ls: /deleted: No such file or directory\n\
                upper\n\
                /data/original 644 0:0 2 regular file 1700000000\n\
                /data/link 644 0:0 2 regular file 1700000000\n\
                /data/suid 4755 1000:1000 1 regular file 1600000000\n\
                original\n\
                linked\n\
                /data/fifo fifo 0:0\n\
                /data/null character special file 1:3\n\
                1\n\
                getxattr ok\n";
    assert_eq!(out, want);
}

fn config_image() -> Image {
    Image::new(ImageConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo \"$FOO $PWD $0\"; id".into()]),
        env: vec!["PATH=/bin".into(), "FOO=from-image".into()],
        working_dir: Some("/srv".into()),
        user: Some("app".into()),
        ..ImageConfig::default()
    })
    .layer(Layer::busybox().dir("srv/").mode(0o755))
}

#[test]
fn entrypoint_cmd_env_workdir_and_user_as_docker_combines_them() {
    if !vm_available("entrypoint_cmd_env_workdir_and_user_as_docker_combines_them") {
        return;
    }
    let root = Root::new("config");
    let registry = Registry::start(RegistryOpts::plain());
    serve(&registry, config_image(), "conf:1");
    let name = format!("{}/conf:1", registry.addr());
    // Pulled by `moat run` itself (--pull missing).
    let out = root.ok(&["run", &name]);
    assert_eq!(
        out,
        "from-image /srv /bin/sh\nuid=1000(app) gid=1000(app) groups=1000(app)\n"
    );
    let out = root.ok(&[
        "run",
        "-e",
        "FOO=flag",
        "-w",
        "/tmp",
        "-u",
        "0",
        &name,
        "echo \"$FOO $PWD\"; id -u",
    ]);
    assert_eq!(out, "flag /tmp\n0\n");
    let out = root.ok(&[
        "run",
        "--pull",
        "never",
        "--entrypoint",
        "/bin/echo",
        &name,
        "hi",
    ]);
    assert_eq!(out, "hi\n");
    let o = root.moat(&["run", "--entrypoint", "", &name]);
    o.expect_code(125);
    assert!(
        o.err().contains("no command specified"),
        "{}",
        o.diagnostics()
    );
}

#[test]
fn loaded_images_run_and_rmi_during_a_run_keeps_the_run_whole() {
    if !vm_available("loaded_images_run_and_rmi_during_a_run_keeps_the_run_whole") {
        return;
    }
    let root = Root::new("load");
    let dir = tempdir("archive");
    let image =
        Image::new(ImageConfig::default()).layer(Layer::busybox().file("srv-data", "loaded\n"));
    let written = OciLayout::single(image).write(&dir.join("layout"), "t");
    let archive = dir.join("saved.tar");
    docker_archive(&written, &archive, "saved/app:1");
    root.ok(&["load", "-i", archive.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);

    let mut child = std::process::Command::new(moat_bin())
        .args([
            "run",
            "saved/app:1",
            "sh",
            "-c",
            "echo ready; sleep 10; cat /srv-data",
        ])
        .env("MOAT_DATA_ROOT", &root.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let rmi = root.ok(&["rmi", "saved/app:1"]);
    assert!(rmi.contains("Deleted:"), "{rmi}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the run failed after rmi: {rest}");
    assert_eq!(rest, "loaded\n");
    assert_eq!(root.ok(&["images", "-q"]), "");
    let tmp = std::fs::read_dir(root.0.join("images/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "the run's hold on its image was not released");
}
