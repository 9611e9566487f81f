//! Registries and images for the image tests: a real `docker-registry` (distribution 2.8) on a
//! free loopback port, plain or TLS with basic auth ([`Registry`]); OCI image layouts built from
//! described layers ([`OciLayout`], [`Layer`]); skopeo to push them and to make `moat load`'s
//! archives ([`push`], [`docker_archive`], [`oci_archive`]); and an in-process registry that
//! misbehaves on purpose ([`HostileRegistry`]).
//!
//! Everything listens on 127.0.0.1 only and lives in a temp dir removed on drop, so the helpers
//! also work inside the nested test host (loopback only, `/tmp` its own).

mod certs;
mod hostile;
pub mod http;
mod layer;
mod layout;
mod skopeo;
#[cfg(test)]
mod tests;

pub use certs::{htpasswd_line, Certs};
pub use hostile::{Faults, HostileAuth, HostileRegistry, Seen};
pub use layer::{sha256, Compression, Entry, Kind, Layer, LayerBlob, Meta, APPLETS, DEFAULT_MTIME};
pub use layout::{
    Built, Image, ImageConfig, ManifestInfo, OciLayout, Written, CONFIG_TYPE, INDEX_TYPE,
    MANIFEST_TYPE,
};
pub use skopeo::{docker_archive, inspect_raw, oci_archive, pull_layout, push, skopeo};

use moat_jail::testutil::TempDir;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a registry may take to answer `GET /v2/` (generous: the nested host is slow).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `docker-registry` binary: `$MOAT_DOCKER_REGISTRY`, or Debian's `/usr/bin/docker-registry`.
pub fn registry_bin() -> PathBuf {
    std::env::var_os("MOAT_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// A user name and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl Credentials {
    /// `user`/`password`.
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// `user:password`, as skopeo's `--*-creds` takes them.
    pub fn joined(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// How a [`Registry`] serves.
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// HTTPS with a certificate from a CA made for it ([`Registry::ca_file`]).
    pub tls: bool,
    /// Require these credentials (htpasswd, bcrypt).
    pub auth: Option<Credentials>,
}

impl RegistryOpts {
    /// Plain HTTP, no auth.
    pub fn plain() -> Self {
        Self::default()
    }

    /// HTTPS and basic auth with `user`/`password`.
    pub fn tls_auth(user: &str, password: &str) -> Self {
        Self {
            tls: true,
            auth: Some(Credentials::new(user, password)),
        }
    }
}

/// A running `docker-registry serve` on `127.0.0.1:PORT`; killed and its dir removed on drop.
pub struct Registry {
    child: Child,
    addr: String,
    opts: RegistryOpts,
    certs: Option<Certs>,
    dir: TempDir,
}

impl Registry {
    /// Starts a registry and waits (up to [`START_TIMEOUT`]) until `GET /v2/` answers 200, or
    /// 401 with auth. Panics with the registry's log if it does not.
    pub fn start(opts: RegistryOpts) -> Self {
        let mut dir = TempDir::new("registry");
        let certs = opts.tls.then(|| Certs::make(&dir.path().join("certs")));
        if let Some(creds) = &opts.auth {
            let line = htpasswd_line(&creds.user, &creds.password);
            std::fs::write(dir.path().join("htpasswd"), line + "\n").expect("write htpasswd");
        }
        // A port taken between probing and binding makes the registry exit: try another.
        for _ in 0..5 {
            let port = free_port();
            let config = config_yaml(dir.path(), port, &opts, certs.as_ref());
            std::fs::write(dir.path().join("config.yml"), config).expect("write config.yml");
            let child = spawn_registry(dir.path());
            let mut registry = Self {
                child,
                addr: format!("127.0.0.1:{port}"),
                opts: opts.clone(),
                certs: certs.clone(),
                dir,
            };
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(e) if registry.log().contains("address already in use") => {
                    eprintln!("registry: port {port} taken ({e}), trying another");
                    registry.stop();
                    dir = registry.take_dir();
                }
                Err(e) => panic!("{e}\n--- registry log\n{}", registry.log()),
            }
        }
        panic!("registry: no free port after 5 tries");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The CA certificate that signed the registry's (TLS only).
    pub fn ca_file(&self) -> Option<&Path> {
        self.certs.as_ref().map(|c| c.ca_cert.as_path())
    }

    /// A directory holding only the CA certificate (skopeo's `--*-cert-dir`; TLS only).
    pub fn cert_dir(&self) -> Option<&Path> {
        self.certs.as_ref().map(|c| c.ca_dir.as_path())
    }

    /// The credentials it requires, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.opts.auth.as_ref()
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.opts.tls
    }

    /// The registry's storage (`rootdirectory` of the filesystem driver).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// What the registry has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The HTTP status of `GET PATH` with curl (and `-u user:password` when given).
    pub fn curl_status(&self, path: &str, creds: Option<&Credentials>) -> Option<u16> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10"]);
        if let Some(ca) = self.ca_file() {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(c) = creds {
            cmd.arg("-u").arg(c.joined());
        }
        let out = cmd.arg(format!("{}{path}", self.url())).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Polls `GET /v2/` until it gives the expected status, the process exits, or the timeout.
    fn wait_ready(&mut self) -> Result<(), String> {
        let want = if self.opts.auth.is_some() { 401 } else { 200 };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("docker-registry exited: {status}"));
            }
            if http::port_open(&self.addr) {
                last = self.curl_status("/v2/", None);
                if last == Some(want) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "docker-registry at {} did not answer GET /v2/ with {want} within {START_TIMEOUT:?} \
             (last status {last:?})",
            self.url()
        ))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Moves the temp dir out (for a retry), leaving a fresh empty one behind.
    fn take_dir(&mut self) -> TempDir {
        std::mem::replace(&mut self.dir, TempDir::new("registry-spent"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn spawn_registry(dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
    let bin = registry_bin();
    Command::new(&bin)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} ({e}): run scripts/deps.sh", bin.display()))
}

/// The registry's config: filesystem storage in `dir/storage`, deletes allowed, TLS and
/// htpasswd when asked for.
fn config_yaml(dir: &Path, port: u16, opts: &RegistryOpts, certs: Option<&Certs>) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: moat-test-secret\n",
        storage = dir.join("storage").display(),
    );
    if let Some(c) = certs {
        yaml += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            c.server_cert.display(),
            c.server_key.display()
        );
    }
    if opts.auth.is_some() {
        yaml += &format!(
            "auth:\n  htpasswd:\n    realm: moat-test\n    path: {}\n",
            dir.join("htpasswd").display()
        );
    }
    yaml
}
