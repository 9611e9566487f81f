//! Jail ids: the container id, used as a directory and cgroup name.

use std::fmt;
use std::str::FromStr;

/// Longest id.
pub const MAX_ID_LEN: usize = 64;

/// Invalid ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("invalid jail id: it is empty")]
    Empty,
    /// Longer than [`MAX_ID_LEN`].
    #[error("invalid jail id {0:?}: longer than {MAX_ID_LEN} characters")]
    TooLong(String),
    /// A character outside the allowed set, or a bad first character.
    #[error("invalid jail id {0:?}: use [A-Za-z0-9_.-], starting with a letter or digit")]
    Chars(String),
    /// Contains `..`.
    #[error("invalid jail id {0:?}: it must not contain \"..\"")]
    DotDot(String),
}

/// A valid jail id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}` without `..`, so it is one safe path
/// component (no `/`, never `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JailId(String);

impl JailId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, IdError> {
        let bytes = id.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(IdError::Empty);
        };
        if bytes.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(id.to_owned()));
        }
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if !first.is_ascii_alphanumeric() || !bytes.iter().all(allowed) {
            return Err(IdError::Chars(id.to_owned()));
        }
        if id.contains("..") {
            return Err(IdError::DotDot(id.to_owned()));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JailId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for JailId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for id in ["a", "0", "web.1", "a_b-c", &"x".repeat(64)] {
            assert_eq!(JailId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn invalid_ids() {
        assert_eq!(JailId::new(""), Err(IdError::Empty));
        assert!(matches!(
            JailId::new(&"x".repeat(65)),
            Err(IdError::TooLong(_))
        ));
        for id in ["..", "../x", "a/b", ".a", "-a", "_a", "a b", "a\0", "é"] {
            assert!(matches!(JailId::new(id), Err(IdError::Chars(_))), "{id}");
        }
        assert!(matches!(JailId::new("a..b"), Err(IdError::DotDot(_))));
        assert!(JailId::new("a.b").is_ok());
    }
}
