//! The shim's settings: a TOML file, `/etc/moat/shim.toml` (or `$MOAT_SHIM_CONFIG`), or the one
//! a task's runtime options name (`ctr run --runtime-config-path`, CRI's `ConfigPath`). Unknown
//! keys and unknown option types are errors, so a typo never passes as a default.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The default config file.
pub const DEFAULT_PATH: &str = "/etc/moat/shim.toml";

/// What the shim's settings can say.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// The VM's memory when the task does not size it (`moat run --vm-memory`'s syntax:
    /// `512m`, `1g`).
    pub vm_memory: Option<String>,
    /// The VM's vCPUs when the task does not size it.
    pub vm_cpus: Option<u8>,
}

/// Reads the config at `path`.
pub fn read(path: &Path) -> anyhow::Result<ShimConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the shim config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid shim config {}", path.display()))
}

/// The settings for a task whose runtime options are `options` (type URL and value).
pub fn for_task(options: Option<(&str, &[u8])>) -> anyhow::Result<ShimConfig> {
    if let Some(path) = options.map(config_path).transpose()?.flatten() {
        return read(&path);
    }
    let default = std::env::var_os("MOAT_SHIM_CONFIG")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
    if default.exists() {
        read(&default)
    } else {
        Ok(ShimConfig::default())
    }
}

/// The config path of containerd's `runtimeoptions.v1.Options` (field 2, `config_path`; field 1
/// is a type URL for the runtime's own use), which is the one options type the shim takes.
fn config_path((type_url, value): (&str, &[u8])) -> anyhow::Result<Option<PathBuf>> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        bail!(
            "unknown runtime options type {type_url:?}: moat takes runtimeoptions.v1.Options \
             (a ConfigPath to a shim config, docs/containerd.md)"
        );
    }
    let fields = strings(value).context("malformed runtime options")?;
    let path = fields.into_iter().find(|(n, _)| *n == 2).map(|(_, s)| s);
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// The length-delimited fields of a protobuf message that has only string fields.
fn strings(mut bytes: &[u8]) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        if key & 7 != 2 {
            bail!("field {} is not a string", key >> 3);
        }
        let len = usize::try_from(varint(&mut bytes)?)?;
        if len > bytes.len() {
            bail!("a field runs past the end");
        }
        let (text, rest) = bytes.split_at(len);
        out.push((key >> 3, String::from_utf8(text.to_vec())?));
        bytes = rest;
    }
    Ok(out)
}

fn varint(bytes: &mut &[u8]) -> anyhow::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = bytes.split_first() else {
            bail!("a varint runs past the end");
        };
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("a varint is too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_options_name_a_config_path() {
        let mut value = vec![0x0a, 3];
        value.extend_from_slice(b"x.y");
        value.extend_from_slice(&[0x12, 6]);
        value.extend_from_slice(b"/a.tom");
        let url = "runtimeoptions.v1.Options";
        assert_eq!(
            config_path((url, &value)).unwrap(),
            Some(PathBuf::from("/a.tom"))
        );
        assert_eq!(config_path((url, &[])).unwrap(), None);
        assert!(config_path((url, &[0x12, 9, b'a'])).is_err());
        let err = config_path(("containerd.runc.v1.Options", &[])).unwrap_err();
        assert!(err.to_string().contains("unknown runtime options type"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let ok: ShimConfig = toml::from_str("vm_memory = \"512m\"\nvm_cpus = 2\n").unwrap();
        assert_eq!(
            ok,
            ShimConfig {
                vm_memory: Some("512m".into()),
                vm_cpus: Some(2),
            }
        );
        let bad = toml::from_str::<ShimConfig>("vm_memroy = \"512m\"\n").unwrap_err();
        assert!(bad.to_string().contains("vm_memroy"), "{bad}");
    }
}
