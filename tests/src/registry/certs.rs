//! A throwaway CA and a server certificate for `127.0.0.1` and `localhost`, made with openssl
//! (P-256 keys: fast to make even in the nested test host), and bcrypt htpasswd lines.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test CA and the server certificate it signed.
#[derive(Clone, Debug)]
pub struct Certs {
    /// A directory holding only `ca.crt` (skopeo's `--*-cert-dir`).
    pub ca_dir: PathBuf,
    /// The CA certificate (PEM), inside `ca_dir`.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), SANs `IP:127.0.0.1`, `DNS:localhost`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

/// Runs openssl with `args` in `dir`; panics with its stderr when it fails.
#[track_caller]
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// Makes a CA and a server certificate under `dir` (created).
    pub fn make(dir: &Path) -> Self {
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir).expect("create cert dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=moat test CA"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca/ca.crt"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &ca);
        let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(dir, &csr);
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write server.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                "server.csr",
                "-CA",
                "ca/ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        Self {
            ca_cert: ca_dir.join("ca.crt"),
            ca_dir,
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

/// The htpasswd line of `user`/`password`, bcrypt (`htpasswd -Bbn`).
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run htpasswd (install apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("htpasswd output")
        .trim_end()
        .to_string()
}
