//! Pulling from a registry with `oci-client`: the manifest (an index resolved to linux/amd64),
//! the config and the layers, each verified against its digest as it streams into the store.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::image::{self, ImageError, Source};
use crate::manifest::{self, media, Descriptor, Document, MANIFEST_LIMIT};
use crate::progress::Progress;
use crate::reference::ImageName;
use crate::store::{sha256_digest, BlobWriter, ImageRecord, Store};

/// Errors of a pull or a login.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such image.
    #[error("{0}: not found in the registry (manifest unknown)")]
    NotFound(String),
    /// The registry refused the credentials (or asked for some).
    #[error("{name}: the registry refused access ({detail}); log in with `moat login {registry}`")]
    Unauthorized {
        /// The image or registry.
        name: String,
        /// The registry.
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry could not be reached or broke the transfer.
    #[error("{registry}: {detail}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// What failed.
        detail: String,
    },
    /// The registry answered with something moat does not take.
    #[error("{name}: {detail}")]
    Protocol {
        /// The image.
        name: String,
        /// What was wrong.
        detail: String,
    },
    /// Reading the CA file failed.
    #[error("--tls-ca {}: {source}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Storing the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) that may be spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// An extra CA certificate (PEM) to trust.
    pub tls_ca: Option<PathBuf>,
    /// Credentials (`user`, `password`) to use instead of the stored ones.
    pub credentials: Option<(String, String)>,
    /// Docker's credentials file (`None`: anonymous unless `credentials`).
    pub auth_file: Option<PathBuf>,
}

struct Session {
    client: Client,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
    registry: String,
}

fn client(options: &RegistryOptions, http: bool) -> Result<Client, RegistryError> {
    let mut extra = Vec::new();
    if let Some(path) = &options.tls_ca {
        let data = std::fs::read(path).map_err(|source| RegistryError::Ca {
            path: path.clone(),
            source,
        })?;
        extra.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let config = ClientConfig {
        protocol: if http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: extra,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("moat/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Ok(Client::new(config))
}

fn credentials(name: &ImageName, options: &RegistryOptions) -> Result<RegistryAuth, RegistryError> {
    if let Some((user, password)) = &options.credentials {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    let Some(path) = &options.auth_file else {
        return Ok(RegistryAuth::Anonymous);
    };
    match crate::auth::lookup(path, name.registry()) {
        Ok(Some((user, password))) => Ok(RegistryAuth::Basic(user, password)),
        Ok(None) => Ok(RegistryAuth::Anonymous),
        Err(e) => Err(RegistryError::Protocol {
            name: name.canonical(),
            detail: e.to_string(),
        }),
    }
}

/// Whether an error is the transport failing (no answer, TLS refused), not the registry saying no.
fn is_transport(err: &OciDistributionError) -> bool {
    matches!(err, OciDistributionError::RequestError(e) if e.is_connect() || e.is_request())
}

fn classify(name: &ImageName, err: OciDistributionError) -> RegistryError {
    let registry = name.registry().to_owned();
    let unauthorized = |detail: String| RegistryError::Unauthorized {
        name: name.canonical(),
        registry: registry.clone(),
        detail,
    };
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RegistryError::NotFound(name.canonical())
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
            {
                RegistryError::NotFound(name.canonical())
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(envelope.to_string())
            } else {
                RegistryError::Protocol {
                    name: name.canonical(),
                    detail: envelope.to_string(),
                }
            }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(err.to_string()),
        OciDistributionError::RequestError(e) => RegistryError::Unreachable {
            registry,
            detail: error_chain(&e),
        },
        other => RegistryError::Protocol {
            name: name.canonical(),
            detail: other.to_string(),
        },
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = e.source();
    }
    text
}

impl Session {
    fn open(name: &ImageName, options: &RegistryOptions) -> Result<Self, RegistryError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Unreachable {
                registry: name.registry().to_owned(),
                detail: format!("cannot start the I/O runtime: {e}"),
            })?;
        Ok(Session {
            client: client(options, false)?,
            auth: credentials(name, options)?,
            runtime,
            registry: name.registry().to_owned(),
        })
    }

    /// Fetches a manifest, trying plain HTTP where that is allowed and HTTPS cannot connect.
    /// Runs `attempt` over HTTPS and, where plain HTTP is allowed and HTTPS could not connect,
    /// again over plain HTTP (which the session then keeps). When neither works, the HTTPS
    /// failure is the one told (a TLS registry with an unknown CA, say), unless the registry
    /// itself answered the HTTP attempt with an error.
    fn with_fallback<T>(
        &mut self,
        name: &ImageName,
        options: &RegistryOptions,
        attempt: &dyn Fn(&Session) -> Result<T, OciDistributionError>,
    ) -> Result<T, RegistryError> {
        let result = match attempt(self) {
            Err(e) if is_transport(&e) && allows_http(name, options) => {
                tracing::debug!("{}: HTTPS failed ({e}); trying plain HTTP", self.registry);
                let https = std::mem::replace(&mut self.client, client(options, true)?);
                match attempt(self) {
                    Err(http) if !matches!(http, OciDistributionError::RegistryError { .. }) => {
                        tracing::debug!("{}: plain HTTP failed too: {http}", self.registry);
                        self.client = https;
                        Err(e)
                    }
                    other => other,
                }
            }
            other => other,
        };
        result.map_err(|e| classify(name, e))
    }

    /// Fetches a manifest (see [`Session::with_fallback`]) and checks its size.
    fn manifest(
        &mut self,
        name: &ImageName,
        reference: &Reference,
        options: &RegistryOptions,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let (bytes, digest) =
            self.with_fallback(name, options, &|session| session.fetch_manifest(reference))?;
        if bytes.len() as u64 > MANIFEST_LIMIT {
            return Err(RegistryError::Protocol {
                name: name.canonical(),
                detail: format!("manifest {digest} is over the {MANIFEST_LIMIT}-byte limit"),
            });
        }
        Ok((bytes, digest))
    }

    /// Runs the registry's auth flow; whether it issued a Bearer token.
    fn token(
        &mut self,
        name: &ImageName,
        options: &RegistryOptions,
    ) -> Result<bool, RegistryError> {
        let token = self.with_fallback(name, options, &|session| {
            session.runtime.block_on(session.client.auth(
                name.reference(),
                &session.auth,
                RegistryOperation::Pull,
            ))
        })?;
        Ok(token.is_some())
    }

    fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, String), OciDistributionError> {
        self.runtime.block_on(async {
            self.client
                .auth(reference, &self.auth, RegistryOperation::Pull)
                .await?;
            let (bytes, _) = self
                .client
                .pull_manifest_raw(reference, &self.auth, &media::ALL)
                .await?;
            let digest = sha256_digest(&bytes);
            Ok((bytes.to_vec(), digest))
        })
    }
}

fn allows_http(name: &ImageName, options: &RegistryOptions) -> bool {
    name.is_local() || options.insecure.iter().any(|r| r == name.registry())
}

fn layer_descriptor(desc: &Descriptor) -> oci_client::manifest::OciDescriptor {
    oci_client::manifest::OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: desc.size as i64,
        ..Default::default()
    }
}

struct RegistrySource<'a> {
    session: &'a Session,
    name: &'a ImageName,
}

impl Source for RegistrySource<'_> {
    fn fetch(
        &mut self,
        desc: &Descriptor,
        out: &mut BlobWriter,
        progress: &mut dyn Progress,
    ) -> Result<(), ImageError> {
        let reference = self.name.with_digest(&desc.digest);
        let failed = |e: String| ImageError::Fetch(format!("blob {}: {e}", desc.digest));
        self.session.runtime.block_on(async {
            let mut stream = self
                .session
                .client
                .pull_blob_stream(&reference, &layer_descriptor(desc))
                .await
                .map_err(|e| failed(classify(self.name, e).to_string()))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| match error_chain(&e) {
                    text if text.contains("Invalid digest") => {
                        failed(format!("content does not match its digest ({text})"))
                    }
                    text => failed(text),
                })?;
                if out.written() + chunk.len() as u64 > desc.size {
                    return Err(failed(format!("more than its {} bytes", desc.size)));
                }
                out.write_all(&chunk).map_err(|e| failed(e.to_string()))?;
                progress.layer_bytes(&desc.digest, out.written(), desc.size);
            }
            if out.written() != desc.size {
                return Err(failed(format!(
                    "the registry sent {} of its {} bytes",
                    out.written(),
                    desc.size
                )));
            }
            Ok(())
        })
    }
}

/// Pulls an image into the store and tags it with its canonical name.
pub fn pull(
    store: &Store,
    name: &ImageName,
    options: &RegistryOptions,
    progress: &mut dyn Progress,
) -> Result<ImageRecord, RegistryError> {
    let mut session = Session::open(name, options)?;
    let (bytes, digest) = session.manifest(name, name.reference(), options)?;
    if let Some(pinned) = name.reference().digest() {
        if pinned != digest {
            return Err(RegistryError::Protocol {
                name: name.canonical(),
                detail: format!("the registry served content with digest {digest}"),
            });
        }
    }
    let (manifest_bytes, repo_digest) =
        match manifest::parse(&bytes, &digest, "").map_err(ImageError::from)? {
            Document::Image(_) => (bytes, digest),
            Document::Index(entries) => {
                let chosen = manifest::select_amd64(&name.canonical(), &entries)
                    .map_err(ImageError::from)?
                    .clone();
                // The entry's digest names a URL and its size is the index's word: both are
                // checked before anything is asked for.
                crate::store::digest_hex(&chosen.digest).map_err(ImageError::from)?;
                if chosen.size > MANIFEST_LIMIT {
                    return Err(RegistryError::Protocol {
                        name: name.canonical(),
                        detail: format!(
                            "manifest {} is over the {MANIFEST_LIMIT}-byte limit",
                            chosen.digest
                        ),
                    });
                }
                let (bytes, got) =
                    session.manifest(name, &name.with_digest(&chosen.digest), options)?;
                if got != chosen.digest {
                    return Err(RegistryError::Protocol {
                        name: name.canonical(),
                        detail: format!("manifest {} arrived with digest {got}", chosen.digest),
                    });
                }
                (bytes, digest)
            }
        };
    let mut source = RegistrySource {
        session: &session,
        name,
    };
    let names = [name.canonical()];
    Ok(image::install_or_undo(
        store,
        &names,
        &manifest_bytes,
        Some(repo_digest),
        &mut source,
        progress,
    )?)
}

/// Checks credentials against a registry (as `docker login` does) without storing them.
pub fn login(registry: &str, options: &RegistryOptions) -> Result<(), RegistryError> {
    let name = ImageName::parse(&format!("{registry}/moat-login-check:latest")).map_err(|e| {
        RegistryError::Protocol {
            name: registry.to_owned(),
            detail: e.to_string(),
        }
    })?;
    let mut session = Session::open(&name, options)?;
    let refused = |detail: String| RegistryError::Unauthorized {
        name: registry.to_owned(),
        registry: registry.to_owned(),
        detail,
    };
    // A registry with a token service: a token issued for these credentials is the answer
    // (its refusal comes as an error). Registries may then say 401/403 for a repository that
    // does not exist, so the probe below is not asked.
    match session.token(&name, options) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(RegistryError::Unauthorized { detail, .. }) => return Err(refused(detail)),
        Err(e) => return Err(e),
    }
    // Basic auth: the registry answers 401 to a bad login before it looks the repository up,
    // and NAME_UNKNOWN / MANIFEST_UNKNOWN once the login is good.
    match session.manifest(&name, name.reference(), options) {
        Ok(_) | Err(RegistryError::NotFound(_)) => Ok(()),
        Err(RegistryError::Unauthorized { detail, .. }) => Err(refused(detail)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_host_or_named_registries() {
        let options = RegistryOptions {
            insecure: vec!["registry.lan:5000".to_owned()],
            ..RegistryOptions::default()
        };
        let allows = |name: &str| allows_http(&ImageName::parse(name).unwrap(), &options);
        assert!(allows("127.0.0.1:5000/a"));
        assert!(allows("localhost:5000/a"));
        assert!(allows("registry.lan:5000/a"));
        assert!(
            !allows("registry.lan/a"),
            "another port is another registry"
        );
        assert!(!allows("registry.example/a"));
        assert!(!allows("alpine"));
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_is_named() {
        let options = RegistryOptions {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..RegistryOptions::default()
        };
        let err = client(&options, false).err().unwrap().to_string();
        assert!(err.starts_with("--tls-ca /nonexistent/ca.pem: "), "{err}");
    }
}
