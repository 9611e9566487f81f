use super::*;

const PASSWD: &str = "\
# comment
root:x:0:0:root:/root:/bin/sh

user:x:1000:1000:user:/home/user:/bin/sh
bad line without fields
broken:x:notanumber:1:b:/b:/bin/sh
short:x:1002
nohome:x:1003:1003
  # indented comment
web:x:33:33:www:/var/www:/sbin/nologin
dup:x:1000:5:dup:/dup:/bin/sh
";

const GROUP: &str = "\
root:x:0:
tty:x:5:
wheel:x:10:root,user
audio:x:29: user , web
users:x:100:
broken:x:zz:user
user:x:1000:
www:x:33:
# staff:x:50:user
";

fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
    ExecUser {
        uid,
        gid,
        groups: groups.to_vec(),
        home: home.into(),
    }
}

#[test]
fn every_form_resolves_like_docker() {
    let cases: [(&str, ExecUser); 14] = [
        ("", user(0, 0, &[0, 10], "/root")),
        ("root", user(0, 0, &[0, 10], "/root")),
        ("0", user(0, 0, &[0, 10], "/root")),
        ("user", user(1000, 1000, &[1000, 10, 29], "/home/user")),
        // An id takes the first entry with it.
        ("1000", user(1000, 1000, &[1000, 10, 29], "/home/user")),
        // An explicit group: no supplementary groups from the file.
        ("user:users", user(1000, 100, &[100], "/home/user")),
        ("user:77", user(1000, 77, &[77], "/home/user")),
        ("1000:100", user(1000, 100, &[100], "/home/user")),
        ("33:www", user(33, 33, &[33], "/var/www")),
        ("web", user(33, 33, &[33, 29], "/var/www")),
        // Ids without entries: gid 0, home /.
        ("4242", user(4242, 0, &[0], "/")),
        ("4242:4343", user(4242, 4343, &[4343], "/")),
        ("4242:users", user(4242, 100, &[100], "/")),
        // An entry without a home field.
        ("nohome", user(1003, 1003, &[1003], "/")),
    ];
    for (spec, want) in cases {
        assert_eq!(
            resolve(spec, Some(PASSWD), Some(GROUP)),
            Ok(want),
            "{spec:?}"
        );
    }
}

#[test]
fn missing_files() {
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Result<ExecUser, UserError>,
    );
    let cases: [Case; 7] = [
        ("1000", None, None, Ok(user(1000, 0, &[0], "/"))),
        ("1000:5", None, None, Ok(user(1000, 5, &[5], "/"))),
        ("", None, None, Ok(user(0, 0, &[0], "/"))),
        (
            "user",
            None,
            Some(GROUP),
            Err(UserError::NoUser("user".into())),
        ),
        (
            "1000:users",
            None,
            None,
            Err(UserError::NoGroup("users".into())),
        ),
        // A passwd file but no group file: no supplementary groups.
        (
            "user",
            Some(PASSWD),
            None,
            Ok(user(1000, 1000, &[1000], "/home/user")),
        ),
        (
            "user:tty",
            Some(PASSWD),
            None,
            Err(UserError::NoGroup("tty".into())),
        ),
    ];
    for (spec, passwd, group, want) in cases {
        assert_eq!(
            resolve(spec, passwd, group),
            want,
            "{spec:?} {passwd:?} {group:?}"
        );
    }
}

#[test]
fn unknown_and_malformed_entries_are_not_found() {
    let cases: [(&str, UserError); 6] = [
        ("nobody", UserError::NoUser("nobody".into())),
        ("broken", UserError::NoUser("broken".into())),
        ("short", UserError::NoUser("short".into())),
        ("#", UserError::NoUser("#".into())),
        ("user:staff", UserError::NoGroup("staff".into())),
        ("user:broken", UserError::NoGroup("broken".into())),
    ];
    for (spec, want) in cases {
        assert_eq!(
            resolve(spec, Some(PASSWD), Some(GROUP)),
            Err(want),
            "{spec:?}"
        );
    }
    assert_eq!(
        UserError::NoUser("nobody".into()).to_string(),
        "unable to find user nobody: no matching entries in passwd file"
    );
    assert_eq!(
        UserError::NoGroup("staff".into()).to_string(),
        "unable to find group staff: no matching entries in group file"
    );
}

#[test]
fn bad_user_strings() {
    let invalid = ["a:b:c", ":", "user:", ":100", "a\0b", "a\nb", "-1", "u:-g"];
    for spec in invalid {
        assert_eq!(
            check(spec),
            Err(UserError::Invalid(spec.into())),
            "{spec:?}"
        );
    }
    for spec in ["2147483648", "1:4294967295", "99999999999999999999"] {
        assert!(matches!(check(spec), Err(UserError::Range(_))), "{spec:?}");
    }
    for spec in ["", "0", "user", "1000:1000", "a.b-c_d", "user:2147483647"] {
        assert_eq!(check(spec), Ok(()), "{spec:?}");
    }
}

#[test]
fn entries_with_out_of_range_ids_are_skipped() {
    let passwd = "big:x:4294967295:0:b:/b:/bin/sh\nsmall:x:7:4294967295:s:/s:/bin/sh\n";
    assert_eq!(
        resolve("big", Some(passwd), None),
        Err(UserError::NoUser("big".into()))
    );
    assert_eq!(
        resolve("small", Some(passwd), None),
        Err(UserError::NoUser("small".into()))
    );
}
