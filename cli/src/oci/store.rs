//! Where OCI containers live: `<--root>/<id>` is a link to the container's state directory,
//! `/run/moat/.oci/oci-<16 hex>` (short, so that its sockets fit a socket address whatever the
//! length of `--root` and of the id; a dot name, so the docker-style commands never list it).

use std::io;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

use moat_runtime::sandbox::record::Plan;
use moat_runtime::sandbox::store::{self, Container};

/// runc's default state root is /run/runc; moat's for OCI containers.
pub const DEFAULT_ROOT: &str = "/run/moat-oci";

/// runc's words for an unknown id (containerd's shim matches "does not exist").
pub const NOT_EXIST: &str = "container does not exist";

/// The base of OCI containers' state directories.
pub fn state_base() -> PathBuf {
    Path::new(moat_runtime::state::STATE_ROOT).join(".oci")
}

/// Checks an id as runc does: letters, digits, `_`, `+`, `-`, `.`; not `.` or `..`.
pub fn check_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if !ok {
        bail!("invalid container id format: {id}");
    }
    Ok(())
}

/// The container `id` under `root`.
pub fn find(root: &Path, id: &str) -> Option<Container> {
    check_id(id).ok()?;
    let target = std::fs::read_link(root.join(id)).ok()?;
    Container::load(&target).ok()
}

/// Every container under `root` with its id, oldest first.
pub fn list(root: &Path) -> Vec<(String, Container)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut all: Vec<(String, Container)> = entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            find(root, &id).map(|c| (id, c))
        })
        .collect();
    all.sort_by_key(|(id, c)| (c.state.created, id.clone()));
    all
}

/// Makes the link `<root>/<id>` (refused when it exists) and the state directory of `plan`
/// (whose `config.id` names it under [`state_base`]).
pub fn reserve(root: &Path, id: &str, plan: &Plan) -> anyhow::Result<PathBuf> {
    check_id(id)?;
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    // /run/moat itself first: created here it must be what `moat run` checks (0700, root's).
    moat_jail::layout::check_base(Path::new(moat_runtime::state::STATE_ROOT))?;
    let base = state_base();
    let dir = base.join(&plan.config.id);
    let link = root.join(id);
    match std::os::unix::fs::symlink(&dir, &link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            bail!("container with id exists: {id}")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", link.display())),
    }
    store::reserve(&base, plan).map_err(|e| {
        let _ = std::fs::remove_file(&link);
        e.into()
    })
}

/// Removes the link of `id` (its directory is gone or going).
pub fn unlink(root: &Path, id: &str) {
    let _ = std::fs::remove_file(root.join(id));
}

/// A short name for a new container's state directory.
pub fn dir_name() -> String {
    let id = moat_runtime::sandbox::record::long_id();
    format!("oci-{}", &id[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc() {
        for good in ["abc", "a-b_c.d+e", "0123456789abcdef"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
