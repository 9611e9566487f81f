//! An image's configuration (the OCI image config blob, which Docker writes too) and what a
//! run makes of it with docker's rules: the command ([`process_args`]), the environment
//! ([`merge_env`]), the working directory ([`working_dir`]) and the user ([`user`]).
//!
//! Docker writes `null` for empty lists and maps, and older images leave fields out: every
//! field here reads `null` and a missing field as its empty value.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// `PATH` a container gets when neither the image nor the user sets one (docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of an image config and of the process made from it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config blob is not an image config.
    #[error("invalid image config")]
    Json(#[source] serde_json::Error),
    /// Neither the image nor the run names a command (docker's words).
    #[error("no command specified")]
    NoCommand,
}

/// Reads `null` as the type's default (Docker writes `null` for empty lists and maps).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The image config: the top level of the config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture, e.g. `amd64`.
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    /// When the image was made (RFC 3339), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// What a container of the image runs.
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    /// The layers' uncompressed digests.
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
}

/// The `config` section: the defaults of a container of the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// The entrypoint; `None` when the image has none (`null` or missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments (of the entrypoint, or the command itself without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    /// The working directory; empty for none.
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    /// The user, unresolved (`user[:group]`, ids or names); empty for root.
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    /// The signal that stops a container of the image, e.g. `SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `port/proto` keys (the values are empty objects).
    #[serde(default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Labels.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// The `rootfs` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(default, rename = "type", deserialize_with = "null_default")]
    pub kind: String,
    /// The digests of the uncompressed layers, lowest first.
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(bytes).map_err(ConfigError::Json)
    }
}

/// The argv of a run, with docker's rules (moby's `mergeAndVerifyConfig`):
/// - no `--entrypoint`: the image's Entrypoint, then `cmd_args` if any, else the image's Cmd;
/// - `--entrypoint X`: `X` replaces the Entrypoint and the image's Cmd is dropped, so the argv
///   is `X` and `cmd_args`;
/// - `--entrypoint ""`: no entrypoint, and the image's Cmd is dropped too (docker resets an
///   entrypoint of `[""]` only after the merge has seen one given), so the argv is `cmd_args`.
///
/// An empty argv is [`ConfigError::NoCommand`].
pub fn process_args(
    config: &ImageConfig,
    entrypoint_flag: Option<&str>,
    cmd_args: &[String],
) -> Result<Vec<String>, ConfigError> {
    let image = &config.config;
    let (entrypoint, cmd): (Vec<String>, &[String]) = match entrypoint_flag {
        Some("") => (Vec::new(), cmd_args),
        Some(e) => (vec![e.to_owned()], cmd_args),
        None if cmd_args.is_empty() => (
            image.entrypoint.clone().unwrap_or_default(),
            image.cmd.as_deref().unwrap_or_default(),
        ),
        None => (image.entrypoint.clone().unwrap_or_default(), cmd_args),
    };
    // An image's entrypoint of [""] is no entrypoint, as docker resets it.
    let entrypoint = match entrypoint.as_slice() {
        [only] if only.is_empty() => Vec::new(),
        _ => entrypoint,
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd.iter().cloned()).collect();
    match args.is_empty() {
        true => Err(ConfigError::NoCommand),
        false => Ok(args),
    }
}

/// The variables moat sets before the image's and the user's (docker's daemon environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvDefaults<'a> {
    /// `HOSTNAME`.
    pub hostname: &'a str,
    /// `-t`: `TERM=xterm`.
    pub terminal: bool,
}

/// The container's environment: `PATH` ([`DEFAULT_PATH`]), `HOSTNAME` and with a terminal
/// `TERM=xterm` first, then the image's `Env`, then the user's entries; a later entry replaces
/// an earlier one of the same key in its place. A user entry without `=` (docker's `-e KEY`
/// for a `KEY` the caller's environment lacks) removes the key. `HOME` is not set here: the
/// agent sets it from the user's passwd entry when the result has none.
pub fn merge_env(
    image_env: &[String],
    defaults: EnvDefaults<'_>,
    user_env: &[String],
) -> Vec<String> {
    let mut entries: Vec<(String, Option<String>)> = vec![
        ("PATH".into(), Some(DEFAULT_PATH.into())),
        ("HOSTNAME".into(), Some(defaults.hostname.into())),
    ];
    if defaults.terminal {
        entries.push(("TERM".into(), Some("xterm".into())));
    }
    for entry in image_env.iter().chain(user_env) {
        let (key, value) = match entry.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (entry.as_str(), None),
        };
        if key.is_empty() {
            continue;
        }
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(found) => found.1 = value,
            None => entries.push((key.to_owned(), value)),
        }
    }
    entries
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect()
}

/// The working directory: `-w`, else the image's (made absolute, as docker joins it to `/`),
/// else `/`.
pub fn working_dir(config: &ImageConfig, flag: Option<&str>) -> String {
    match (flag, config.config.working_dir.as_str()) {
        (Some(w), _) => w.to_owned(),
        (None, "") => "/".to_owned(),
        (None, w) if w.starts_with('/') => w.to_owned(),
        (None, w) => format!("/{w}"),
    }
}

/// The user, unresolved: `-u`, else the image's `User`, else empty (root). The guest resolves
/// names against the image's `/etc/passwd` and `/etc/group`.
pub fn user(config: &ImageConfig, flag: Option<&str>) -> String {
    flag.unwrap_or(&config.config.user).to_owned()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
