//! `moat pull`, `images`, `image inspect`, `rmi`, `load`, `login`, `logout`, `system df`.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_images::image::manifest_of;
use moat_images::lookup::{find, Found, Match};
use moat_images::progress::{human_size, short, Lines, Quiet};
use moat_images::reference::{display_parts, familiar, ImageName};
use moat_images::registry::{self, RegistryOptions};
use moat_images::store::{ImageRecord, Store};
use serde_json::json;

use crate::image_config::{created_ago, read_config};

/// How to reach a registry.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP to this registry (host[:port]); localhost always may
    #[arg(long, value_name = "REGISTRY")]
    pub insecure_registry: Vec<String>,
    /// Trust this CA certificate (PEM) for registries, besides the system's
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl RegistryArgs {
    /// The options of the registry client, with docker's stored logins.
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure_registry.clone(),
            tls_ca: self.tls_ca.clone(),
            credentials: None,
            auth_file: moat_images::auth::config_path().ok(),
        }
    }
}

/// `moat pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Print only the image's name when done
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The image: NAME[:TAG] or NAME@DIGEST
    #[arg(value_name = "NAME")]
    name: String,
}

/// `moat images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show the repository digests
    #[arg(long)]
    digests: bool,
    /// Do not truncate IDs
    #[arg(long)]
    no_trunc: bool,
}

/// `moat rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove an image ID even when several names point at it
    #[arg(short, long)]
    force: bool,
    /// Images, by name or ID
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

/// `moat load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from a tar archive file instead of stdin
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Print only the loaded names
    #[arg(short, long)]
    quiet: bool,
}

/// `moat login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    username: Option<String>,
    /// Password (prefer --password-stdin)
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The registry (host[:port]; default docker.io)
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

/// `moat logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (default docker.io)
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

/// `moat image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Show the config, names and digests of images (JSON)
    Inspect {
        /// Images, by name or ID
        #[arg(value_name = "IMAGE", required = true)]
        images: Vec<String>,
    },
    /// List images
    Ls(ImagesArgs),
    /// Pull an image from a registry
    Pull(PullArgs),
    /// Remove images
    Rm(RmiArgs),
    /// Load images from a tar archive
    Load(LoadArgs),
}

/// `moat system ...`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Disk used by images and writable layers
    Df,
    /// Remove every stopped container and what dead ones left behind
    Prune {
        /// Do not ask (moat never asks; accepted for docker compatibility)
        #[arg(short, long)]
        force: bool,
    },
}

/// Opens the store under the data root.
pub fn open_store(data_root: &Path) -> Result<Store> {
    Store::open(data_root).with_context(|| format!("data root {}", data_root.display()))
}

/// Runs `moat pull`.
pub fn pull(store: &Store, args: &PullArgs) -> Result<()> {
    let name = ImageName::parse(&args.name)?;
    let report = if args.quiet {
        Report::Quiet
    } else {
        Report::Stdout
    };
    let before = store.list()?.remove(&name.canonical());
    let record = pull_name(store, &name, &args.registry, report)?;
    if !args.quiet {
        let digest = record.repo_digest.as_ref().unwrap_or(&record.manifest);
        println!("Digest: {digest}");
        let status = if before.as_ref() == Some(&record) {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        println!("Status: {status} {}", familiar(&name.canonical()));
    }
    println!("{}", name.canonical());
    Ok(())
}

/// Where a pull's progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Nowhere (`-q`).
    Quiet,
    /// stdout (`moat pull`).
    Stdout,
    /// stderr (`moat run`, whose stdout is the container's, as docker does).
    Stderr,
}

/// Pulls `name`, printing per-layer progress as `report` says.
pub fn pull_name(
    store: &Store,
    name: &ImageName,
    registry: &RegistryArgs,
    report: Report,
) -> Result<ImageRecord> {
    let options = registry.options();
    let record = match report {
        Report::Quiet => registry::pull(store, name, &options, &mut Quiet),
        Report::Stdout => {
            let out = std::io::stdout();
            let terminal = out.is_terminal();
            registry::pull(store, name, &options, &mut Lines::new(out.lock(), terminal))
        }
        Report::Stderr => {
            let out = std::io::stderr();
            let terminal = out.is_terminal();
            registry::pull(store, name, &options, &mut Lines::new(out.lock(), terminal))
        }
    };
    Ok(record?)
}

/// Finds a stored image or says docker's words.
pub fn must_find(store: &Store, name: &str) -> Result<Found> {
    match find(store, name)? {
        Some(found) => Ok(found),
        None => bail!("No such image: {name}"),
    }
}

/// Runs `moat images`.
pub fn images(store: &Store, args: &ImagesArgs) -> Result<()> {
    let refs = store.list()?;
    let id = |r: &ImageRecord| {
        let hex = &r.config["sha256:".len()..];
        if args.no_trunc {
            r.config.clone()
        } else {
            hex[..12].to_owned()
        }
    };
    if args.quiet {
        let mut seen = Vec::new();
        for record in refs.values() {
            if !seen.contains(&record.config) {
                seen.push(record.config.clone());
                println!("{}", id(record));
            }
        }
        return Ok(());
    }
    let mut rows = vec![header(args.digests)];
    for (key, record) in &refs {
        let (repo, tag) = display_parts(key);
        let created = read_config(store, record)
            .ok()
            .and_then(|c| c.created)
            .map_or_else(|| "N/A".to_owned(), |c| created_ago(&c));
        let mut row = vec![repo, tag];
        if args.digests {
            row.push(
                record
                    .repo_digest
                    .clone()
                    .unwrap_or_else(|| "<none>".into()),
            );
        }
        row.extend([id(record), created, human_size(record.size)]);
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

fn header(digests: bool) -> Vec<String> {
    let mut h = vec!["REPOSITORY", "TAG"];
    if digests {
        h.push("DIGEST");
    }
    h.extend(["IMAGE ID", "CREATED", "SIZE"]);
    h.into_iter().map(str::to_owned).collect()
}

/// Prints rows in columns three spaces apart, as docker does.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Runs `moat image inspect`.
pub fn inspect(store: &Store, names: &[String]) -> Result<()> {
    let refs = store.list()?;
    let mut out = Vec::new();
    for name in names {
        let found = must_find(store, name)?;
        let config = read_config(store, &found.record)?;
        let manifest = manifest_of(store, &found.record)?;
        let tags: Vec<String> = refs
            .iter()
            .filter(|(k, r)| r.config == found.record.config && !k.starts_with("sha256:"))
            .map(|(k, _)| familiar(k))
            .collect();
        let repo_digests: Vec<String> = refs
            .iter()
            .filter(|(_, r)| r.config == found.record.config)
            .filter_map(|(k, r)| {
                let digest = r.repo_digest.clone().unwrap_or_else(|| r.manifest.clone());
                let (repo, _) = display_parts(k);
                (repo != "<none>").then(|| format!("{repo}@{digest}"))
            })
            .collect();
        out.push(json!({
            "Id": found.record.config,
            "RepoTags": tags,
            "RepoDigests": repo_digests,
            "Created": config.created,
            "Architecture": config.architecture,
            "Os": config.os,
            "Size": found.record.size,
            "Config": config.config,
            "RootFS": { "Type": "layers", "Layers": config.rootfs.diff_ids },
            "Moat": {
                "Manifest": found.record.manifest,
                "Layers": manifest.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(),
                "ChainID": found.record.chain_id,
                "Filesystem": store.rootfs_path(&found.record.chain_id)?,
            },
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Runs `moat rmi`.
pub fn rmi(store: &Store, args: &RmiArgs) -> Result<()> {
    // As docker: every name is tried, what could be removed is, and the first error is told.
    let mut first_error = None;
    for name in &args.images {
        if let Err(e) = rmi_one(store, name, args.force) {
            first_error.get_or_insert(e);
        }
    }
    store.collect(&moat_images::image::blobs_of)?;
    first_error.map_or(Ok(()), Err)
}

fn rmi_one(store: &Store, name: &str, force: bool) -> Result<()> {
    let found = must_find(store, name)?;
    if found.matched == Match::Short {
        // Removing is not left to a guess: the name must be the image's own (or its ID).
        bail!(
            "No such image: {name} (did you mean {}?)",
            familiar(&found.key)
        );
    }
    let sharing: Vec<String> = store
        .list()?
        .into_iter()
        .filter(|(_, r)| r.config == found.record.config)
        .map(|(k, _)| k)
        .collect();
    let remove = if found.matched == Match::Id {
        let mut repositories: Vec<String> = sharing
            .iter()
            .filter(|k| !k.starts_with("sha256:"))
            .map(|k| display_parts(k).0)
            .collect();
        repositories.sort();
        repositories.dedup();
        if repositories.len() > 1 && !force {
            bail!(
                "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                short(&found.record.config)
            );
        }
        sharing.clone()
    } else {
        vec![found.key.clone()]
    };
    store.untag(&remove)?;
    for key in remove.iter().filter(|k| !k.starts_with("sha256:")) {
        println!("Untagged: {}", familiar(key));
    }
    if remove.len() == sharing.len() {
        println!("Deleted: {}", found.record.config);
    }
    Ok(())
}

/// Runs `moat load`.
pub fn load(store: &Store, args: &LoadArgs) -> Result<()> {
    let mut input: Box<dyn Read> = match &args.input {
        Some(path) => {
            Box::new(std::fs::File::open(path).with_context(|| format!("-i {}", path.display()))?)
        }
        None => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is empty (pipe an archive in, or use -i FILE)");
            }
            Box::new(std::io::stdin().lock())
        }
    };
    let loaded = if args.quiet {
        moat_images::load::load(store, &mut input, &mut Quiet)?
    } else {
        let stdout = std::io::stdout();
        let mut lines = Lines::new(stdout.lock(), false);
        moat_images::load::load(store, &mut input, &mut lines)?
    };
    for (names, record) in loaded {
        if names.is_empty() {
            println!("Loaded image ID: {}", record.config);
        }
        for name in names {
            println!("Loaded image: {}", familiar(&name));
        }
    }
    Ok(())
}

fn server_of(server: Option<&str>) -> Result<String> {
    let server = server.unwrap_or("docker.io");
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    if host.is_empty() {
        bail!("login: {server:?} is not a registry name");
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    })
}

/// Runs `moat login`.
pub fn login(args: &LoginArgs) -> Result<()> {
    let server = server_of(args.server.as_deref())?;
    let Some(user) = args.username.clone() else {
        bail!("login: give a username with -u (moat does not prompt)");
    };
    let password = match (&args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => bail!("login: give a password with --password-stdin or -p"),
    };
    let mut options = args.registry.options();
    options.credentials = Some((user.clone(), password.clone()));
    registry::login(&server, &options)?;
    let path = moat_images::auth::config_path()?;
    moat_images::auth::store(&path, &server, &user, &password)?;
    println!("Login Succeeded");
    Ok(())
}

/// Runs `moat logout`.
pub fn logout(args: &LogoutArgs) -> Result<()> {
    let server = server_of(args.server.as_deref())?;
    let path = moat_images::auth::config_path()?;
    if moat_images::auth::remove(&path, &server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(())
}

/// Runs `moat system df`.
pub fn system_df(store: &Store, data_root: &Path) -> Result<()> {
    let refs = store.list()?;
    let mut ids: Vec<&str> = refs.values().map(|r| r.config.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let (blobs, filesystems) = store.disk_usage()?;
    let scratch = scratch_usage(&data_root.join("scratch"));
    let rows = vec![
        vec!["TYPE".into(), "TOTAL".into(), "SIZE".into()],
        vec!["Images".into(), ids.len().to_string(), human_size(blobs)],
        vec![
            "Image filesystems".into(),
            count(store.dir().join("rootfs")),
            human_size(filesystems),
        ],
        vec![
            "Writable layers".into(),
            count(data_root.join("scratch")),
            human_size(scratch),
        ],
    ];
    print_table(&rows);
    Ok(())
}

fn count(dir: PathBuf) -> String {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "ext4"))
                .count()
        })
        .unwrap_or(0)
        .to_string()
}

fn scratch_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}
