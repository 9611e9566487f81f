//! Registry credentials in docker's file: `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. `moat login` writes the same `auths` entry `docker login` writes, so
//! the two tools share logins; every other field of the file is kept as it was.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

/// Errors of the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not JSON, or an entry is malformed.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No file location is known.
    #[error("cannot find docker's config file: set DOCKER_CONFIG or HOME")]
    NoHome,
}

/// Where the file is.
pub fn config_path() -> Result<PathBuf, AuthError> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").ok_or(AuthError::NoHome)?;
    Ok(PathBuf::from(home).join(".docker/config.json"))
}

/// The key docker uses for a registry (`https://index.docker.io/v1/` for Docker Hub).
fn key_of(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_owned()
        }
        other => other.to_owned(),
    }
}

/// A key of the file, reduced to `host[:port]` (docker accepts `https://host/v1/` too).
fn normalize(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

fn read(path: &Path) -> Result<Map<String, Value>, AuthError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed {
            path: path.to_owned(),
            reason: "not a JSON object".to_owned(),
        }),
    }
}

/// The user and password stored for a registry, if any.
pub fn lookup(path: &Path, registry: &str) -> Result<Option<(String, String)>, AuthError> {
    let config = read(path)?;
    let Some(Value::Object(auths)) = config.get("auths") else {
        return Ok(None);
    };
    let wanted = normalize(&key_of(registry));
    let entry = auths.iter().find(|(k, _)| normalize(k) == wanted);
    let Some(encoded) = entry
        .and_then(|(_, v)| v.get("auth"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let malformed = |reason: &str| AuthError::Malformed {
        path: path.to_owned(),
        reason: format!("auths.{wanted}: {reason}"),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed("auth is not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| malformed("auth is not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| malformed("auth is not user:password"))?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

fn write(path: &Path, config: &Map<String, Value>) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.moat-new");
    let bytes = serde_json::to_vec_pretty(config).expect("a JSON map serializes");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Stores credentials for a registry (replacing an entry for the same registry).
pub fn store(path: &Path, registry: &str, user: &str, password: &str) -> Result<(), AuthError> {
    let mut config = read(path)?;
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(AuthError::Malformed {
            path: path.to_owned(),
            reason: "auths is not an object".to_owned(),
        });
    };
    let wanted = normalize(&key_of(registry));
    auths.retain(|k, _| normalize(k) != wanted);
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    auths.insert(key_of(registry), serde_json::json!({ "auth": encoded }));
    write(path, &config)
}

/// Removes the credentials of a registry; whether there were any.
pub fn remove(path: &Path, registry: &str) -> Result<bool, AuthError> {
    let mut config = read(path)?;
    let Some(Value::Object(auths)) = config.get_mut("auths") else {
        return Ok(false);
    };
    let wanted = normalize(&key_of(registry));
    let before = auths.len();
    auths.retain(|k, _| normalize(k) != wanted);
    if auths.len() == before {
        return Ok(false);
    }
    write(path, &config)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_entries_round_trip_and_keep_the_rest_of_the_file() {
        let dir = std::env::temp_dir().join(format!("moat-auth-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("config.json");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}},"credsStore":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            lookup(&path, "docker.io").unwrap(),
            Some(("hub".into(), "secret".into()))
        );
        assert_eq!(lookup(&path, "127.0.0.1:5000").unwrap(), None);
        store(&path, "127.0.0.1:5000", "u", "p:w").unwrap();
        assert_eq!(
            lookup(&path, "127.0.0.1:5000").unwrap(),
            Some(("u".into(), "p:w".into()))
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("credsStore"), "{text}");
        assert!(remove(&path, "127.0.0.1:5000").unwrap());
        assert!(!remove(&path, "127.0.0.1:5000").unwrap());
        assert!(lookup(&path, "docker.io").unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }
}
