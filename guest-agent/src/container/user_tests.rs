use std::collections::HashMap;
use std::ffi::CString;

use super::*;
use crate::container::plan;
use crate::container::security::Security;
use crate::syscall::Linux;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:user\nuser:x:1000:\n";

/// Files by path; a path of `None` fails to read.
struct Files(HashMap<&'static str, Option<&'static str>>);

impl RootFiles for Files {
    fn read(&self, path: &'static str) -> Result<Option<String>, ResolveError> {
        match self.0.get(path) {
            None => Ok(None),
            Some(Some(text)) => Ok(Some(text.to_string())),
            Some(None) => Err(ResolveError::Read {
                path,
                source: io::Error::from_raw_os_error(libc::EIO),
            }),
        }
    }
}

fn files(entries: &[(&'static str, Option<&'static str>)]) -> Files {
    Files(entries.iter().copied().collect())
}

fn process(env: &[&str], additional: &[u32]) -> ProcessSpec {
    ProcessSpec {
        args: vec!["id".into()],
        env: env.iter().map(|e| e.to_string()).collect(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: additional.to_vec(),
        terminal: false,
        rows: 0,
        cols: 0,
    }
}

fn env_of(plan: &ExecPlan) -> Vec<String> {
    plan.envp
        .strings()
        .iter()
        .map(|s| s.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn resolves_from_the_files() {
    let both = files(&[("/etc/passwd", Some(PASSWD)), ("/etc/group", Some(GROUP))]);
    let none = files(&[]);
    let failing = files(&[("/etc/passwd", None)]);
    type Case<'a> = (&'a Files, &'a str, Result<(u32, u32, Vec<u32>), String>);
    let cases: [Case; 5] = [
        (&both, "user", Ok((1000, 1000, vec![1000, 10]))),
        (&both, "", Ok((0, 0, vec![0]))),
        (&none, "1000", Ok((1000, 0, vec![0]))),
        (
            &none,
            "user",
            Err("unable to find user user: no matching entries in passwd file".into()),
        ),
        (
            &failing,
            "0",
            Err("reading /etc/passwd in the container root".into()),
        ),
    ];
    for (files, spec, want) in cases {
        let got = resolve(files, spec)
            .map(|u| (u.uid, u.gid, u.groups))
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{spec:?}");
    }
}

#[test]
fn apply_sets_ids_home_and_drops_caps_of_a_non_root_user() {
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [u32],
        &'a [&'a str],
        &'a [u32],
        u64,
    );
    let cases: [Case; 4] = [
        (
            "user",
            &["PATH=/bin"],
            &[],
            &["PATH=/bin", "HOME=/home/user"],
            &[1000, 10],
            0,
        ),
        (
            "user",
            &["HOME=/x"],
            &[10, 7],
            &["HOME=/x"],
            &[1000, 10, 7],
            0,
        ),
        ("root", &[], &[], &["HOME=/root"], &[0], 0xff),
        ("4242", &[], &[], &["HOME=/"], &[0], 0),
    ];
    let both = files(&[("/etc/passwd", Some(PASSWD)), ("/etc/group", Some(GROUP))]);
    for (spec, env, additional, want_env, want_groups, want_caps) in cases {
        let mut p = process(env, additional);
        let mut sec = Security::default();
        sec.caps.effective = 0xff;
        sec.caps.permitted = 0xff;
        sec.caps.ambient = 0xff;
        let mut plan = plan::build(&p, sec).unwrap();
        let user = resolve(&both, spec).unwrap();
        apply(&user, &mut p, &mut plan).unwrap();
        assert_eq!(env_of(&plan), want_env, "{spec:?}");
        assert_eq!(plan.groups, want_groups, "{spec:?}");
        assert_eq!((plan.uid, plan.gid), (user.uid, user.gid));
        assert_eq!((p.uid, p.gid), (user.uid, user.gid));
        for caps in [plan.security.caps, plan.init_security.caps] {
            let sets = (caps.effective, caps.permitted, caps.ambient);
            assert_eq!(sets, (want_caps, want_caps, want_caps), "{spec:?}");
        }
    }
}

fn spec_with(user: Option<&str>) -> Spec {
    let mut spec = Spec::default();
    if let Some(u) = user {
        spec.set_annotations(Some([(USER_ANNOTATION.to_owned(), u.to_owned())].into()));
    }
    spec
}

#[test]
fn annotation_is_checked_before_the_start() {
    assert_eq!(wanted(&spec_with(None)), None);
    assert_eq!(wanted(&spec_with(Some("a:b"))), Some("a:b"));
    assert!(check(&spec_with(None)).is_ok());
    assert!(check(&spec_with(Some("user:users"))).is_ok());
    let err = check(&spec_with(Some("a:b:c"))).unwrap_err().to_string();
    assert!(
        err.starts_with("annotations[org.moat.user]: invalid user"),
        "{err}"
    );
}

fn temp_root(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-user-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root/etc")).unwrap();
    std::fs::create_dir_all(dir.join("root/lib")).unwrap();
    dir
}

#[test]
fn in_root_reads_stay_inside_the_root() {
    let dir = temp_root("inroot");
    let root = dir.join("root");
    std::fs::write(dir.join("outside"), "evil:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::write(root.join("lib/passwd"), PASSWD).unwrap();
    // A symlink inside the image that points inside it is followed.
    std::os::unix::fs::symlink("/lib/passwd", root.join("etc/passwd")).unwrap();
    // One that climbs out resolves under the root, where nothing is.
    std::os::unix::fs::symlink("../../../../../outside", root.join("etc/group")).unwrap();
    let c_root = CString::new(root.to_str().unwrap()).unwrap();
    let files = InRoot {
        sys: &Linux,
        root: &c_root,
    };
    assert_eq!(files.read("/etc/passwd").unwrap().as_deref(), Some(PASSWD));
    assert_eq!(files.read("/etc/group").unwrap(), None);
    assert_eq!(files.read("/etc/shadow").unwrap(), None);
    std::fs::create_dir(root.join("etc/dir")).unwrap();
    assert!(matches!(
        files.read("/etc/dir"),
        Err(ResolveError::NotFile(_))
    ));
    let big = std::fs::File::create(root.join("etc/big")).unwrap();
    big.set_len(MAX_FILE + 1).unwrap();
    assert!(matches!(
        files.read("/etc/big"),
        Err(ResolveError::TooLarge(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
