//! Cgroup limits from docker's resource flags, and the VM size that follows from them.

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources, LinuxThrottleDevice,
    LinuxThrottleDeviceBuilder, Spec,
};

use crate::parse::Throttle;

/// CFS period docker uses with `--cpus`: 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What the guest needs besides the container's memory limit. Measured in the nested test host
/// (2026-11-23): an idle guest leaves `MemAvailable` = VM size - 31 MiB (12 MiB the kernel
/// keeps, 19 MiB used by the kernel, the agent and its mounts); a container allocating up to 8
/// MiB below its limit (56 of 64, 152 of 160, 392 of 400 MiB) ran without an OOM kill in a VM of
/// limit + 96 MiB (at least 256). The rest is room for the guest's page cache; the overlay's
/// upper layer is charged to the container's own cgroup.
pub const GUEST_OVERHEAD_MIB: u64 = 96;

/// The smallest VM moat sizes from a limit (the default VM size).
pub const MIN_VM_MIB: u64 = 256;

/// Errors combining resource flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    /// `--cpus` with `--cpu-quota` or `--cpu-period`.
    #[error("conflicting options: --cpus cannot be combined with --cpu-quota or --cpu-period")]
    CpusAndQuota,
    /// `--memory-swap` without `--memory` (docker's words).
    #[error("--memory-swap: You should always set the Memory limit when using Memoryswap limit, see usage")]
    SwapWithoutMemory,
    /// `--memory-swap` below `--memory` (docker's words).
    #[error(
        "--memory-swap: Minimum memoryswap limit should be larger than memory limit, see usage"
    )]
    SwapBelowMemory,
    /// `--memory-reservation` above `--memory` (docker's words).
    #[error("--memory-reservation: Minimum memory limit can not be less than memory reservation limit, see usage")]
    ReservationAboveLimit,
    /// A zero or too large memory value.
    #[error("--{0} must be greater than zero and below 8 EiB")]
    BadMemory(&'static str),
}

/// The CPU limit that sizes a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLimit {
    /// `--cpus`.
    Cpus,
    /// `--cpu-quota` / `--cpu-period` (`linux.resources.cpu.quota`).
    Quota,
    /// `--cpuset-cpus` (`linux.resources.cpu.cpus`).
    Cpuset,
}

/// Docker's resource flags, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `-m/--memory`, bytes.
    pub memory: Option<u64>,
    /// `--memory-swap`: memory + swap in bytes, `-1` unlimited.
    pub memory_swap: Option<i64>,
    /// `--memory-reservation`, bytes.
    pub memory_reservation: Option<u64>,
    /// `--cpus`, in billionths of a CPU.
    pub nano_cpus: Option<u64>,
    /// `--cpu-shares`.
    pub cpu_shares: Option<u64>,
    /// `--cpu-quota`, µs (`-1`: none).
    pub cpu_quota: Option<i64>,
    /// `--cpu-period`, µs.
    pub cpu_period: Option<u64>,
    /// `--cpuset-cpus`.
    pub cpuset_cpus: Option<String>,
    /// `--pids-limit` (`-1`: none).
    pub pids_limit: Option<i64>,
    /// `--blkio-weight`.
    pub blkio_weight: Option<u16>,
    /// `--device-read-bps`.
    pub read_bps: Vec<Throttle>,
    /// `--device-write-bps`.
    pub write_bps: Vec<Throttle>,
    /// `--device-read-iops`.
    pub read_iops: Vec<Throttle>,
    /// `--device-write-iops`.
    pub write_iops: Vec<Throttle>,
}

impl Limits {
    /// Checks the combinations docker refuses.
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.nano_cpus.is_some() && (self.cpu_quota.is_some() || self.cpu_period.is_some()) {
            return Err(LimitsError::CpusAndQuota);
        }
        for (name, value) in [
            ("memory", self.memory),
            ("memory-reservation", self.memory_reservation),
        ] {
            if value.is_some_and(|v| v == 0 || i64::try_from(v).is_err()) {
                return Err(LimitsError::BadMemory(name));
            }
        }
        // As docker: a swap of 0 is no value, and -1 (unlimited) needs no memory limit.
        match (self.memory, self.swap()) {
            (None, Some(swap)) if swap > 0 => return Err(LimitsError::SwapWithoutMemory),
            (Some(memory), Some(swap)) if swap > 0 && (swap as u64) < memory => {
                return Err(LimitsError::SwapBelowMemory)
            }
            _ => {}
        }
        if let (Some(m), Some(r)) = (self.memory, self.memory_reservation) {
            if r > m {
                return Err(LimitsError::ReservationAboveLimit);
            }
        }
        Ok(())
    }

    /// `--memory-swap`, 0 (docker's "not set") as none.
    fn swap(&self) -> Option<i64> {
        self.memory_swap.filter(|s| *s != 0)
    }

    /// Writes the limits into `resources` (device rules are left as they are).
    pub fn apply(&self, resources: &mut LinuxResources) {
        resources.set_memory(self.memory());
        resources.set_cpu(self.cpu());
        resources.set_pids(self.pids_limit.map(|limit| {
            let mut pids = LinuxPids::default();
            pids.set_limit(limit);
            pids
        }));
        resources.set_block_io(self.block_io());
    }

    fn memory(&self) -> Option<LinuxMemory> {
        if self.memory.is_none() && self.memory_reservation.is_none() {
            return None;
        }
        let bytes = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut memory = LinuxMemory::default();
        memory.set_limit(self.memory.map(bytes));
        memory.set_reservation(self.memory_reservation.map(bytes));
        // Docker: with --memory and no --memory-swap, as much swap as memory.
        let swap = self
            .swap()
            .or_else(|| self.memory.map(|m| bytes(m).saturating_mul(2)));
        memory.set_swap(swap);
        Some(memory)
    }

    fn cpu(&self) -> Option<LinuxCpu> {
        let (quota, period) = match self.nano_cpus {
            Some(nanos) => {
                let quota = u128::from(nanos) * u128::from(CPU_PERIOD_US) / 1_000_000_000;
                (Some(quota.max(1000) as i64), Some(CPU_PERIOD_US))
            }
            None => (self.cpu_quota, self.cpu_period),
        };
        if quota.is_none()
            && period.is_none()
            && self.cpu_shares.is_none()
            && self.cpuset_cpus.is_none()
        {
            return None;
        }
        let mut cpu = LinuxCpu::default();
        cpu.set_quota(quota);
        cpu.set_period(period);
        cpu.set_shares(self.cpu_shares);
        cpu.set_cpus(self.cpuset_cpus.clone());
        Some(cpu)
    }

    fn block_io(&self) -> Option<LinuxBlockIo> {
        let throttles = |list: &[Throttle]| -> Option<Vec<LinuxThrottleDevice>> {
            (!list.is_empty()).then(|| list.iter().map(throttle_device).collect())
        };
        let io = [
            &self.read_bps,
            &self.write_bps,
            &self.read_iops,
            &self.write_iops,
        ];
        if self.blkio_weight.is_none() && io.iter().all(|l| l.is_empty()) {
            return None;
        }
        let mut block_io = LinuxBlockIo::default();
        block_io.set_weight(self.blkio_weight);
        block_io.set_throttle_read_bps_device(throttles(&self.read_bps));
        block_io.set_throttle_write_bps_device(throttles(&self.write_bps));
        block_io.set_throttle_read_iops_device(throttles(&self.read_iops));
        block_io.set_throttle_write_iops_device(throttles(&self.write_iops));
        Some(block_io)
    }

    /// vCPUs the VM gets when `--vm-cpus` is not given: enough for `--cpus` (rounded up) and
    /// for the highest CPU of `--cpuset-cpus`, at least 1.
    pub fn vm_cpus(&self, cpuset_highest: Option<u32>) -> u64 {
        self.vm_cpus_by(cpuset_highest).0
    }

    /// [`Limits::vm_cpus`], and the limit that needs that many (`None`: no limit needs more
    /// than 1).
    pub fn vm_cpus_by(&self, cpuset_highest: Option<u32>) -> (u64, Option<CpuLimit>) {
        let from_cpus = self.nano_cpus.map_or(1, |n| n.div_ceil(1_000_000_000));
        let from_quota = match (self.cpu_quota, self.cpu_period) {
            (Some(q), p) if q > 0 => (q as u64).div_ceil(p.unwrap_or(CPU_PERIOD_US)),
            _ => 1,
        };
        let from_set = cpuset_highest.map_or(1, |h| u64::from(h) + 1);
        [
            (from_cpus, CpuLimit::Cpus),
            (from_quota, CpuLimit::Quota),
            (from_set, CpuLimit::Cpuset),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 1)
        .max_by_key(|(n, _)| *n)
        .map_or((1, None), |(n, limit)| (n, Some(limit)))
    }

    /// VM memory in MiB when `--vm-memory` is not given: the memory limit plus
    /// [`GUEST_OVERHEAD_MIB`], at least [`MIN_VM_MIB`].
    pub fn vm_memory_mib(&self) -> u64 {
        let limit = self.memory.map_or(0, |m| m.div_ceil(1 << 20));
        limit.saturating_add(GUEST_OVERHEAD_MIB).max(MIN_VM_MIB)
    }
}

/// The limits of `spec` that size its VM: memory limit, CPU quota/period and cpuset (the
/// rest is left unset).
pub fn limits_of(spec: &Spec) -> Limits {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory = resources.and_then(|r| r.memory().as_ref());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    Limits {
        memory: memory
            .and_then(|m| m.limit())
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        cpuset_cpus: cpu.and_then(|c| c.cpus().clone()),
        ..Default::default()
    }
}

/// The highest CPU `spec`'s cpuset names (`None`: no cpuset, or not a valid list).
pub fn cpuset_highest(spec: &Spec) -> Option<u32> {
    let cpus = limits_of(spec).cpuset_cpus?;
    crate::parse::parse_cpuset(&cpus)
        .ok()
        .map(|(_, highest)| highest)
}

fn throttle_device(t: &Throttle) -> LinuxThrottleDevice {
    LinuxThrottleDeviceBuilder::default()
        .major(t.major)
        .minor(t.minor)
        .rate(t.rate)
        .build()
        .expect("every field is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_swap() {
        let l = Limits {
            memory: Some(64 << 20),
            ..Default::default()
        };
        l.check().unwrap();
        let m = l.memory().unwrap();
        assert_eq!((m.limit(), m.swap()), (Some(64 << 20), Some(128 << 20)));
        let l = Limits {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            memory_reservation: Some(32 << 20),
            ..Default::default()
        };
        l.check().unwrap();
        let m = l.memory().unwrap();
        assert_eq!((m.swap(), m.reservation()), (Some(-1), Some(32 << 20)));
        let swap_only = Limits {
            memory_swap: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!(swap_only.check(), Err(LimitsError::SwapWithoutMemory));
        let below = Limits {
            memory: Some(1 << 30),
            memory_swap: Some(1 << 20),
            ..Default::default()
        };
        assert_eq!(below.check(), Err(LimitsError::SwapBelowMemory));
        let equal = Limits {
            memory_swap: Some(1 << 30),
            ..below.clone()
        };
        equal.check().unwrap();
        let unlimited_alone = Limits {
            memory_swap: Some(-1),
            ..Default::default()
        };
        unlimited_alone.check().unwrap();
        // Docker's 0: as if not given (twice the memory).
        let zero_swap = Limits {
            memory: Some(64 << 20),
            memory_swap: Some(0),
            ..Default::default()
        };
        zero_swap.check().unwrap();
        assert_eq!(zero_swap.memory().unwrap().swap(), Some(128 << 20));
        let reservation_above = Limits {
            memory: Some(64 << 20),
            memory_reservation: Some(128 << 20),
            ..Default::default()
        };
        assert_eq!(
            reservation_above.check(),
            Err(LimitsError::ReservationAboveLimit)
        );
        let zero = Limits {
            memory: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.check(), Err(LimitsError::BadMemory("memory")));
        assert!(Limits::default().memory().is_none());
    }

    #[test]
    fn cpus_become_quota() {
        let l = Limits {
            nano_cpus: Some(500_000_000),
            ..Default::default()
        };
        let cpu = l.cpu().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        let both = Limits {
            nano_cpus: Some(1),
            cpu_period: Some(50_000),
            ..Default::default()
        };
        assert_eq!(both.check(), Err(LimitsError::CpusAndQuota));
        assert!(Limits::default().cpu().is_none());
    }

    #[test]
    fn block_io() {
        let t = Throttle {
            major: 254,
            minor: 0,
            rate: 1 << 20,
        };
        let l = Limits {
            read_bps: vec![t],
            blkio_weight: Some(300),
            ..Default::default()
        };
        let io = l.block_io().unwrap();
        assert_eq!(io.weight(), Some(300));
        let read = io.throttle_read_bps_device().as_ref().unwrap();
        assert_eq!(
            (read[0].major(), read[0].minor(), read[0].rate()),
            (254, 0, 1 << 20)
        );
        assert!(io.throttle_write_bps_device().is_none());
        assert!(Limits::default().block_io().is_none());
    }

    #[test]
    fn vm_size() {
        let l = Limits::default();
        assert_eq!((l.vm_cpus(None), l.vm_memory_mib()), (1, 256));
        let l = Limits {
            nano_cpus: Some(1_500_000_000),
            memory: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!((l.vm_cpus(None), l.vm_memory_mib()), (2, 1024 + 96));
        assert_eq!(l.vm_cpus(Some(3)), 4);
        assert_eq!(l.vm_cpus_by(None), (2, Some(CpuLimit::Cpus)));
        assert_eq!(l.vm_cpus_by(Some(3)), (4, Some(CpuLimit::Cpuset)));
        assert_eq!(Limits::default().vm_cpus_by(Some(0)), (1, None));
        let l = Limits {
            cpu_quota: Some(250_000),
            ..Default::default()
        };
        assert_eq!(l.vm_cpus_by(None), (3, Some(CpuLimit::Quota)));
        let l = Limits {
            memory: Some(64 << 20),
            ..Default::default()
        };
        assert_eq!(l.vm_memory_mib(), 256);
    }

    #[test]
    fn vm_size_from_a_spec() {
        let opts = crate::RunOptions {
            limits: Limits {
                nano_cpus: Some(2_500_000_000),
                memory: Some(512 << 20),
                cpuset_cpus: Some("0-2".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let spec = opts.to_spec();
        let l = limits_of(&spec);
        assert_eq!((l.memory, l.cpu_quota), (Some(512 << 20), Some(250_000)));
        assert_eq!(cpuset_highest(&spec), Some(2));
        assert_eq!((l.vm_cpus(None), l.vm_memory_mib()), (3, 512 + 96));
        assert_eq!(cpuset_highest(&Spec::default()), None);
    }
}
