//! The VM of a CRI pod sized from the pod's declared resources: containerd's CRI plugin puts
//! the sum of the pod's container limits on the sandbox's spec as annotations (containerd 1.6+,
//! when the kubelet sends them), and the sandbox's task boots the pod's VM.
//!
//! The VM gets what `moat run` gives a container with those limits (`--memory` + 96 MiB, at
//! least 256 MiB; enough vCPUs for the CPU quota), so the pod's limits fit in its VM; without
//! the annotations the shim config's size (or moat's default) applies.

use anyhow::{bail, Context};
use serde_json::Value;

/// `io.kubernetes.cri.container-type`: `sandbox` for a pod's sandbox.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's memory limit in bytes (0: none).
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// The pod's CPU quota in microseconds per period (0 or -1: none).
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// The CPU period in microseconds.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// Most vCPUs a VM has (moat-vmm's `--cpus` bound).
const MAX_VM_CPUS: u8 = 32;

/// The VM size the pod declares: (`--vm-cpus`, `--vm-memory` in MiB), each `None` when the
/// annotations do not give it or this is no sandbox.
pub fn of_annotations(spec: &Value) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let annotations = &spec["annotations"];
    if annotations[CONTAINER_TYPE].as_str() != Some("sandbox") {
        return Ok((None, None));
    }
    let number = |key: &str| -> anyhow::Result<Option<i64>> {
        match &annotations[key] {
            Value::Null => Ok(None),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .with_context(|| format!("annotation {key}: {s:?} is not a number")),
            other => bail!("annotation {key}: {other} is not a string"),
        }
    };
    let memory = number(SANDBOX_MEMORY)?.filter(|&m| m > 0).map(|m| m as u64);
    let cpu_quota = number(SANDBOX_CPU_QUOTA)?.filter(|&q| q > 0);
    // Without a period, the kernel's default (100 ms), as for a container's own quota.
    let cpu_period = number(SANDBOX_CPU_PERIOD)?
        .filter(|&p| p > 0)
        .map(|p| p as u64);
    let limits = moat_spec::resources::Limits {
        memory,
        cpu_quota,
        cpu_period,
        ..Default::default()
    };
    let cpus = cpu_quota.map(|_| limits.vm_cpus(None));
    if let Some(n) = cpus.filter(|&n| n > u64::from(MAX_VM_CPUS)) {
        bail!(
            "annotations {SANDBOX_CPU_QUOTA}/{SANDBOX_CPU_PERIOD} ask for {n} vCPUs; a VM has \
             at most {MAX_VM_CPUS}"
        );
    }
    let memory_mib = memory.map(|_| limits.vm_memory_mib());
    Ok((cpus, memory_mib))
}

/// The empty disk slots a pod sandbox's VM boots with, for the pod's later containers (one for
/// each one's image, one for each of its volumes): moat-vmm has 19 virtio devices, and the
/// vsock, the sandbox's image and the pod's writable layer take three.
pub const POD_DISK_SLOTS: u8 = 12;

/// The `moat run` flags sizing the VM: the pod's annotations first, then the shim config's;
/// a pod sandbox's VM gets [`POD_DISK_SLOTS`].
pub fn flags(spec: &Value, config: &super::config::ShimConfig) -> anyhow::Result<Vec<String>> {
    let (cpus, memory_mib) = of_annotations(spec)?;
    let mut flags = Vec::new();
    if spec["annotations"][CONTAINER_TYPE].as_str() == Some("sandbox") {
        flags.extend(["--disk-slots".to_owned(), POD_DISK_SLOTS.to_string()]);
    }
    match (memory_mib, &config.vm_memory) {
        (Some(mib), _) => flags.extend(["--vm-memory".to_owned(), format!("{mib}m")]),
        (None, Some(m)) => flags.extend(["--vm-memory".to_owned(), m.clone()]),
        (None, None) => {}
    }
    match (cpus, config.vm_cpus) {
        (Some(n), _) => flags.extend(["--vm-cpus".to_owned(), n.to_string()]),
        (None, Some(n)) => flags.extend(["--vm-cpus".to_owned(), n.to_string()]),
        (None, None) => {}
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::config::ShimConfig;
    use super::*;

    fn sandbox(extra: Value) -> Value {
        let mut a = json!({ CONTAINER_TYPE: "sandbox" });
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "annotations": a })
    }

    #[test]
    fn a_pod_with_limits_sizes_its_vm() {
        let spec = sandbox(json!({
            SANDBOX_MEMORY: "536870912",
            SANDBOX_CPU_QUOTA: "150000",
            SANDBOX_CPU_PERIOD: "100000",
        }));
        assert_eq!(of_annotations(&spec).unwrap(), (Some(2), Some(512 + 96)));
        let config = ShimConfig {
            vm_memory: Some("1g".into()),
            vm_cpus: Some(4),
        };
        assert_eq!(
            flags(&spec, &config).unwrap(),
            [
                "--disk-slots",
                "12",
                "--vm-memory",
                "608m",
                "--vm-cpus",
                "2"
            ]
        );
    }

    #[test]
    fn without_limits_the_config_decides() {
        let config = ShimConfig {
            vm_memory: Some("1g".into()),
            vm_cpus: None,
        };
        let unlimited = sandbox(json!({ SANDBOX_MEMORY: "0", SANDBOX_CPU_QUOTA: "-1" }));
        assert_eq!(of_annotations(&unlimited).unwrap(), (None, None));
        assert_eq!(
            flags(&unlimited, &config).unwrap(),
            ["--disk-slots", "12", "--vm-memory", "1g"]
        );
        // Not a sandbox: a plain task's annotations say nothing about a pod.
        let task = json!({ "annotations": { SANDBOX_MEMORY: "536870912" } });
        assert_eq!(of_annotations(&task).unwrap(), (None, None));
        assert!(flags(&json!({}), &ShimConfig::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn malformed_annotations_are_refused_by_name() {
        let err = of_annotations(&sandbox(json!({ SANDBOX_MEMORY: "lots" }))).unwrap_err();
        assert!(err.to_string().contains(SANDBOX_MEMORY), "{err}");
        let huge = sandbox(json!({ SANDBOX_CPU_QUOTA: "9223372036854775807" }));
        let err = of_annotations(&huge).unwrap_err();
        assert!(err.to_string().contains("at most 32"), "{err}");
        // A quota without a period: the default period.
        let quota = sandbox(json!({ SANDBOX_CPU_QUOTA: "250000" }));
        assert_eq!(of_annotations(&quota).unwrap(), (Some(3), None));
    }
}
