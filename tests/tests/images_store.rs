//! `moat pull`, `load`, `images`, `image inspect`, `rmi`, `login` against real registries started
//! here (Debian's docker-registry, plain and TLS with basic auth) and a hostile in-process one.
//! No VM: these run on the host (scripts/test). Each test has its own data root.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_tests::registry::{docker_archive, oci_archive, push};
use moat_tests::registry::{Compression, Layer};
use moat_tests::registry::{Faults, HostileAuth, HostileRegistry};
use moat_tests::registry::{Image, ImageConfig, OciLayout};
use moat_tests::registry::{Registry, RegistryOpts};
use moat_tests::{moat_bin, moat_with_env, Outcome};

const TIMEOUT: Duration = Duration::from_secs(300);

/// A data root and a docker config dir of one test, removed at the end.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn new(name: &str) -> Root {
        let dir = Path::new("/var/tmp").join(format!("moat-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("docker")).unwrap();
        Root { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn moat(&self, args: &[&str], stdin: Option<&[u8]>) -> Outcome {
        let data = self.data();
        let docker = self.dir.join("docker");
        let env: [(&str, &OsStr); 2] = [
            ("MOAT_DATA_ROOT", data.as_os_str()),
            ("DOCKER_CONFIG", docker.as_os_str()),
        ];
        moat_with_env(args, stdin, TIMEOUT, &env)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.moat(args, None);
        o.expect_code(0);
        o.out()
    }

    /// Runs a command that must fail: exit 125, one line on stderr containing `needle`, and the
    /// store as consistent as before.
    fn refused(&self, args: &[&str], needle: &str) -> String {
        let before = self.ok(&["images", "--digests"]);
        let blobs = self.files("blobs/sha256");
        let o = self.moat(args, None);
        o.expect_code(125);
        let err = o.err();
        assert_eq!(err.trim_end().lines().count(), 1, "one line:\n{err}");
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
        assert_eq!(self.ok(&["images", "--digests"]), before);
        assert_eq!(
            self.files("blobs/sha256"),
            blobs,
            "the failed command kept blobs"
        );
        self.assert_consistent();
        err
    }

    /// No temporary files, every blob hashes to its name, every image's blobs present.
    fn assert_consistent(&self) {
        let images = self.data().join("images");
        let tmp: Vec<_> = std::fs::read_dir(images.join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "left in tmp: {tmp:?}");
        for entry in std::fs::read_dir(images.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let digest = moat_tests::registry::sha256(&std::fs::read(&path).unwrap());
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(digest, format!("sha256:{name}"), "blob {name} is corrupt");
        }
        let ids = self.ok(&["images", "-q"]);
        for id in ids.lines() {
            self.ok(&["image", "inspect", id]);
        }
    }

    fn files(&self, sub: &str) -> usize {
        std::fs::read_dir(self.data().join("images").join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn app_image() -> Image {
    Image::new(ImageConfig {
        entrypoint: Some(vec!["/bin/echo".into()]),
        cmd: Some(vec!["hello".into()]),
        labels: [("team".to_owned(), "moat".to_owned())].into(),
        exposed_ports: vec!["80/tcp".into()],
        ..ImageConfig::default()
    })
    .layer(Layer::busybox().compression(Compression::Gzip))
    .layer(
        Layer::new()
            .dir("srv/")
            .file("srv/data", "one\n")
            .compression(Compression::Zstd),
    )
}

fn serve(registry: &Registry, image: Image, reference: &str) {
    let dir = tempdir("layout");
    let written = OciLayout::single(image).write(&dir, "t");
    push(&written, registry, reference);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = Path::new("/var/tmp").join(format!("moat-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn pull_list_inspect_and_remove_over_plain_http() {
    let root = Root::new("plain");
    let registry = Registry::start(RegistryOpts::plain());
    let name = format!("{}/team/app:1.4", registry.addr());
    serve(&registry, app_image(), "team/app:1.4");

    let out = root.ok(&["pull", &name]);
    assert_eq!(out.matches(": pull complete").count(), 2, "{out}");
    assert!(out.contains("Status: Downloaded newer image for"), "{out}");
    assert!(out.contains("filesystem ready"), "{out}");
    let again = root.ok(&["pull", &name]);
    assert_eq!(again.matches(": already exists").count(), 2, "{again}");
    assert!(
        !again.contains("filesystem ready"),
        "converted twice:\n{again}"
    );
    assert!(again.contains("Status: Image is up to date for"), "{again}");

    let list = root.ok(&["images"]);
    let header = list.lines().next().unwrap();
    assert!(header.starts_with("REPOSITORY"), "{list}");
    assert!(
        list.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{}/team/app   1.4", registry.addr())),
        "{list}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&root.ok(&["image", "inspect", "app:1.4"])).unwrap();
    let image = &inspect[0];
    assert_eq!(image["Config"]["Entrypoint"][0], "/bin/echo");
    assert_eq!(image["Config"]["Labels"]["team"], "moat");
    assert!(image["Config"]["ExposedPorts"]["80/tcp"].is_object());
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    let digest = image["RepoDigests"][0].as_str().unwrap().to_owned();
    assert!(digest.contains("@sha256:"), "{digest}");
    assert!(root
        .ok(&["images", "--digests"])
        .contains(digest.split('@').nth(1).unwrap()));
    let id = root.ok(&["images", "-q"]);
    assert_eq!(id.trim().len(), 12);
    root.assert_consistent();
    assert!(root.ok(&["system", "df"]).contains("Images"));

    let short = root.moat(&["rmi", "app:1.4"], None);
    short.expect_code(125);
    assert!(short.err().contains("did you mean"), "{}", short.err());
    let rmi = root.ok(&["rmi", &name]);
    assert!(
        rmi.contains("Untagged:") && rmi.contains("Deleted: sha256:"),
        "{rmi}"
    );
    assert_eq!(root.ok(&["images", "-q"]), "");
    assert_eq!(root.files("blobs/sha256"), 0, "blobs left after rmi");
    assert_eq!(
        std::fs::read_dir(root.data().join("images/rootfs"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some(OsStr::new("ext4")))
            .count(),
        0,
        "filesystems left after rmi"
    );
    root.refused(&["rmi", &name], &format!("No such image: {name}"));
}

#[test]
fn tls_registry_with_basic_auth_and_logins() {
    let root = Root::new("tls");
    let registry = Registry::start(RegistryOpts::tls_auth("tenant", "s3cret"));
    let ca = registry.ca_file().unwrap().to_str().unwrap().to_owned();
    let name = format!("{}/team/app:2", registry.addr());
    serve(&registry, app_image(), "team/app:2");

    root.refused(&["pull", "--tls-ca", &ca, &name], "refused access");
    root.refused(&["pull", &name], "certificate");
    let bad = root.moat(
        &[
            "login",
            "--tls-ca",
            &ca,
            "-u",
            "tenant",
            "-p",
            "wrong",
            registry.addr(),
        ],
        None,
    );
    bad.expect_code(125);
    assert!(bad.err().contains("refused access"), "{}", bad.err());
    let o = root.moat(
        &[
            "login",
            "--tls-ca",
            &ca,
            "-u",
            "tenant",
            "--password-stdin",
            registry.addr(),
        ],
        Some(b"s3cret\n"),
    );
    o.expect_code(0);
    assert!(o.out().contains("Login Succeeded"));
    let config = std::fs::read_to_string(root.dir.join("docker/config.json")).unwrap();
    assert!(config.contains(registry.addr()), "{config}");
    root.ok(&["pull", "--tls-ca", &ca, &name]);
    root.assert_consistent();
    assert!(root
        .ok(&["logout", registry.addr()])
        .contains("Removing login credentials"));
    root.ok(&["rmi", &name]);
    root.refused(&["pull", "--tls-ca", &ca, &name], "refused access");
}

#[test]
fn indexes_resolve_to_linux_amd64() {
    let root = Root::new("index");
    let registry = Registry::start(RegistryOpts::plain());
    let dir = tempdir("index");
    let written = OciLayout::multi_platform(app_image()).write(&dir.join("multi"), "t");
    push(&written, &registry, "multi:1");
    let none = OciLayout::without_amd64().write(&dir.join("none"), "t");
    push(&none, &registry, "noamd64:1");
    let _ = std::fs::remove_dir_all(&dir);

    root.ok(&["pull", &format!("{}/multi:1", registry.addr())]);
    let inspect = root.ok(&["image", "inspect", "multi:1"]);
    assert!(inspect.contains("\"Architecture\": \"amd64\""), "{inspect}");
    root.refused(
        &["pull", &format!("{}/noamd64:1", registry.addr())],
        "no linux/amd64 image in the index (it has: linux/arm64",
    );
}

/// A hostile registry serving an image of its own (`what` makes its layers unique, so no
/// layer is in the store already).
fn hostile(what: &str, faults: Faults) -> HostileRegistry {
    let image = Image::new(ImageConfig::default())
        .layer(
            Layer::new()
                .file("what", what.repeat((512 << 10) / what.len()).into_bytes())
                .compression(Compression::None),
        )
        .layer(Layer::busybox());
    let built = OciLayout::single(image).build();
    HostileRegistry::start("bad/app", "1", built, faults)
}

#[test]
fn hostile_registries_are_refused_and_leave_the_store_as_it_was() {
    let root = Root::new("hostile");
    let good = Registry::start(RegistryOpts::plain());
    serve(&good, app_image(), "ok:1");
    root.ok(&["pull", &format!("{}/ok:1", good.addr())]);

    let bad = hostile(
        "bad",
        Faults {
            bad_digest: true,
            ..Faults::default()
        },
    );
    let err = root.refused(&["pull", &bad.reference()], "does not match its digest");
    assert!(err.contains("sha256:"), "{err}");
    let cut = hostile(
        "cut",
        Faults {
            drop_halfway: true,
            ..Faults::default()
        },
    );
    root.refused(&["pull", &cut.reference()], "blob sha256:");
    let huge = hostile(
        "huge",
        Faults {
            huge_manifest: Some(8 << 20),
            ..Faults::default()
        },
    );
    root.refused(&["pull", &huge.reference()], "limit");
    root.refused(
        &["pull", &format!("{}/missing:1", good.addr())],
        "not found",
    );
    root.refused(&["pull", "127.0.0.1:1/x:1"], "127.0.0.1:1");
    root.refused(&["pull", "Bad/Name"], "invalid reference format");

    let bearer = hostile(
        "bearer",
        Faults {
            auth: HostileAuth::Bearer {
                token: "T0KEN".into(),
                basic: None,
            },
            ..Faults::default()
        },
    );
    root.ok(&["pull", &bearer.reference()]);
    assert!(
        bearer
            .requests()
            .iter()
            .any(|r| r.path.contains("/manifests/")
                && r.authorization.as_deref() == Some("Bearer T0KEN")),
        "{:?}",
        bearer.requests()
    );
    root.assert_consistent();
}

#[test]
fn hostile_layers_are_refused_naming_the_layer_and_entry() {
    let root = Root::new("escape");
    let registry = Registry::start(RegistryOpts::plain());
    for (repo, layer, entry) in [
        ("dotdot", Layer::escape_dotdot(), "../../etc/x"),
        ("symlink", Layer::escape_symlink(), "evil/passwd"),
    ] {
        let digest = layer.blob().digest.clone();
        let image = Image::new(ImageConfig::default())
            .layer(Layer::busybox())
            .layer(layer);
        serve(&registry, image, &format!("{repo}:1"));
        let err = root.refused(&["pull", &format!("{}/{repo}:1", registry.addr())], entry);
        assert!(err.contains(&digest), "{digest} not in {err}");
    }
    assert!(!Path::new("/etc/x").exists());
}

#[test]
fn a_killed_pull_leaves_nothing_the_next_command_cannot_clean() {
    let root = Root::new("kill");
    let slow = hostile(
        "slow",
        Faults {
            slow_layer: Some(Duration::from_millis(20)),
            ..Faults::default()
        },
    );
    let data = root.data();
    let mut child = std::process::Command::new(moat_bin())
        .args(["pull", &slow.reference()])
        .env("MOAT_DATA_ROOT", &data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        slow.wait_until(Duration::from_secs(60), |s| s.layer_bytes_sent() > 4096),
        "the pull never started its layer"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        root.files("tmp") > 0,
        "the killed pull left no partial layer to test with"
    );
    assert_eq!(root.ok(&["images", "-q"]), "");
    root.assert_consistent();
    let good = Registry::start(RegistryOpts::plain());
    serve(&good, app_image(), "bad/app:1");
    root.ok(&["pull", &format!("{}/bad/app:1", good.addr())]);
    root.assert_consistent();
}

#[test]
fn two_pulls_of_one_image_at_once() {
    let root = Root::new("twice");
    let registry = Registry::start(RegistryOpts::plain());
    serve(&registry, app_image(), "app:1");
    let name = format!("{}/app:1", registry.addr());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (name, data) = (name.clone(), root.data());
            std::thread::spawn(move || {
                std::process::Command::new(moat_bin())
                    .args(["pull", "-q", &name])
                    .env("MOAT_DATA_ROOT", data)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(root.ok(&["images", "-q"]).lines().count(), 1);
    root.assert_consistent();
}

#[test]
fn load_docker_save_and_oci_layout_archives() {
    let root = Root::new("load");
    let dir = tempdir("archives");
    let written = OciLayout::single(
        Image::new(ImageConfig::default()).layer(Layer::busybox().compression(Compression::Gzip)),
    )
    .write(&dir.join("layout"), "t");
    let docker_tar = dir.join("docker.tar");
    docker_archive(&written, &docker_tar, "saved/app:1.4");
    let oci_tar = dir.join("oci.tar");
    oci_archive(&written, &oci_tar, "ocitar/app:2");

    let bytes = std::fs::read(&docker_tar).unwrap();
    let o = root.moat(&["load"], Some(&bytes));
    o.expect_code(0);
    assert!(
        o.out().contains("Loaded image: saved/app:1.4"),
        "{}",
        o.out()
    );
    let out = root.ok(&["load", "-i", oci_tar.to_str().unwrap()]);
    assert!(out.contains("Loaded image: ocitar/app:2"), "{out}");
    let list = root.ok(&["images"]);
    assert!(
        list.contains("saved/app") && list.contains("ocitar/app"),
        "{list}"
    );
    root.assert_consistent();
    let garbage = root.moat(&["load"], Some(b"not a tar at all, just text"));
    garbage.expect_code(125);
    let _ = std::fs::remove_dir_all(&dir);
    root.assert_consistent();
}

/// Bytes that do not compress (an LCG's high bytes).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect()
}

#[test]
fn a_store_too_small_for_the_image_is_a_clear_error_and_keeps_nothing() {
    let root = Root::new("full");
    std::fs::create_dir_all(root.data()).unwrap();
    let data = root.data();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "moat-test-full"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "cannot mount a small tmpfs at {}",
        data.display()
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let registry = Registry::start(RegistryOpts::plain());
    let big = Image::new(ImageConfig::default())
        .layer(Layer::busybox())
        .layer(
            Layer::new()
                .file("big", noise(10 << 20))
                .compression(Compression::None),
        );
    serve(&registry, big, "big:1");
    let name = format!("{}/big:1", registry.addr());
    // Refused before the disk is full (half the free space is the layers' budget), or by the
    // disk itself: either way one line naming the layer.
    let err = root.refused(&["pull", &name], "layer sha256:");
    assert!(
        err.contains("half the space free") || err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(
        root.files("blobs/sha256"),
        0,
        "blobs of a failed pull were kept"
    );
}

#[test]
fn rmi_by_id_follows_docker_and_rmi_takes_no_guesses() {
    let root = Root::new("rmi");
    let registry = Registry::start(RegistryOpts::plain());
    for reference in ["team/app:1", "team/app:2", "other/app:1"] {
        serve(&registry, app_image(), reference);
        root.ok(&["pull", "-q", &format!("{}/{reference}", registry.addr())]);
    }
    let id = root.ok(&["images", "-q"]).trim().to_owned();
    assert_eq!(id.len(), 12, "one image under three names: {id}");
    root.refused(&["rmi", &id], "must be forced");
    root.ok(&["rmi", &format!("{}/other/app:1", registry.addr())]);
    // Both names left are in one repository: no -f needed.
    let out = root.ok(&["rmi", &id]);
    assert_eq!(out.matches("Untagged:").count(), 2, "{out}");
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(root.files("blobs/sha256"), 0);
    // Several names, one of them missing: the others go, and the command fails.
    serve(&registry, app_image(), "team/app:3");
    let name = format!("{}/team/app:3", registry.addr());
    root.ok(&["pull", "-q", &name]);
    let o = root.moat(&["rmi", "nosuch:1", &name], None);
    o.expect_code(125);
    assert!(o.out().contains("Deleted:"), "{}", o.out());
    assert_eq!(root.ok(&["images", "-q"]), "");
    root.assert_consistent();
}
