//! Finding a stored image by what a user types: a full or short name, or an image ID (prefix).

use crate::reference::{familiar, ImageName};
use crate::store::{ImageRecord, Store, StoreError};

/// Errors of a lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A short name or ID prefix that matches several images.
    #[error("{name}: ambiguous, it matches {matches}")]
    Ambiguous {
        /// What was typed.
        name: String,
        /// The candidates, comma separated.
        matches: String,
    },
}

/// How a name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The normalized name itself.
    Name,
    /// An image ID or a prefix of one.
    Id,
    /// The last path components and tag of a stored name.
    Short,
}

/// A stored image found by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its reference in the store (the canonical name, or a digest for an untagged image).
    pub key: String,
    /// The record.
    pub record: ImageRecord,
    /// How the name matched.
    pub matched: Match,
}

fn is_id_prefix(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    (4..=64).contains(&hex.len()) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unique(name: &str, found: Vec<Found>) -> Result<Option<Found>, LookupError> {
    let mut ids: Vec<&str> = found.iter().map(|f| f.record.config.as_str()).collect();
    ids.dedup();
    match found.len() {
        0 => Ok(None),
        _ if ids.len() == 1 => Ok(found.into_iter().next()),
        _ => Err(LookupError::Ambiguous {
            name: name.to_owned(),
            matches: found
                .iter()
                .map(|f| familiar(&f.key))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Finds an image: the exact normalized name first; then an image ID or a prefix of one; then,
/// for a name typed without a registry, a stored image whose last path components and tag match
/// it (`app:1.4` finds `127.0.0.1:5000/team/app:1.4`) if exactly one does.
pub fn find(store: &Store, name: &str) -> Result<Option<Found>, LookupError> {
    let refs = store.list()?;
    let all = |matched: Match| {
        refs.iter().map(move |(k, r)| Found {
            key: k.clone(),
            record: r.clone(),
            matched,
        })
    };
    if let Ok(parsed) = ImageName::parse(name) {
        if let Some(record) = refs.get(&parsed.canonical()) {
            return Ok(Some(Found {
                key: parsed.canonical(),
                record: record.clone(),
                matched: Match::Name,
            }));
        }
    }
    if is_id_prefix(name) {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let by_id: Vec<Found> = all(Match::Id)
            .filter(|f| {
                f.record
                    .config
                    .get("sha256:".len()..)
                    .is_some_and(|id| id.starts_with(hex))
            })
            .collect();
        if let Some(found) = unique(name, by_id)? {
            return Ok(Some(found));
        }
    }
    let domain = name
        .split_once('/')
        .is_some_and(|(first, _)| has_domain(first));
    if name.contains('@') || domain {
        return Ok(None);
    }
    let wanted = match name.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => name.to_owned(),
        _ => format!("{name}:latest"),
    };
    let short: Vec<Found> = all(Match::Short)
        .filter(|f| f.key.ends_with(&format!("/{wanted}")))
        .collect();
    unique(name, short)
}

fn has_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(config: char) -> ImageRecord {
        ImageRecord {
            manifest: format!("sha256:{}", "0".repeat(64)),
            config: format!("sha256:{}", config.to_string().repeat(64)),
            repo_digest: None,
            chain_id: format!("sha256:{}", "1".repeat(64)),
            size: 1,
        }
    }

    #[test]
    fn names_ids_and_short_names() {
        let dir = std::env::temp_dir().join(format!("moat-lookup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store
            .tag(&["127.0.0.1:5000/team/app:1.4".into()], &record('a'))
            .unwrap();
        store
            .tag(&["docker.io/library/alpine:latest".into()], &record('b'))
            .unwrap();
        store
            .tag(&["127.0.0.1:5000/other/alpine:latest".into()], &record('c'))
            .unwrap();
        let key = |n: &str| find(&store, n).unwrap().map(|f| f.key);
        assert_eq!(
            key("app:1.4").as_deref(),
            Some("127.0.0.1:5000/team/app:1.4")
        );
        assert_eq!(
            key("team/app:1.4").as_deref(),
            Some("127.0.0.1:5000/team/app:1.4")
        );
        assert_eq!(
            key("alpine").as_deref(),
            Some("docker.io/library/alpine:latest")
        );
        assert_eq!(
            key("bbbbbbbbbbbb").as_deref(),
            Some("docker.io/library/alpine:latest")
        );
        assert_eq!(key("app:2"), None);
        assert_eq!(key("example.com/app:1.4"), None);
        store
            .tag(&["127.0.0.1:6000/x/app:1.4".into()], &record('d'))
            .unwrap();
        assert!(matches!(
            find(&store, "app:1.4"),
            Err(LookupError::Ambiguous { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
