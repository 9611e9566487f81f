//! The names and PAX values of layer entries: paths normalized (or refused), whiteouts told
//! apart, PAX numbers and times parsed.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::Timespec;

use crate::layers::MAX_PATH;

/// The prefix of a whiteout's name.
const WHITEOUT: &[u8] = b".wh.";
/// The name of an opaque directory's marker.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The most components a path may have (Linux's PATH_MAX allows 2048; removing a tree keeps a
/// descriptor per level).
pub const MAX_DEPTH: usize = 256;

/// The tar path `raw` as normal components: a leading `/` and `.` components dropped; a `..`,
/// a NUL, or more than [`MAX_PATH`] bytes refused (the reason is returned).
pub(crate) fn normalize(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.len() > MAX_PATH {
        return Err("the path is longer than 4096 bytes");
    }
    if raw.contains(&0) {
        return Err("NUL in the name");
    }
    let mut rel = PathBuf::new();
    let mut depth = 0;
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("`..` in the path"),
            name => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err("the path has more than 256 components");
                }
                rel.push(OsStr::from_bytes(name))
            }
        }
    }
    Ok(rel)
}

/// Whether `rel` is a whiteout, and which.
pub(crate) fn whiteout(rel: &Path) -> Result<Option<Whiteout>, &'static str> {
    let Some(name) = rel.file_name().map(OsStr::as_bytes) else {
        return Ok(None);
    };
    let Some(hidden) = name.strip_prefix(WHITEOUT) else {
        return Ok(None);
    };
    if name == OPAQUE {
        return Ok(Some(Whiteout::Opaque));
    }
    if hidden.starts_with(WHITEOUT) {
        return Ok(Some(Whiteout::Ignored));
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err("a whiteout of no name");
    }
    Ok(Some(Whiteout::Remove(OsString::from_vec(hidden.to_vec()))))
}

/// A decimal PAX number.
pub(crate) fn pax_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time: seconds, optionally with a fraction (`1700000000.5`).
pub(crate) fn pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Timespec {
        tv_sec: secs.parse().ok()?,
        tv_nsec: nanos,
    })
}

/// What a whiteout entry asks for.
pub(crate) enum Whiteout {
    /// `.wh.NAME`: remove `NAME` of the lower layers.
    Remove(OsString),
    /// `.wh..wh..opq`: the directory is opaque.
    Opaque,
    /// Another `.wh..wh.` name (aufs' own): ignored.
    Ignored,
}
