//! `linux.resources` → the cgroup v2 files that express it: a plan of (field, file, value)
//! writes, checked against the files the cgroup has, before anything is written.
//!
//! Mappings follow what runc and crun do on cgroup v2; what v2 cannot express is refused with
//! the OCI field named, never dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources, LinuxThrottleDevice,
    LinuxWeightDevice,
};

use super::CgroupError;

/// The default period of cpu.max when the spec sets a quota only (the kernel's default).
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// One write: `value` into the cgroup's `file`, on behalf of the OCI `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The OCI field, e.g. `linux.resources.memory.limit`.
    pub field: String,
    /// The file in the cgroup directory, e.g. `memory.max`.
    pub file: String,
    /// The text written.
    pub value: String,
}

/// Where the plan looks: the cgroup directory and the sysfs directory of block devices.
pub struct Target<'a> {
    /// The cgroup directory.
    pub dir: &'a Path,
    /// `/sys/dev/block` in the guest; its `MAJ:MIN` entries are the block devices.
    pub dev_block: &'a Path,
}

impl Target<'_> {
    fn has(&self, file: &str) -> bool {
        self.dir.join(file).exists()
    }

    fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let path = self.dir.join("cgroup.controllers");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Io {
            op: "reading",
            path,
            source,
        })?;
        Ok(text.split_whitespace().map(str::to_owned).collect())
    }

    fn is_block_device(&self, major: i64, minor: i64) -> bool {
        let entry: PathBuf = self.dev_block.join(format!("{major}:{minor}"));
        major >= 0 && minor >= 0 && entry.exists()
    }
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> CgroupError {
    CgroupError::Refused {
        field: field.into(),
        reason: reason.into(),
    }
}

struct Plan<'a> {
    target: &'a Target<'a>,
    settings: Vec<Setting>,
}

impl Plan<'_> {
    /// Plans a write to a file the cgroup must have (else: refused, naming the field).
    fn set(&mut self, field: &str, file: &str, value: String) -> Result<(), CgroupError> {
        if !self.target.has(file) {
            return Err(refuse(
                field,
                format!("this guest's cgroup has no {file} (controller or kernel option off)"),
            ));
        }
        self.settings.push(Setting {
            field: field.to_owned(),
            file: file.to_owned(),
            value,
        });
        Ok(())
    }
}

/// Plans every write for `r`; refuses what cgroup v2 (or this guest) cannot apply.
/// Device rules are not files: see [`super::devices`].
pub fn plan(r: &LinuxResources, target: &Target<'_>) -> Result<Vec<Setting>, CgroupError> {
    refuse_v1_only(r)?;
    let mut plan = Plan {
        target,
        settings: Vec::new(),
    };
    if let Some(memory) = r.memory() {
        plan_memory(&mut plan, memory)?;
    }
    if let Some(cpu) = r.cpu() {
        plan_cpu(&mut plan, cpu)?;
    }
    if let Some(pids) = r.pids() {
        plan_pids(&mut plan, pids)?;
    }
    if let Some(block_io) = r.block_io() {
        plan_block_io(&mut plan, block_io)?;
    }
    if let Some(unified) = r.unified() {
        plan_unified(&mut plan, unified)?;
    }
    Ok(plan.settings)
}

fn refuse_v1_only(r: &LinuxResources) -> Result<(), CgroupError> {
    let field = "linux.resources";
    if r.hugepage_limits().as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(refuse(
            format!("{field}.hugepageLimits"),
            "the guest kernel has no hugetlb controller",
        ));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(refuse(
            format!("{field}.rdma"),
            "a microVM has no RDMA devices",
        ));
    }
    if r.network().is_some() {
        return Err(refuse(
            format!("{field}.network"),
            "net_cls/net_prio exist on cgroup v1 only",
        ));
    }
    Ok(())
}

/// `-1` → "max", a positive number → itself, anything else refused.
fn limit_value(field: &str, value: i64) -> Result<String, CgroupError> {
    match value {
        -1 => Ok("max".to_owned()),
        v if v > 0 => Ok(v.to_string()),
        _ => Err(refuse(field, "must be positive (or -1 for unlimited)")),
    }
}

#[allow(deprecated)] // reads memory.kernel only to refuse it
fn plan_memory(plan: &mut Plan<'_>, m: &LinuxMemory) -> Result<(), CgroupError> {
    let f = "linux.resources.memory";
    if m.kernel().is_some() {
        return Err(refuse(
            format!("{f}.kernel"),
            "cgroup v2 has no kernel memory limit",
        ));
    }
    if m.kernel_tcp().is_some() {
        return Err(refuse(
            format!("{f}.kernelTCP"),
            "cgroup v2 has no kernel TCP limit",
        ));
    }
    if m.swappiness().is_some() {
        return Err(refuse(
            format!("{f}.swappiness"),
            "cgroup v2 has no per-cgroup swappiness",
        ));
    }
    if m.disable_oom_killer() == Some(true) {
        return Err(refuse(
            format!("{f}.disableOOMKiller"),
            "cgroup v2 cannot disable the OOM killer",
        ));
    }
    if m.use_hierarchy() == Some(false) {
        return Err(refuse(
            format!("{f}.useHierarchy"),
            "cgroup v2 is always hierarchical",
        ));
    }
    if let Some(limit) = m.limit() {
        let field = format!("{f}.limit");
        let value = limit_value(&field, limit)?;
        if m.check_before_update() == Some(true) {
            check_usage_below(plan, &format!("{f}.checkBeforeUpdate"), limit)?;
        }
        plan.set(&field, "memory.max", value)?;
    }
    if let Some(swap) = m.swap() {
        plan_swap(plan, m.limit(), swap)?;
    }
    if let Some(reservation) = m.reservation() {
        let field = format!("{f}.reservation");
        let value = limit_value(&field, reservation)?;
        plan.set(&field, "memory.low", value)?;
    }
    Ok(())
}

/// checkBeforeUpdate: the new limit must not be below the memory already in use.
fn check_usage_below(plan: &Plan<'_>, field: &str, limit: i64) -> Result<(), CgroupError> {
    if limit < 0 {
        return Ok(());
    }
    let path = plan.target.dir.join("memory.current");
    let current = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .ok_or_else(|| refuse(field, "cannot read memory.current"))?;
    if limit < current {
        return Err(refuse(
            field,
            format!("the limit {limit} is below the current usage {current}"),
        ));
    }
    Ok(())
}

/// OCI's swap is memory + swap; v2's memory.swap.max is the swap alone.
fn plan_swap(plan: &mut Plan<'_>, limit: Option<i64>, swap: i64) -> Result<(), CgroupError> {
    let field = "linux.resources.memory.swap";
    let value = match (swap, limit) {
        (-1, _) => "max".to_owned(),
        (s, _) if s <= 0 => return Err(refuse(field, "must be positive (or -1 for unlimited)")),
        (_, None) | (_, Some(-1)) => {
            return Err(refuse(
                field,
                "needs a memory.limit (swap is memory + swap)",
            ))
        }
        (s, Some(l)) if s < l => {
            return Err(refuse(
                field,
                "must not be below memory.limit (it is memory + swap)",
            ))
        }
        (s, Some(l)) => (s - l).to_string(),
    };
    if value == "0" && !plan.target.has("memory.swap.max") {
        // No swap in this guest kernel: "no swap" already holds.
        return Ok(());
    }
    plan.set(field, "memory.swap.max", value)
}

/// The crun/runc mapping of cgroup v1 shares [2, 262144] onto v2 weights [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn plan_cpu(plan: &mut Plan<'_>, c: &LinuxCpu) -> Result<(), CgroupError> {
    let f = "linux.resources.cpu";
    if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
        return Err(refuse(
            format!("{f}.realtimeRuntime"),
            "the guest kernel has no real-time group scheduling",
        ));
    }
    if let Some(shares) = c.shares().filter(|&s| s != 0) {
        let weight = shares_to_weight(shares).to_string();
        plan.set(&format!("{f}.shares"), "cpu.weight", weight)?;
    }
    plan_cpu_max(plan, c)?;
    if let Some(burst) = c.burst() {
        plan.set(&format!("{f}.burst"), "cpu.max.burst", burst.to_string())?;
    }
    if let Some(idle) = c.idle() {
        if !(0..=1).contains(&idle) {
            return Err(refuse(format!("{f}.idle"), "must be 0 or 1"));
        }
        plan.set(&format!("{f}.idle"), "cpu.idle", idle.to_string())?;
    }
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        plan.set(&format!("{f}.cpus"), "cpuset.cpus", cpus.to_owned())?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        plan.set(&format!("{f}.mems"), "cpuset.mems", mems.to_owned())?;
    }
    Ok(())
}

fn plan_cpu_max(plan: &mut Plan<'_>, c: &LinuxCpu) -> Result<(), CgroupError> {
    let f = "linux.resources.cpu";
    if c.quota().is_none() && c.period().is_none() {
        return Ok(());
    }
    let quota = match c.quota() {
        None | Some(-1) => "max".to_owned(),
        Some(q) if q > 0 => q.to_string(),
        Some(_) => return Err(refuse(format!("{f}.quota"), "must be positive (or -1)")),
    };
    let period = match c.period() {
        None => DEFAULT_CPU_PERIOD,
        Some(0) => return Err(refuse(format!("{f}.period"), "must be positive")),
        Some(p) => p,
    };
    plan.set(
        &format!("{f}.quota"),
        "cpu.max",
        format!("{quota} {period}"),
    )
}

fn plan_pids(plan: &mut Plan<'_>, p: &LinuxPids) -> Result<(), CgroupError> {
    let field = "linux.resources.pids.limit";
    let value = match p.limit() {
        0 => return Err(refuse(field, "must be positive (or -1 for unlimited)")),
        l if l < 0 => "max".to_owned(),
        l => l.to_string(),
    };
    plan.set(field, "pids.max", value)
}

/// OCI blkio weights [10, 1000] onto io.weight's [1, 10000] (runc's mapping).
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight).saturating_sub(10) * 9999) / 990
}

fn check_weight(field: &str, weight: u16) -> Result<(), CgroupError> {
    if (10..=1000).contains(&weight) {
        Ok(())
    } else {
        Err(refuse(field, "must be between 10 and 1000"))
    }
}

/// The weight file and value: io.weight (scaled) if the guest has it, else io.bfq.weight.
fn weight_setting(plan: &Plan<'_>, weight: u16) -> (&'static str, u64) {
    if plan.target.has("io.weight") {
        ("io.weight", blkio_to_io_weight(weight))
    } else {
        ("io.bfq.weight", u64::from(weight))
    }
}

fn plan_block_io(plan: &mut Plan<'_>, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let f = "linux.resources.blockIO";
    if b.leaf_weight().is_some() {
        return Err(refuse(
            format!("{f}.leafWeight"),
            "exists on cgroup v1 (CFQ) only",
        ));
    }
    if let Some(weight) = b.weight().filter(|&w| w != 0) {
        let field = format!("{f}.weight");
        check_weight(&field, weight)?;
        let (file, value) = weight_setting(plan, weight);
        plan.set(&field, file, format!("default {value}"))?;
    }
    for (i, dev) in b.weight_device().iter().flatten().enumerate() {
        plan_weight_device(plan, &format!("{f}.weightDevice[{i}]"), dev)?;
    }
    let throttles = [
        (
            "throttleReadBpsDevice",
            "rbps",
            b.throttle_read_bps_device(),
        ),
        (
            "throttleWriteBpsDevice",
            "wbps",
            b.throttle_write_bps_device(),
        ),
        (
            "throttleReadIOPSDevice",
            "riops",
            b.throttle_read_iops_device(),
        ),
        (
            "throttleWriteIOPSDevice",
            "wiops",
            b.throttle_write_iops_device(),
        ),
    ];
    for (name, key, devices) in throttles {
        for (i, dev) in devices.iter().flatten().enumerate() {
            plan_throttle(plan, &format!("{f}.{name}[{i}]"), key, dev)?;
        }
    }
    Ok(())
}

fn check_block_device(
    plan: &Plan<'_>,
    field: &str,
    major: i64,
    minor: i64,
) -> Result<(), CgroupError> {
    if plan.target.is_block_device(major, minor) {
        Ok(())
    } else {
        Err(refuse(
            field,
            format!("{major}:{minor} is not a block device in the guest"),
        ))
    }
}

fn plan_weight_device(
    plan: &mut Plan<'_>,
    field: &str,
    dev: &LinuxWeightDevice,
) -> Result<(), CgroupError> {
    if dev.leaf_weight().is_some() {
        return Err(refuse(
            format!("{field}.leafWeight"),
            "exists on cgroup v1 (CFQ) only",
        ));
    }
    let Some(weight) = dev.weight() else {
        return Err(refuse(format!("{field}.weight"), "is missing"));
    };
    check_weight(&format!("{field}.weight"), weight)?;
    check_block_device(plan, field, dev.major(), dev.minor())?;
    let (file, value) = weight_setting(plan, weight);
    let line = format!("{}:{} {value}", dev.major(), dev.minor());
    plan.set(field, file, line)
}

fn plan_throttle(
    plan: &mut Plan<'_>,
    field: &str,
    key: &str,
    dev: &LinuxThrottleDevice,
) -> Result<(), CgroupError> {
    check_block_device(plan, field, dev.major(), dev.minor())?;
    // As on cgroup v1 (where these fields come from), a rate of 0 means no limit.
    let rate = match dev.rate() {
        0 => "max".to_owned(),
        r => r.to_string(),
    };
    let line = format!("{}:{} {key}={rate}", dev.major(), dev.minor());
    plan.set(field, "io.max", line)
}

/// A unified key must be a plain `controller.file` of a controller enabled for this cgroup.
fn plan_unified(plan: &mut Plan<'_>, unified: &HashMap<String, String>) -> Result<(), CgroupError> {
    let controllers = plan.target.controllers()?;
    let mut keys: Vec<&String> = unified.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("linux.resources.unified.{key}");
        let plain = !key.contains('/') && !key.starts_with('.') && key != "." && key != "..";
        let Some((controller, rest)) = key.split_once('.').filter(|_| plain) else {
            return Err(refuse(field, "must be a plain controller.file name"));
        };
        if rest.is_empty() || !controllers.iter().any(|c| c == controller) {
            return Err(refuse(
                field,
                format!("controller {controller:?} is not enabled for this cgroup"),
            ));
        }
        plan.set(&field, key, unified[key].clone())?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
