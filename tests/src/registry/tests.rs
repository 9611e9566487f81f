//! The harness's own checks: they need docker-registry, skopeo, openssl, htpasswd and curl
//! (scripts/deps.sh), not KVM.

use super::http::{basic_auth, get, request};
use super::*;
use moat_jail::testutil::TempDir;
use std::io::Read;
use std::time::Duration;

/// Busybox (gzip), a zstd layer with every entry kind, an uncompressed layer with whiteouts.
fn sample_image() -> Image {
    let kinds = Layer::new()
        .compression(Compression::Zstd)
        .dir("data/")
        .file("data/a", "alpha\n")
        .meta(Meta {
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            mtime: 1_600_000_000,
        })
        .hardlink("data/a-link", "data/a")
        .symlink("data/sym", "a")
        .fifo("data/fifo")
        .char_device("data/null", 1, 3)
        .file("data/xattr", "x\n")
        .xattr("user.moat", "hello");
    let wh = Layer::new()
        .compression(Compression::None)
        .whiteout("data/sym")
        .opaque("etc");
    let config = ImageConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo hi".into()]),
        working_dir: Some("/data".into()),
        user: Some("1000:1000".into()),
        stop_signal: Some("SIGUSR1".into()),
        exposed_ports: vec!["8080/tcp".into()],
        labels: [("moat.test".to_string(), "yes".to_string())].into(),
        ..ImageConfig::default()
    };
    Image::new(config)
        .layer(Layer::busybox())
        .layer(kinds)
        .layer(wh)
}

fn decompress(blob: &LayerBlob) -> Vec<u8> {
    let mut out = Vec::new();
    match blob.media_type {
        t if t.ends_with("+gzip") => {
            flate2::read::GzDecoder::new(&blob.blob[..])
                .read_to_end(&mut out)
                .expect("gunzip");
        }
        t if t.ends_with("+zstd") => out = zstd::decode_all(&blob.blob[..]).expect("unzstd"),
        _ => out = blob.blob.clone(),
    }
    out
}

/// Path bytes, entry type, link name, PAX records of one entry.
type Listed = (Vec<u8>, tar::EntryType, Vec<u8>, Vec<String>);

/// Every entry of `tar`.
fn list(tar: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let xattrs = entry
            .pax_extensions()
            .expect("pax")
            .map(|exts| {
                exts.map(|e| {
                    let e = e.expect("pax record");
                    format!("{}={}", e.key().unwrap(), e.value().unwrap())
                })
                .collect()
            })
            .unwrap_or_default();
        let link = entry
            .link_name_bytes()
            .map(|l| l.to_vec())
            .unwrap_or_default();
        out.push((
            entry.path_bytes().to_vec(),
            entry.header().entry_type(),
            link,
            xattrs,
        ));
    }
    out
}

#[test]
fn layers_hold_what_was_described() {
    let image = sample_image();
    let blob = image.layers[1].blob();
    assert_eq!(
        blob.media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let tar = decompress(&blob);
    assert_eq!(sha256(&tar), blob.diff_id);
    let entries = list(&tar);
    let find = |p: &str| entries.iter().find(|e| e.0 == p.as_bytes()).unwrap();
    assert_eq!(find("data/a-link").1, tar::EntryType::Link);
    assert_eq!(find("data/a-link").2, b"data/a");
    assert_eq!(find("data/null").1, tar::EntryType::Char);
    assert_eq!(find("data/fifo").1, tar::EntryType::Fifo);
    assert_eq!(find("data/xattr").3, vec!["SCHILY.xattr.user.moat=hello"]);
    let wh = list(&decompress(&image.layers[2].blob()));
    let names: Vec<&[u8]> = wh.iter().map(|e| e.0.as_slice()).collect();
    assert_eq!(names, [&b"data/.wh.sym"[..], b"etc/.wh..wh..opq"]);
    let mut a = tar::Archive::new(&tar[..]);
    let first = a.entries().unwrap().nth(1).unwrap().unwrap();
    assert_eq!(first.header().mode().unwrap(), 0o640);
    assert_eq!(first.header().uid().unwrap(), 1000);
    assert_eq!(first.header().mtime().unwrap(), 1_600_000_000);
}

#[test]
fn escape_layers_keep_their_hostile_names() {
    let dotdot = list(&Layer::escape_dotdot().tar());
    assert_eq!(dotdot[0].0, b"../../etc/x");
    let sym = list(&Layer::escape_symlink().tar());
    assert_eq!(
        (sym[0].1, sym[0].2.as_slice()),
        (tar::EntryType::Symlink, &b"/etc"[..])
    );
    assert_eq!(sym[1].0, b"evil/passwd");
    let long = format!("{}/file", "d".repeat(150));
    let entries = list(&Layer::new().file(&long, "x").tar());
    assert_eq!(
        entries[0].0,
        long.as_bytes(),
        "a long name goes through PAX path"
    );
}

#[test]
fn layout_config_and_digests() {
    let dir = TempDir::new("layout");
    let written = OciLayout::single(sample_image()).write(dir.path(), "v1");
    let m = &written.built.manifests[0];
    let config: serde_json::Value = serde_json::from_slice(&m.config).unwrap();
    let diff_ids: Vec<String> = m.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    assert_eq!(config["config"]["StopSignal"], "SIGUSR1");
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    for (digest, data) in &written.built.blobs {
        let path = dir.path().join("blobs/sha256").join(&digest[7..]);
        assert_eq!(std::fs::read(path).unwrap(), *data);
        assert_eq!(sha256(data), *digest);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], m.digest.as_str());
}

/// Pushes `layout` and checks the registry serves the same top digest and hands it back intact.
fn round_trip(registry: &Registry, layout: &Written, reference: &str) {
    push(layout, registry, reference);
    let raw = inspect_raw(registry, reference);
    assert_eq!(
        sha256(&raw),
        layout.built.top_digest,
        "pushed manifest changed"
    );
    let out = TempDir::new("pulled");
    pull_layout(registry, reference, out.path(), "back");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        layout.built.top_digest.as_str()
    );
    for digest in layout.built.blobs.keys() {
        assert!(
            out.path().join("blobs/sha256").join(&digest[7..]).exists(),
            "{digest} missing"
        );
    }
}

#[test]
fn plain_registry_round_trip() {
    let registry = Registry::start(RegistryOpts::plain());
    assert_eq!(registry.curl_status("/v2/", None), Some(200));
    let dir = TempDir::new("layout");
    let layout = OciLayout::single(sample_image()).write(dir.path(), "v1");
    round_trip(&registry, &layout, "moat/sample:v1");
    assert!(registry
        .storage_dir()
        .join("docker/registry/v2/repositories/moat/sample")
        .is_dir());
}

#[test]
fn tls_auth_registry_round_trip() {
    let registry = Registry::start(RegistryOpts::tls_auth("moat", "s3cret"));
    assert!(registry.url().starts_with("https://"));
    assert!(registry.ca_file().unwrap().exists());
    assert_eq!(registry.curl_status("/v2/", None), Some(401));
    let creds = Credentials::new("moat", "s3cret");
    assert_eq!(registry.curl_status("/v2/", Some(&creds)), Some(200));
    let wrong = Credentials::new("moat", "nope");
    assert_eq!(registry.curl_status("/v2/", Some(&wrong)), Some(401));
    let dir = TempDir::new("layout");
    let layout = OciLayout::multi_platform(Image::busybox()).write(dir.path(), "multi");
    round_trip(&registry, &layout, "moat/multi:1");
    let index: serde_json::Value = serde_json::from_slice(layout.built.top()).unwrap();
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
}

#[test]
fn index_without_amd64_pushes() {
    let registry = Registry::start(RegistryOpts::plain());
    let dir = TempDir::new("layout");
    let layout = OciLayout::without_amd64().write(dir.path(), "x");
    assert!(layout.built.manifest_for("linux", "amd64").is_none());
    push(&layout, &registry, "moat/noamd:x");
    assert_eq!(
        sha256(&inspect_raw(&registry, "moat/noamd:x")),
        layout.built.top_digest
    );
}

/// The member names of the tar at `path`.
fn tar_names(path: &std::path::Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().unwrap();
    entries
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn archives_for_moat_load() {
    let dir = TempDir::new("layout");
    // docker's format has no zstd layers: gzip and uncompressed ones only.
    let image = Image::busybox().layer(Layer::new().compression(Compression::None).file("f", "x"));
    let layout = OciLayout::multi_platform(image).write(dir.path(), "v1");
    let docker = dir.path().join("docker.tar");
    docker_archive(&layout, &docker, "moat/sample:v1");
    let names = tar_names(&docker);
    assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
    let manifest_json = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        format!("docker-archive:{}", docker.display()),
    ]);
    let m: serde_json::Value = serde_json::from_slice(&manifest_json).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "the amd64 image");
    let amd64 = &layout.built.manifests[0];
    let diff_ids: Vec<&str> = amd64.layers.iter().map(|l| l.diff_id.as_str()).collect();
    for diff_id in diff_ids {
        assert!(
            names.iter().any(|n| n.contains(&diff_id[7..])),
            "{diff_id} not in {names:?}"
        );
    }
    let oci = dir.path().join("oci.tar");
    oci_archive(&layout, &oci, "moat/sample:v1");
    let names = tar_names(&oci);
    assert!(names.iter().any(|n| n.ends_with("index.json")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("oci-layout")), "{names:?}");
}

fn hostile(faults: Faults) -> (HostileRegistry, Built) {
    let built = OciLayout::single(Image::tiny("linux", "amd64")).build();
    (
        HostileRegistry::start("test/img", "latest", built.clone(), faults),
        built,
    )
}

#[test]
fn hostile_serves_an_honest_image() {
    let (server, built) = hostile(Faults::default());
    assert_eq!(get(server.addr(), "/v2/", &[]).status, 200);
    let r = get(server.addr(), "/v2/test/img/manifests/latest", &[]);
    assert_eq!(r.header("content-type"), Some(MANIFEST_TYPE));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(built.top_digest.as_str())
    );
    assert_eq!(sha256(&r.body), built.top_digest);
    let head = request(server.addr(), "HEAD", "/v2/test/img/manifests/latest", &[]);
    assert_eq!((head.status, head.body.len()), (200, 0));
    let layer = get(server.addr(), &server.layer_path(), &[]);
    assert_eq!(sha256(&layer.body), built.manifests[0].layers[0].digest);
    let config = format!("/v2/test/img/blobs/{}", built.manifests[0].config_digest);
    assert_eq!(
        get(server.addr(), &config, &[]).body,
        built.manifests[0].config
    );
    assert_eq!(
        get(server.addr(), "/v2/other/manifests/latest", &[]).status,
        404
    );
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn hostile_faults_on_the_layer() {
    let (bad, built) = hostile(Faults {
        bad_digest: true,
        ..Faults::default()
    });
    let r = get(bad.addr(), &bad.layer_path(), &[]);
    assert!(r.complete);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(built.manifests[0].layers[0].digest.as_str())
    );
    assert_ne!(sha256(&r.body), built.manifests[0].layers[0].digest);

    let (cut, built) = hostile(Faults {
        drop_halfway: true,
        ..Faults::default()
    });
    let r = get(cut.addr(), &cut.layer_path(), &[]);
    assert!(!r.complete);
    assert_eq!(r.body.len(), built.manifests[0].layers[0].blob.len() / 2);

    let (huge, _) = hostile(Faults {
        huge_manifest: Some(8 << 20),
        ..Faults::default()
    });
    let r = get(huge.addr(), "/v2/test/img/manifests/latest", &[]);
    assert!(r.body.len() >= 8 << 20);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(sha256(&r.body).as_str())
    );
    serde_json::from_slice::<serde_json::Value>(&r.body).expect("still JSON");
}

#[test]
fn hostile_slow_layer_trickles() {
    let image = Image::new(ImageConfig::default()).layer(
        Layer::new()
            .compression(Compression::None)
            .file("big", vec![7u8; 64 << 10]),
    );
    let built = OciLayout::single(image).build();
    let faults = Faults {
        slow_layer: Some(Duration::from_millis(20)),
        ..Faults::default()
    };
    let server = HostileRegistry::start("test/img", "latest", built, faults);
    let addr = server.addr().to_string();
    let path = server.layer_path();
    let reader = std::thread::spawn(move || get(&addr, &path, &[]));
    assert!(server.wait_until(Duration::from_secs(10), |s| s.layer_bytes_sent() > 0));
    assert!(server.layer_bytes_sent() < 64 << 10, "not trickling");
    let r = reader.join().unwrap();
    assert!(r.complete);
}

#[test]
fn hostile_basic_auth() {
    let auth = HostileAuth::Basic {
        user: "u".into(),
        password: "p".into(),
    };
    let (server, _) = hostile(Faults {
        auth,
        ..Faults::default()
    });
    let r = get(server.addr(), "/v2/", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Basic realm="moat-hostile""#)
    );
    let ok = basic_auth("u", "p");
    assert_eq!(
        get(
            server.addr(),
            "/v2/test/img/manifests/latest",
            &[("Authorization", &ok)]
        )
        .status,
        200
    );
    let seen = server.requests();
    assert_eq!(seen[1].authorization.as_deref(), Some(ok.as_str()));
}

#[test]
fn hostile_bearer_flow() {
    let auth = HostileAuth::Bearer {
        token: "T".into(),
        basic: Some(("u".into(), "p".into())),
    };
    let (server, _) = hostile(Faults {
        auth,
        ..Faults::default()
    });
    let r = get(server.addr(), "/v2/test/img/manifests/latest", &[]);
    assert_eq!(r.status, 401);
    let want = format!(
        r#"Bearer realm="http://{}/token",service="test",scope="repository:test/img:pull""#,
        server.addr()
    );
    assert_eq!(r.header("www-authenticate"), Some(want.as_str()));
    let token_path = "/token?service=test&scope=repository:test/img:pull";
    assert_eq!(get(server.addr(), token_path, &[]).status, 401);
    let basic = basic_auth("u", "p");
    let t = get(server.addr(), token_path, &[("Authorization", &basic)]);
    assert_eq!(String::from_utf8_lossy(&t.body), r#"{"token":"T"}"#);
    let bad = get(
        server.addr(),
        "/v2/test/img/manifests/latest",
        &[("Authorization", "Bearer X")],
    );
    assert_eq!(bad.status, 401);
    let ok = get(
        server.addr(),
        "/v2/test/img/manifests/latest",
        &[("Authorization", "Bearer T")],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        server.requests().last().unwrap().authorization.as_deref(),
        Some("Bearer T")
    );
}

/// umoci (a second implementation) unpacks the sample as described: owners, modes, links,
/// devices, the xattr, the whiteout and the opaque dir, the runtime config (needs root).
#[test]
fn umoci_unpacks_the_sample() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = TempDir::new("umoci");
    let mut image = sample_image();
    // umoci 0.4 reads no zstd.
    image.layers = image
        .layers
        .into_iter()
        .map(|l| l.compression(Compression::Gzip))
        .collect();
    OciLayout::single(image).write(&dir.path().join("layout"), "v1");
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image", "layout:v1", "bundle"])
        .current_dir(dir.path())
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join("bundle/rootfs");
    let a = std::fs::metadata(root.join("data/a")).unwrap();
    assert_eq!(
        (a.mode() & 0o7777, a.uid(), a.nlink(), a.mtime()),
        (0o640, 1000, 2, 1_600_000_000)
    );
    let null = std::fs::metadata(root.join("data/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(std::fs::metadata(root.join("data/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(!root.join("data/sym").exists(), "whiteout");
    assert!(!root.join("etc/passwd").exists(), "opaque dir");
    assert!(std::fs::symlink_metadata(root.join("bin/sh"))
        .unwrap()
        .is_symlink());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bundle/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "echo hi"])
    );
    assert_eq!(config["process"]["cwd"], "/data");
}

/// A real client (skopeo) gets through the Bearer flow: challenge, `/token` with basic
/// credentials, then the manifest with the token.
#[test]
fn skopeo_follows_the_bearer_flow() {
    let auth = HostileAuth::Bearer {
        token: "T".into(),
        basic: Some(("u".into(), "p".into())),
    };
    let (server, built) = hostile(Faults {
        auth,
        ..Faults::default()
    });
    let raw = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        "--creds=u:p".into(),
        format!("docker://{}", server.reference()),
    ]);
    assert_eq!(sha256(&raw), built.top_digest);
    let seen = server.requests();
    assert!(
        seen.iter().any(|s| s.path.starts_with("/token")),
        "{seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer T"), "{seen:?}");
}
