//! skopeo (bookworm's 1.9) between layouts, registries and archives: push a layout, read a
//! manifest back, pull into a layout, and make the archives `moat load` reads.
//!
//! Every copy passes `--all` (an index is copied with all its images; harmless for one image)
//! and `--preserve-digests` (skopeo fails instead of converting, so what arrives is what the
//! layout holds byte for byte). skopeo runs with `--insecure-policy`, so no host policy file is
//! needed.

use super::layout::Written;
use super::Registry;
use std::path::Path;
use std::process::Command;

/// Runs `skopeo --insecure-policy ARGS`; its stdout, or a panic with its stderr.
#[track_caller]
pub fn skopeo(args: &[String]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The TLS and credential flags for talking to `registry`, `side` being `src` or `dest`.
fn registry_flags(registry: &Registry, side: &str) -> Vec<String> {
    let mut flags = Vec::new();
    match registry.cert_dir() {
        Some(dir) => {
            flags.push(format!("--{side}-tls-verify=true"));
            flags.push(format!("--{side}-cert-dir={}", dir.display()));
        }
        None => flags.push(format!("--{side}-tls-verify=false")),
    }
    match registry.credentials() {
        Some(c) => flags.push(format!("--{side}-creds={}", c.joined())),
        None => flags.push(format!("--{side}-no-creds")),
    }
    flags
}

fn docker_ref(registry: &Registry, reference: &str) -> String {
    format!("docker://{}/{reference}", registry.addr())
}

/// Pushes the layout to `registry` as `reference` (`repo/name:tag`), with the registry's CA and
/// credentials.
#[track_caller]
pub fn push(layout: &Written, registry: &Registry, reference: &str) {
    let mut args = vec!["copy".into(), "--all".into(), "--preserve-digests".into()];
    args.extend(registry_flags(registry, "dest"));
    args.push(layout.skopeo_ref());
    args.push(docker_ref(registry, reference));
    skopeo(&args);
}

/// The manifest (or index) `reference` resolves to in `registry`, as served (`skopeo inspect
/// --raw`).
#[track_caller]
pub fn inspect_raw(registry: &Registry, reference: &str) -> Vec<u8> {
    let mut args = vec!["inspect".into(), "--raw".into()];
    for flag in registry_flags(registry, "src") {
        // inspect takes the source's flags without the `src-` prefix.
        args.push(flag.replacen("--src-", "--", 1));
    }
    args.push(docker_ref(registry, reference));
    skopeo(&args)
}

/// Copies `reference` from `registry` into the OCI layout `out` (created), tagged `tag`.
#[track_caller]
pub fn pull_layout(registry: &Registry, reference: &str, out: &Path, tag: &str) {
    let mut args = vec!["copy".into(), "--all".into(), "--preserve-digests".into()];
    args.extend(registry_flags(registry, "src"));
    args.push(docker_ref(registry, reference));
    args.push(format!("oci:{}:{tag}", out.display()));
    skopeo(&args);
}

/// Writes a `docker save`-format tar of the layout's image to `path`, tagged `name:tag` (for
/// an index: the linux/amd64 image). Its layers are stored uncompressed, as docker's are; the
/// format has no zstd, so the image's layers must be gzip or uncompressed.
#[track_caller]
pub fn docker_archive(layout: &Written, path: &Path, name_tag: &str) {
    let _ = std::fs::remove_file(path);
    skopeo(&[
        "--override-os=linux".into(),
        "--override-arch=amd64".into(),
        "copy".into(),
        layout.skopeo_ref(),
        format!("docker-archive:{}:{name_tag}", path.display()),
    ]);
}

/// Writes the layout as an OCI-layout tar to `path`, its index.json tagging it `name:tag`
/// (`org.opencontainers.image.ref.name`), every image of an index included.
#[track_caller]
pub fn oci_archive(layout: &Written, path: &Path, name_tag: &str) {
    let _ = std::fs::remove_file(path);
    skopeo(&[
        "copy".into(),
        "--all".into(),
        "--preserve-digests".into(),
        layout.skopeo_ref(),
        format!("oci-archive:{}:{name_tag}", path.display()),
    ]);
}
