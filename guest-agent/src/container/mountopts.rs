//! The `options` of an OCI mount: mount flags, propagation, bind, and the rest as the
//! filesystem's data string.

/// Parsed options of one mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `MS_*` flags to set.
    pub flags: libc::c_ulong,
    /// Whether `rw` was given explicitly (sysfs is read-only unless asked).
    pub rw: bool,
    /// A bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// `rbind`: recursive.
    pub recursive: bool,
    /// Propagation flags (`MS_PRIVATE` etc., with `MS_REC` for the r- forms), 0 for none.
    pub propagation: libc::c_ulong,
    /// Everything else, comma-joined, for the filesystem (`size=`, `mode=`, ...).
    pub data: Vec<String>,
}

const ATIME_MASK: libc::c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

/// Parses `options` in order (a later option wins over an earlier one).
pub fn parse(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        if let Some((set, clear)) = flag(opt) {
            o.flags = (o.flags & !clear) | set;
            o.rw |= opt == "rw";
        } else if let Some(p) = propagation(opt) {
            o.propagation = p;
        } else {
            match opt.as_str() {
                "bind" => o.bind = true,
                "rbind" => (o.bind, o.recursive) = (true, true),
                "defaults" => {}
                _ => o.data.push(opt.clone()),
            }
        }
    }
    o
}

/// (flags set, flags cleared) of a flag option.
fn flag(opt: &str) -> Option<(libc::c_ulong, libc::c_ulong)> {
    let f = match opt {
        "ro" => (libc::MS_RDONLY, 0),
        "rw" => (0, libc::MS_RDONLY),
        "nosuid" => (libc::MS_NOSUID, 0),
        "suid" => (0, libc::MS_NOSUID),
        "nodev" => (libc::MS_NODEV, 0),
        "dev" => (0, libc::MS_NODEV),
        "noexec" => (libc::MS_NOEXEC, 0),
        "exec" => (0, libc::MS_NOEXEC),
        "sync" => (libc::MS_SYNCHRONOUS, 0),
        "async" => (0, libc::MS_SYNCHRONOUS),
        "dirsync" => (libc::MS_DIRSYNC, 0),
        "nodiratime" => (libc::MS_NODIRATIME, 0),
        "diratime" => (0, libc::MS_NODIRATIME),
        "noatime" => (libc::MS_NOATIME, ATIME_MASK),
        "relatime" => (libc::MS_RELATIME, ATIME_MASK),
        "strictatime" => (libc::MS_STRICTATIME, ATIME_MASK),
        "atime" | "norelatime" => (0, ATIME_MASK),
        _ => return None,
    };
    Some(f)
}

fn propagation(opt: &str) -> Option<libc::c_ulong> {
    let rec = libc::MS_REC;
    let p = match opt {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | rec,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | rec,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | rec,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | rec,
        _ => return None,
    };
    Some(p)
}

/// The propagation of `linux.rootfsPropagation`.
pub fn root_propagation(value: &str) -> Option<libc::c_ulong> {
    propagation(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_propagation_and_data() {
        let o = opts(&[
            "nosuid",
            "noexec",
            "ro",
            "size=65536k",
            "mode=1777",
            "rslave",
        ]);
        let want = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY;
        assert_eq!(o.flags, want);
        assert_eq!(o.propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(o.data, ["size=65536k", "mode=1777"]);
        assert!(!o.bind && !o.rw);
        let o = opts(&["ro", "rw", "rbind", "noatime", "strictatime", "newinstance"]);
        assert_eq!(o.flags, libc::MS_STRICTATIME);
        assert!(o.rw && o.bind && o.recursive);
        assert_eq!(o.data, ["newinstance"]);
        assert_eq!(opts(&["bind", "defaults"]).data, Vec::<String>::new());
        assert_eq!(root_propagation("private"), Some(libc::MS_PRIVATE));
        assert_eq!(root_propagation("bogus"), None);
    }
}
