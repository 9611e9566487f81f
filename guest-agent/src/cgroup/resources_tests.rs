//! The mappings on a temp dir standing in for the cgroup directory: each writes the exact text
//! expected; each refusal names its OCI field.

use std::fs;

use oci_spec::runtime::LinuxResources;

use super::{blkio_to_io_weight, plan, shares_to_weight, Setting, Target};
use crate::cgroup::{open_for_test, CgroupError, TestDir};

/// Every file a fully enabled cgroup v2 directory has that the mappings use.
const FILES: &[&str] = &[
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "memory.high",
    "memory.current",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.weight",
    "io.max",
];

struct Fixture {
    cgroup: TestDir,
    dev_block: TestDir,
}

impl Fixture {
    fn new() -> Self {
        Self::with_files(FILES)
    }

    fn with_files(files: &[&str]) -> Self {
        let f = Self {
            cgroup: TestDir::new("res"),
            dev_block: TestDir::new("devblock"),
        };
        for file in files {
            fs::write(f.cgroup.0.join(file), "").unwrap();
        }
        fs::write(f.cgroup.0.join("memory.current"), "4096\n").unwrap();
        fs::write(
            f.cgroup.0.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::create_dir(f.dev_block.0.join("254:0")).unwrap();
        fs::create_dir(f.dev_block.0.join("254:16")).unwrap();
        f
    }

    fn without(self, file: &str) -> Self {
        fs::remove_file(self.cgroup.0.join(file)).unwrap();
        self
    }

    /// Applies `json` (a `linux.resources` object) through `Cgroup::write_limits`.
    fn apply(&self, json: &str) -> Result<(), CgroupError> {
        let r: LinuxResources = serde_json::from_str(json).expect("valid resources json");
        open_for_test(&self.cgroup.0, &self.dev_block.0).write_limits(&r)
    }

    fn plan(&self, json: &str) -> Vec<Setting> {
        let r: LinuxResources = serde_json::from_str(json).expect("valid resources json");
        let target = Target {
            dir: &self.cgroup.0,
            dev_block: &self.dev_block.0,
        };
        plan(&r, &target).expect("plan")
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.cgroup.0.join(file)).unwrap()
    }

    fn expect(&self, json: &str, file: &str, text: &str) {
        self.apply(json).expect("apply");
        assert_eq!(self.read(file), text, "{file} after {json}");
    }
}

fn writes(json: &str, file: &str, text: &str) {
    Fixture::new().expect(json, file, text);
}

#[track_caller]
fn refused(f: &Fixture, json: &str, field: &str) {
    match f.apply(json) {
        Err(CgroupError::Refused { field: got, reason }) => {
            assert_eq!(got, field, "refused for {reason}");
            let text = CgroupError::Refused { field: got, reason }.to_string();
            assert!(text.starts_with(field), "{text}");
        }
        other => panic!("{json}: expected a refusal naming {field}, got {other:?}"),
    }
}

#[track_caller]
fn refuses(json: &str, field: &str) {
    refused(&Fixture::new(), json, field);
}

#[test]
fn memory_mappings() {
    writes(
        r#"{"memory": {"limit": 268435456}}"#,
        "memory.max",
        "268435456",
    );
    writes(r#"{"memory": {"limit": -1}}"#, "memory.max", "max");
    writes(
        r#"{"memory": {"reservation": 1048576}}"#,
        "memory.low",
        "1048576",
    );
    let swap = r#"{"memory": {"limit": 1000000, "swap": 3000000}}"#;
    writes(swap, "memory.swap.max", "2000000");
    writes(swap, "memory.max", "1000000");
    writes(
        r#"{"memory": {"limit": 1000000, "swap": -1}}"#,
        "memory.swap.max",
        "max",
    );
    writes(
        r#"{"memory": {"limit": 1000000, "swap": 1000000}}"#,
        "memory.swap.max",
        "0",
    );
    let checked = r#"{"memory": {"limit": 8192, "checkBeforeUpdate": true}}"#;
    writes(checked, "memory.max", "8192");
    writes(
        r#"{"memory": {"disableOOMKiller": false}}"#,
        "memory.max",
        "",
    );
}

#[test]
fn swap_equal_to_limit_needs_no_swap_file() {
    let f = Fixture::new().without("memory.swap.max");
    f.expect(
        r#"{"memory": {"limit": 4096, "swap": 4096}}"#,
        "memory.max",
        "4096",
    );
    refused(
        &f,
        r#"{"memory": {"limit": 4096, "swap": 8192}}"#,
        "linux.resources.memory.swap",
    );
}

#[test]
fn memory_refusals() {
    let m = "linux.resources.memory";
    refuses(r#"{"memory": {"limit": 0}}"#, &format!("{m}.limit"));
    refuses(r#"{"memory": {"limit": -2}}"#, &format!("{m}.limit"));
    refuses(
        r#"{"memory": {"reservation": 0}}"#,
        &format!("{m}.reservation"),
    );
    refuses(
        r#"{"memory": {"limit": 10, "swap": 5}}"#,
        &format!("{m}.swap"),
    );
    refuses(r#"{"memory": {"swap": 5000}}"#, &format!("{m}.swap"));
    refuses(
        r#"{"memory": {"swappiness": 0}}"#,
        &format!("{m}.swappiness"),
    );
    refuses(r#"{"memory": {"kernel": 1048576}}"#, &format!("{m}.kernel"));
    refuses(
        r#"{"memory": {"kernelTCP": 1048576}}"#,
        &format!("{m}.kernelTCP"),
    );
    refuses(
        r#"{"memory": {"disableOOMKiller": true}}"#,
        &format!("{m}.disableOOMKiller"),
    );
    refuses(
        r#"{"memory": {"useHierarchy": false}}"#,
        &format!("{m}.useHierarchy"),
    );
    let below = r#"{"memory": {"limit": 4095, "checkBeforeUpdate": true}}"#;
    refuses(below, &format!("{m}.checkBeforeUpdate"));
}

#[test]
fn cpu_mappings() {
    writes(
        r#"{"cpu": {"quota": 50000, "period": 100000}}"#,
        "cpu.max",
        "50000 100000",
    );
    writes(r#"{"cpu": {"quota": 20000}}"#, "cpu.max", "20000 100000");
    writes(
        r#"{"cpu": {"quota": -1, "period": 50000}}"#,
        "cpu.max",
        "max 50000",
    );
    writes(r#"{"cpu": {"period": 250000}}"#, "cpu.max", "max 250000");
    writes(r#"{"cpu": {"shares": 1024}}"#, "cpu.weight", "39");
    writes(r#"{"cpu": {"shares": 2}}"#, "cpu.weight", "1");
    writes(r#"{"cpu": {"shares": 262144}}"#, "cpu.weight", "10000");
    writes(r#"{"cpu": {"burst": 1000}}"#, "cpu.max.burst", "1000");
    writes(r#"{"cpu": {"idle": 1}}"#, "cpu.idle", "1");
    writes(r#"{"cpu": {"cpus": "0-1"}}"#, "cpuset.cpus", "0-1");
    writes(r#"{"cpu": {"mems": "0"}}"#, "cpuset.mems", "0");
    // A weight set through unified wins over the one from shares: it is written last.
    let both = r#"{"cpu": {"shares": 1024}, "unified": {"cpu.weight": "77"}}"#;
    writes(both, "cpu.weight", "77");
}

#[test]
fn shares_formula_matches_crun_and_runc() {
    assert_eq!(shares_to_weight(1024), 1 + (1022 * 9999) / 262_142);
    assert_eq!(shares_to_weight(512), 20);
    assert_eq!(shares_to_weight(0), 1, "clamped to the v1 minimum");
}

#[test]
fn cpu_refusals() {
    let c = "linux.resources.cpu";
    refuses(r#"{"cpu": {"quota": 0}}"#, &format!("{c}.quota"));
    refuses(r#"{"cpu": {"quota": -5}}"#, &format!("{c}.quota"));
    refuses(
        r#"{"cpu": {"quota": 1000, "period": 0}}"#,
        &format!("{c}.period"),
    );
    refuses(r#"{"cpu": {"idle": 2}}"#, &format!("{c}.idle"));
    refuses(
        r#"{"cpu": {"realtimeRuntime": 950000}}"#,
        &format!("{c}.realtimeRuntime"),
    );
    let f = Fixture::new().without("cpu.max.burst");
    refused(&f, r#"{"cpu": {"burst": 10}}"#, &format!("{c}.burst"));
}

#[test]
fn pids_mappings() {
    writes(r#"{"pids": {"limit": 3}}"#, "pids.max", "3");
    writes(r#"{"pids": {"limit": -1}}"#, "pids.max", "max");
    refuses(r#"{"pids": {"limit": 0}}"#, "linux.resources.pids.limit");
    let f = Fixture::new().without("pids.max");
    refused(
        &f,
        r#"{"pids": {"limit": 3}}"#,
        "linux.resources.pids.limit",
    );
}

#[test]
fn block_io_weight() {
    writes(
        r#"{"blockIO": {"weight": 500}}"#,
        "io.weight",
        "default 4950",
    );
    assert_eq!(blkio_to_io_weight(10), 1);
    assert_eq!(blkio_to_io_weight(1000), 10_000);
    let bfq = Fixture::with_files(&["io.bfq.weight", "io.max"]);
    bfq.expect(
        r#"{"blockIO": {"weight": 300}}"#,
        "io.bfq.weight",
        "default 300",
    );
    let dev = r#"{"blockIO": {"weightDevice": [{"major": 254, "minor": 16, "weight": 1000}]}}"#;
    writes(dev, "io.weight", "254:16 10000");
    bfq.expect(dev, "io.bfq.weight", "254:16 1000");
}

#[test]
fn block_io_throttles() {
    let json = r#"{"blockIO": {
        "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}],
        "throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 2097152}],
        "throttleReadIOPSDevice": [{"major": 254, "minor": 16, "rate": 100}],
        "throttleWriteIOPSDevice": [{"major": 254, "minor": 16, "rate": 0}]
    }}"#;
    let lines: Vec<(String, String)> = Fixture::new()
        .plan(json)
        .into_iter()
        .map(|s| (s.file, s.value))
        .collect();
    let io_max = |v: &str| ("io.max".to_owned(), v.to_owned());
    assert_eq!(
        lines,
        [
            io_max("254:0 rbps=1048576"),
            io_max("254:0 wbps=2097152"),
            io_max("254:16 riops=100"),
            io_max("254:16 wiops=max"),
        ]
    );
    writes(json, "io.max", "254:16 wiops=max");
}

#[test]
fn block_io_refusals() {
    let b = "linux.resources.blockIO";
    refuses(r#"{"blockIO": {"weight": 5}}"#, &format!("{b}.weight"));
    refuses(
        r#"{"blockIO": {"leafWeight": 500}}"#,
        &format!("{b}.leafWeight"),
    );
    let leaf = r#"{"blockIO": {"weightDevice": [{"major": 254, "minor": 0, "leafWeight": 10}]}}"#;
    refuses(leaf, &format!("{b}.weightDevice[0].leafWeight"));
    let not_block = r#"{"blockIO": {"throttleReadBpsDevice": [
        {"major": 254, "minor": 0, "rate": 1}, {"major": 8, "minor": 0, "rate": 1}]}}"#;
    refuses(not_block, &format!("{b}.throttleReadBpsDevice[1]"));
    let dev = r#"{"blockIO": {"weightDevice": [{"major": 1, "minor": 3, "weight": 100}]}}"#;
    refuses(dev, &format!("{b}.weightDevice[0]"));
    let f = Fixture::with_files(&["io.max"]);
    refused(
        &f,
        r#"{"blockIO": {"weight": 100}}"#,
        &format!("{b}.weight"),
    );
}

#[test]
fn v1_only_resources_are_refused() {
    let r = "linux.resources";
    let huge = r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}"#;
    refuses(huge, &format!("{r}.hugepageLimits"));
    refuses(
        r#"{"rdma": {"mlx5_0": {"hcaHandles": 3}}}"#,
        &format!("{r}.rdma"),
    );
    refuses(r#"{"network": {"classID": 1}}"#, &format!("{r}.network"));
}

#[test]
fn unified_keys() {
    writes(
        r#"{"unified": {"memory.high": "1000000"}}"#,
        "memory.high",
        "1000000",
    );
    let u = "linux.resources.unified";
    refuses(r#"{"unified": {"../x.y": "1"}}"#, &format!("{u}.../x.y"));
    refuses(r#"{"unified": {"memory": "1"}}"#, &format!("{u}.memory"));
    refuses(
        r#"{"unified": {"cgroup.kill": "1"}}"#,
        &format!("{u}.cgroup.kill"),
    );
    refuses(
        r#"{"unified": {"hugetlb.2MB.max": "1"}}"#,
        &format!("{u}.hugetlb.2MB.max"),
    );
    refuses(
        r#"{"unified": {"memory.nonexistent": "1"}}"#,
        &format!("{u}.memory.nonexistent"),
    );
}

#[test]
fn nothing_is_written_when_a_later_field_is_refused() {
    let f = Fixture::new();
    let json = r#"{"memory": {"limit": 4096}, "pids": {"limit": 0}}"#;
    refused(&f, json, "linux.resources.pids.limit");
    assert_eq!(
        f.read("memory.max"),
        "",
        "memory.max written before the refusal"
    );
}

#[test]
fn empty_resources_write_nothing() {
    assert_eq!(Fixture::new().plan("{}"), []);
}
