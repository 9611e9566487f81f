use super::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
    let mut c = ImageConfig::default();
    c.config.entrypoint = entrypoint.map(strings);
    c.config.cmd = cmd.map(strings);
    c
}

#[test]
fn parses_docker_config_with_nulls() {
    let json = br#"{
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Entrypoint": null, "Cmd": ["sh"], "Env": null, "WorkingDir": "",
                   "User": "", "Labels": null, "ExposedPorts": {"80/tcp": {}},
                   "StopSignal": "SIGQUIT", "Volumes": null, "OnBuild": null},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
        "history": [{"created_by": "x"}]
    }"#;
    let c = ImageConfig::from_json(json).unwrap();
    assert_eq!((c.architecture.as_str(), c.os.as_str()), ("amd64", "linux"));
    assert_eq!(c.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    assert_eq!(c.config.entrypoint, None);
    assert_eq!(c.config.cmd, Some(strings(&["sh"])));
    assert!(c.config.env.is_empty() && c.config.labels.is_empty());
    assert!(c.config.exposed_ports.contains_key("80/tcp"));
    assert_eq!(c.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.rootfs.kind, "layers");
    assert_eq!(c.rootfs.diff_ids, ["sha256:aa"]);
}

#[test]
fn parses_sparse_and_null_sections() {
    for json in [
        &br#"{}"#[..],
        br#"{"config": null, "rootfs": null, "os": null}"#,
    ] {
        let c = ImageConfig::from_json(json).unwrap();
        assert_eq!(
            c,
            ImageConfig::default(),
            "{}",
            String::from_utf8_lossy(json)
        );
    }
    assert!(ImageConfig::from_json(b"[1]").is_err());
    assert!(ImageConfig::from_json(br#"{"config": {"Env": "A=1"}}"#).is_err());
}

#[test]
fn process_args_follow_docker() {
    type Case<'a> = (
        Option<&'a [&'a str]>,
        Option<&'a [&'a str]>,
        Option<&'a str>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let ep: &[&str] = &["/entry", "-x"];
    let cmd: &[&str] = &["serve", "--port=1"];
    let cases: [Case; 16] = [
        // Image Entrypoint and Cmd, no flag: Entrypoint + (args, else Cmd).
        (
            Some(ep),
            Some(cmd),
            None,
            &[],
            &["/entry", "-x", "serve", "--port=1"],
        ),
        (Some(ep), Some(cmd), None, &["a"], &["/entry", "-x", "a"]),
        (Some(ep), None, None, &[], &["/entry", "-x"]),
        (None, Some(cmd), None, &[], &["serve", "--port=1"]),
        (None, Some(cmd), None, &["ls", "-l"], &["ls", "-l"]),
        (None, None, None, &["ls"], &["ls"]),
        // --entrypoint X: X + args, the image's Cmd dropped.
        (Some(ep), Some(cmd), Some("/bin/sh"), &[], &["/bin/sh"]),
        (
            Some(ep),
            Some(cmd),
            Some("/bin/sh"),
            &["-c", "id"],
            &["/bin/sh", "-c", "id"],
        ),
        (None, Some(cmd), Some("a b"), &[], &["a b"]),
        (None, None, Some("x"), &["y"], &["x", "y"]),
        // --entrypoint "": no entrypoint and no image Cmd either.
        (Some(ep), Some(cmd), Some(""), &["ls"], &["ls"]),
        (None, Some(cmd), Some(""), &["ls", "-a"], &["ls", "-a"]),
        // An image entrypoint of [""] is none.
        (Some(&[""]), Some(cmd), None, &[], &["serve", "--port=1"]),
        (Some(&[]), Some(cmd), None, &[], &["serve", "--port=1"]),
        (Some(ep), Some(&[]), None, &[], &["/entry", "-x"]),
        (None, Some(&[]), None, &["true"], &["true"]),
    ];
    for (entrypoint, cmd, flag, args, want) in cases {
        let got = process_args(&image(entrypoint, cmd), flag, &strings(args)).unwrap();
        assert_eq!(
            got,
            strings(want),
            "{entrypoint:?} {cmd:?} {flag:?} {args:?}"
        );
    }
}

#[test]
fn no_command_is_docker_error() {
    type Case<'a> = (
        Option<&'a [&'a str]>,
        Option<&'a [&'a str]>,
        Option<&'a str>,
    );
    let cases: [Case; 6] = [
        (None, None, None),
        (Some(&[]), Some(&[]), None),
        (Some(&[""]), None, None),
        (None, Some(&["sh"]), Some("")),
        (Some(&["/e"]), Some(&["sh"]), Some("")),
        (None, None, Some("")),
    ];
    for (entrypoint, cmd, flag) in cases {
        let err = process_args(&image(entrypoint, cmd), flag, &[]).unwrap_err();
        assert_eq!(err.to_string(), "no command specified");
    }
}

#[test]
fn env_merges_defaults_image_and_user() {
    let path = format!("PATH={DEFAULT_PATH}");
    let box_ = EnvDefaults {
        hostname: "box",
        terminal: false,
    };
    let tty = EnvDefaults {
        hostname: "box",
        terminal: true,
    };
    type Case<'a> = (&'a [&'a str], EnvDefaults<'a>, &'a [&'a str], Vec<&'a str>);
    let cases: [Case; 7] = [
        (&[], box_, &[], vec![&path, "HOSTNAME=box"]),
        (&[], tty, &[], vec![&path, "HOSTNAME=box", "TERM=xterm"]),
        // The image's PATH replaces the default; -e replaces the image's by key.
        (
            &["PATH=/img", "A=1"],
            box_,
            &[],
            vec!["PATH=/img", "HOSTNAME=box", "A=1"],
        ),
        (
            &["PATH=/img", "A=1"],
            box_,
            &["A=2", "B=3"],
            vec!["PATH=/img", "HOSTNAME=box", "A=2", "B=3"],
        ),
        (
            &["A=1"],
            box_,
            &["PATH=/u"],
            vec!["PATH=/u", "HOSTNAME=box", "A=1"],
        ),
        // A bare KEY (unset where moat runs) removes the image's value.
        (
            &["A=1", "B=2"],
            tty,
            &["A", "TERM=vt100"],
            vec![&path, "HOSTNAME=box", "TERM=vt100", "B=2"],
        ),
        // Entries without a key are dropped; values keep their `=`.
        (
            &["=x", "C=a=b"],
            box_,
            &["D="],
            vec![&path, "HOSTNAME=box", "C=a=b", "D="],
        ),
    ];
    for (image_env, defaults, user_env, want) in cases {
        let got = merge_env(&strings(image_env), defaults, &strings(user_env));
        assert_eq!(got, want, "{image_env:?} {user_env:?}");
    }
}

#[test]
fn working_dir_and_user_flags_win() {
    let mut c = ImageConfig::default();
    assert_eq!(working_dir(&c, None), "/");
    assert_eq!(working_dir(&c, Some("/w")), "/w");
    c.config.working_dir = "/app".into();
    assert_eq!(working_dir(&c, None), "/app");
    assert_eq!(working_dir(&c, Some("/w")), "/w");
    c.config.working_dir = "app".into();
    assert_eq!(working_dir(&c, None), "/app");
    assert_eq!(user(&c, None), "");
    assert_eq!(user(&c, Some("1000")), "1000");
    c.config.user = "nginx:web".into();
    assert_eq!(user(&c, None), "nginx:web");
    assert_eq!(user(&c, Some("root")), "root");
}
