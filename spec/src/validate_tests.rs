use serde_json::{json, Value};

use super::*;
use crate::RunOptions;

/// A valid spec as JSON, changed by `edit`, validated: the error's field and message.
fn refused(edit: impl FnOnce(&mut Value)) -> SpecError {
    let opts = RunOptions {
        args: vec!["sh".into()],
        cwd: "/".into(),
        hostname: "box".into(),
        ..Default::default()
    };
    let mut value = serde_json::to_value(opts.to_spec()).unwrap();
    validate(&serde_json::from_value(value.clone()).unwrap(), None).unwrap();
    edit(&mut value);
    let spec: Spec = serde_json::from_value(value).unwrap();
    validate(&spec, None).unwrap_err()
}

#[track_caller]
fn assert_field(err: &SpecError, field: &str) {
    assert_eq!(err.field, field, "{err}");
    assert!(err.to_string().starts_with(&format!("{field}: ")));
}

#[test]
fn oci_version_major() {
    assert_field(&refused(|v| v["ociVersion"] = json!("2.0.0")), "ociVersion");
}

#[test]
fn root_path_escaping() {
    assert_field(
        &refused(|v| v["root"]["path"] = json!("../rootfs")),
        "root.path",
    );
    assert_field(&refused(|v| v["root"]["path"] = json!("/abs")), "root.path");
}

#[test]
fn relative_mount_destination() {
    let err = refused(|v| v["mounts"][0]["destination"] = json!("proc"));
    assert_field(&err, "mounts[0].destination");
    let err = refused(|v| v["mounts"][1]["destination"] = json!("/dev/../etc"));
    assert_field(&err, "mounts[1].destination");
}

#[test]
fn mount_source_escaping() {
    let err = refused(|v| v["mounts"][2]["source"] = json!("../../etc"));
    assert_field(&err, "mounts[2].source");
}

#[test]
fn cwd_relative_or_proc_fd() {
    assert_field(
        &refused(|v| v["process"]["cwd"] = json!("tmp")),
        "process.cwd",
    );
    assert_field(
        &refused(|v| v["process"]["cwd"] = json!("/proc/self/fd/3")),
        "process.cwd",
    );
}

#[test]
fn empty_args() {
    assert_field(
        &refused(|v| v["process"]["args"] = json!([])),
        "process.args",
    );
}

fn with_user_ns(v: &mut Value) {
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
}

#[test]
fn overlapping_id_maps() {
    let err = refused(|v| {
        with_user_ns(v);
        v["linux"]["uidMappings"] = json!([
            {"containerID": 0, "hostID": 1000, "size": 100},
            {"containerID": 50, "hostID": 5000, "size": 10}
        ]);
    });
    assert_field(&err, "linux.uidMappings[1]");
    assert!(err.problem.contains("overlaps linux.uidMappings[0]"));
    let err = refused(|v| {
        with_user_ns(v);
        v["linux"]["gidMappings"] = json!([
            {"containerID": 0, "hostID": 1000, "size": 100},
            {"containerID": 100, "hostID": 1099, "size": 10}
        ]);
    });
    assert_field(&err, "linux.gidMappings[1]");
}

#[test]
fn id_map_onto_guest_root() {
    let err = refused(|v| {
        with_user_ns(v);
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]);
    });
    assert_field(&err, "linux.uidMappings[0].hostID");
}

#[test]
fn id_maps_without_user_ns() {
    let err = refused(|v| {
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
    });
    assert_field(&err, "linux.uidMappings");
}

#[test]
fn zero_limits() {
    let cases = [
        (
            json!({"memory": {"limit": 0}}),
            "linux.resources.memory.limit",
        ),
        (
            json!({"memory": {"limit": -5}}),
            "linux.resources.memory.limit",
        ),
        (
            json!({"memory": {"limit": 100, "swap": 50}}),
            "linux.resources.memory.swap",
        ),
        (json!({"pids": {"limit": 0}}), "linux.resources.pids.limit"),
        (json!({"cpu": {"quota": 0}}), "linux.resources.cpu.quota"),
        (json!({"cpu": {"period": 0}}), "linux.resources.cpu.period"),
        (
            json!({"blockIO": {"weight": 5}}),
            "linux.resources.blockIO.weight",
        ),
        (
            json!({"blockIO": {"throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 0}]}}),
            "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
        ),
        (
            json!({"blockIO": {"throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 0}]}}),
            "linux.resources.blockIO.throttleWriteIOPSDevice[0].rate",
        ),
    ];
    for (resources, field) in cases {
        assert_field(&refused(|v| v["linux"]["resources"] = resources), field);
    }
}

#[test]
fn non_namespaced_sysctl() {
    let err = refused(|v| v["linux"]["sysctl"] = json!({"vm.swappiness": "10"}));
    assert_field(&err, "linux.sysctl[\"vm.swappiness\"]");
    let err = refused(|v| {
        v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        v["linux"]["namespaces"] = json!([{"type": "uts"}]);
    });
    assert_field(&err, "linux.sysctl[\"net.ipv4.ip_forward\"]");
}

#[test]
fn namespace_twice_or_with_path() {
    let err = refused(|v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "pid"}))
    });
    assert_field(&err, "linux.namespaces[6]");
    let err = refused(|v| v["linux"]["namespaces"][0]["path"] = json!("/proc/1/ns/pid"));
    assert_field(&err, "linux.namespaces[0].path");
}

#[test]
fn hostname_without_uts() {
    let err = refused(|v| v["linux"]["namespaces"] = json!([{"type": "mount"}]));
    assert_field(&err, "hostname");
}

#[test]
fn device_outside_dev() {
    let err = refused(|v| {
        v["linux"]["devices"] = json!([{"path": "/etc/null", "type": "c", "major": 1, "minor": 3}]);
    });
    assert_field(&err, "linux.devices[0].path");
}

#[test]
fn rlimit_soft_above_hard() {
    let err = refused(|v| {
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
    });
    assert_field(&err, "process.rlimits[0]");
}

#[test]
fn bundle_root_must_stay_inside() {
    let dir = std::env::temp_dir().join(format!("moat-spec-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b/rootfs")).unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::os::unix::fs::symlink("../outside", dir.join("b/link")).unwrap();
    let opts = RunOptions {
        args: vec!["sh".into()],
        cwd: "/".into(),
        ..Default::default()
    };
    let mut spec = opts.to_spec();
    let bundle = dir.join("b");
    validate(&spec, Some(&bundle)).unwrap();
    let holder = dir.display().to_string();
    for bad in ["link", "../outside", ".", "/", &holder] {
        spec.root_mut().as_mut().unwrap().set_path(bad.into());
        let err = validate(&spec, Some(&bundle)).unwrap_err();
        assert_eq!(err.field, "root.path", "{bad}");
    }
    // Elsewhere, absolute: as Docker's overlay mount is.
    let outside = dir.join("outside").display().to_string();
    spec.root_mut().as_mut().unwrap().set_path(outside.into());
    validate(&spec, Some(&bundle)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
