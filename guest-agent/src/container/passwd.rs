//! A user string (`user`, `user:group`, `uid`, `uid:gid`, `user:gid`, `uid:group`, or empty
//! for root) resolved against the text of the container's `/etc/passwd` and `/etc/group`,
//! with docker's rules (runc's `GetExecUser`):
//! - a part of digits only is an id, anything else a name; a name must have an entry;
//! - an id with a passwd entry takes that entry's gid, home and name; one without gets gid 0,
//!   home `/`, and still works without any passwd file;
//! - without a group the supplementary groups are those of `/etc/group` that list the entry's
//!   name; with a group given there are none (docker adds them only in the implicit form);
//! - the primary gid is always the first supplementary group (as moby sets it since 20.10.18).
//!
//! Pure functions of the files' contents: no file access here.

/// Highest id accepted: a uid or gid of `u32::MAX` (-1) would mean "unchanged" to setresuid.
pub const MAX_ID: u32 = i32::MAX as u32;

/// A user string that cannot be resolved (the messages are docker's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The string is not `user[:group]`.
    #[error("invalid user {0:?}: expected USER[:GROUP], a name or an id each")]
    Invalid(String),
    /// An id above [`MAX_ID`].
    #[error("id {0} is out of range (0 to {MAX_ID})")]
    Range(String),
    /// A user name without a passwd entry.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// A group name without a group entry.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

/// The ids and home the process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups, the primary gid first.
    pub groups: Vec<u32>,
    /// `HOME` when the environment has none.
    pub home: String,
}

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// A part of the user string: an id or a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part<'a> {
    Id(u32),
    Name(&'a str),
}

/// An id field: digits only, at most [`MAX_ID`].
fn id(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| text.parse().ok())
        .flatten()
        .filter(|v| *v <= MAX_ID)
}

fn part(text: &str) -> Result<Part<'_>, UserError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Part::Name(text));
    }
    id(text)
        .map(Part::Id)
        .ok_or_else(|| UserError::Range(text.to_owned()))
}

/// Checks a user string's form: at most one `:`, no empty part (except the whole string,
/// which is root), no NUL or newline, no name starting with `-`; ids in range.
pub fn check(spec: &str) -> Result<(), UserError> {
    split(spec).map(|_| ())
}

/// The user and group parts of a checked user string.
fn split(spec: &str) -> Result<(Part<'_>, Option<Part<'_>>), UserError> {
    let invalid = || UserError::Invalid(spec.to_owned());
    if spec.is_empty() {
        return Ok((Part::Id(0), None));
    }
    if spec.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(invalid());
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let bad = |p: &str| p.is_empty() || p.contains(':') || p.starts_with('-');
    if bad(user) || group.is_some_and(bad) {
        return Err(invalid());
    }
    Ok((part(user)?, group.map(part).transpose()?))
}

/// The entries of a passwd file; comments, blank and malformed lines are skipped.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if line.trim_start().starts_with('#')
            || line.contains('\0')
            || f.len() < 4
            || f[0].is_empty()
        {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: id(f[2])?,
            gid: id(f[3])?,
            home: f.get(5).copied().unwrap_or_default(),
        })
    })
}

/// The entries of a group file; comments, blank and malformed lines are skipped.
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if line.trim_start().starts_with('#')
            || line.contains('\0')
            || f.len() < 3
            || f[0].is_empty()
        {
            return None;
        }
        let members = f.get(3).copied().unwrap_or_default();
        Some(GroupEntry {
            name: f[0],
            gid: id(f[2])?,
            members: members
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect(),
        })
    })
}

/// Resolves the user string `spec` against the files' contents (`None`: no such file).
pub fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    let (user, group_part) = split(spec)?;
    let entry = passwd.and_then(|text| {
        passwd_entries(text).find(|e| match user {
            Part::Id(uid) => e.uid == uid,
            Part::Name(name) => e.name == name,
        })
    });
    let (uid, mut gid, home, name) = match (entry, user) {
        (Some(e), _) => (e.uid, e.gid, e.home, Some(e.name)),
        (None, Part::Id(uid)) => (uid, 0, "", None),
        (None, Part::Name(name)) => return Err(UserError::NoUser(name.to_owned())),
    };
    let mut groups = Vec::new();
    match group_part {
        Some(g) => gid = group_id(g, group)?,
        None => {
            let member = |e: &GroupEntry| name.is_some_and(|n| e.members.contains(&n));
            let listed = group.into_iter().flat_map(group_entries).filter(member);
            groups.extend(listed.map(|e| e.gid));
        }
    }
    let mut all = vec![gid];
    for g in groups {
        if !all.contains(&g) {
            all.push(g);
        }
    }
    let home = if home.is_empty() { "/" } else { home };
    Ok(ExecUser {
        uid,
        gid,
        groups: all,
        home: home.to_owned(),
    })
}

/// The gid of an explicit group: an id as is, a name through the group file.
fn group_id(part: Part<'_>, group: Option<&str>) -> Result<u32, UserError> {
    match part {
        Part::Id(gid) => Ok(gid),
        Part::Name(name) => group
            .into_iter()
            .flat_map(group_entries)
            .find(|e| e.name == name)
            .map(|e| e.gid)
            .ok_or_else(|| UserError::NoGroup(name.to_owned())),
    }
}

#[cfg(test)]
#[path = "passwd_tests.rs"]
mod tests;
