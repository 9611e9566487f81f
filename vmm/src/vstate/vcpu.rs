//! One thread per vCPU: `KVM_RUN` in a loop, each exit mapped in one flat `match` to a bus
//! access or to the end of the VM, reported to the main thread over a channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::Bus;
use crate::seccomp::startup::Startup;
use crate::seccomp::ThreadKind;
use crate::stats::VmStats;

/// Set by the SIGUSR1 handler; the vCPU thread the signal interrupts logs its registers.
static DUMP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_dump_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    DUMP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGUSR1 handler and blocks SIGUSR1 in the calling thread, so in every thread it
/// starts; vCPU threads unblock it, so the signal lands on one and interrupts its `KVM_RUN`.
/// `kill -USR1 <moat-vmm>` then logs that vCPU's registers and the exit counters (what the
/// runtime does when a boot times out).
pub fn prepare_dump_signal() -> std::io::Result<()> {
    let to_io = |e: vmm_sys_util::errno::Error| std::io::Error::from_raw_os_error(e.errno());
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, on_dump_signal).map_err(to_io)?;
    vmm_sys_util::signal::block_signal(libc::SIGUSR1)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Why the VM ended; the process exit status follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 command 0xfe, `reboot=k`) or a KVM system event.
    Reset,
    /// A vCPU halted without an in-kernel irqchip to wake it.
    Halted,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// `KVM_EXIT_INTERNAL_ERROR`, with its sub-error code.
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY`, with the hardware reason.
    FailEntry(u64),
    /// The VMM failed (a `KVM_RUN` error, a device thread died).
    VmmError(String),
}

impl VmExit {
    /// The process exit status (see docs/architecture.md).
    pub fn status(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::Halted => 0,
            VmExit::VmmError(_) => 1,
            VmExit::TripleFault => 3,
            VmExit::InternalError(_) | VmExit::FailEntry(_) => 4,
        }
    }
}

/// A vCPU ready to run.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stats: Arc<VmStats>,
}

impl Vcpu {
    /// Wraps a configured vCPU fd with the buses its exits go to.
    pub fn new(index: u8, fd: VcpuFd, pio: Arc<Bus>, mmio: Arc<Bus>, stats: Arc<VmStats>) -> Self {
        Self {
            index,
            fd,
            pio,
            mmio,
            stats,
        }
    }

    /// Starts the vCPU thread; the first exit that ends the VM is sent on `exits`. The thread
    /// loads its seccomp filter and waits for the others' (`startup`) before its first
    /// `KVM_RUN`.
    pub fn start(
        mut self,
        exits: Sender<VmExit>,
        startup: Arc<Startup>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .stack_size(crate::THREAD_STACK_SIZE)
            .spawn(move || {
                // Before the filter: only this thread kind takes SIGUSR1 (prepare_dump_signal).
                if let Err(e) = vmm_sys_util::signal::unblock_signal(libc::SIGUSR1) {
                    tracing::warn!(vcpu = self.index, "cannot unblock SIGUSR1: {e}");
                }
                let exit = match startup.enter(ThreadKind::Vcpu) {
                    Ok(true) => self.run(),
                    // Another thread failed to load its filter and reports it.
                    Ok(false) => return,
                    Err(e) => VmExit::VmmError(crate::error_line(&e)),
                };
                tracing::debug!(vcpu = self.index, ?exit, "vcpu stopped");
                // The main thread may already be gone after another vCPU's exit.
                let _ = exits.send(exit);
            })
    }

    /// Runs until the VM ends.
    pub fn run(&mut self) -> VmExit {
        loop {
            if DUMP_REQUESTED.load(Ordering::Relaxed)
                && DUMP_REQUESTED.swap(false, Ordering::SeqCst)
            {
                self.log_state();
            }
            if let Some(exit) = self.run_once() {
                return exit;
            }
        }
    }

    /// Logs the registers that say where the guest is, and the exit counters so far.
    fn log_state(&mut self) {
        let (regs, sregs) = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(vcpu = self.index, "cannot read the vcpu's registers: {e}");
                return;
            }
        };
        tracing::error!(
            vcpu = self.index,
            rip = %format!("{:#x}", regs.rip),
            rsp = %format!("{:#x}", regs.rsp),
            rflags = %format!("{:#x}", regs.rflags),
            cr0 = %format!("{:#x}", sregs.cr0),
            cr3 = %format!("{:#x}", sregs.cr3),
            efer = %format!("{:#x}", sregs.efer),
            exits = %self.stats.to_json(&[]),
            "vcpu state on SIGUSR1"
        );
    }

    /// One `KVM_RUN`; `Some` when the VM ends.
    pub fn run_once(&mut self) -> Option<VmExit> {
        let stats = &self.stats;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stats.intr.inc();
                return None;
            }
            Err(e) => return Some(VmExit::VmmError(format!("kvm_run failed: {e}"))),
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                stats.io_in.inc();
                if !self.pio.read(u64::from(port), data) {
                    stats.io_unhandled.inc();
                    data.fill(0xff);
                }
                None
            }
            VcpuExit::IoOut(port, data) => {
                stats.io_out.inc();
                if !self.pio.write(u64::from(port), data) {
                    stats.io_unhandled.inc();
                }
                None
            }
            VcpuExit::MmioRead(addr, data) => {
                stats.mmio_read.inc();
                if !self.mmio.read(addr, data) {
                    stats.mmio_unhandled.inc();
                    data.fill(0);
                }
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                stats.mmio_write.inc();
                if !self.mmio.write(addr, data) {
                    stats.mmio_unhandled.inc();
                }
                None
            }
            VcpuExit::Hlt => {
                stats.hlt.inc();
                Some(VmExit::Halted)
            }
            VcpuExit::Shutdown => {
                stats.shutdown.inc();
                Some(VmExit::TripleFault)
            }
            VcpuExit::SystemEvent(kind, _) => {
                stats.system_event.inc();
                tracing::debug!(kind, "kvm system event");
                Some(VmExit::Reset)
            }
            VcpuExit::InternalError => {
                stats.internal_error.inc();
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
                // `internal` member of the union; reading a u32 from it is always defined.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Some(VmExit::InternalError(suberror))
            }
            VcpuExit::FailEntry(reason, _cpu) => {
                stats.fail_entry.inc();
                Some(VmExit::FailEntry(reason))
            }
            VcpuExit::Intr => {
                stats.intr.inc();
                None
            }
            other => {
                stats.other.inc();
                tracing::warn!(vcpu = self.index, exit = ?other, "unexpected vm exit");
                None
            }
        }
    }

    /// The underlying KVM vCPU.
    pub fn fd(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(VmExit::Reset.status(), 0);
        assert_eq!(VmExit::Halted.status(), 0);
        assert_eq!(VmExit::VmmError(String::new()).status(), 1);
        assert_eq!(VmExit::TripleFault.status(), 3);
        assert_eq!(VmExit::InternalError(1).status(), 4);
        assert_eq!(VmExit::FailEntry(0).status(), 4);
    }
}
