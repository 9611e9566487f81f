//! Assembles and runs a microVM from a [`VmConfig`]: memory, VM, legacy devices, virtio devices
//! on the MMIO transport, the kernel, the vCPU threads and the event-loop thread; then waits for
//! the first [`VmExit`].

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;

use crate::arch::x86_64::cpuid::{self, CpuidError};
use crate::arch::x86_64::layout::{
    I8042_PORT, MMIO_WINDOW, SERIAL_IRQ, SERIAL_PORT, VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE,
};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::boot::{self, BootError, LinuxBoot};
use crate::config::{ConfigError, VmConfig};
use crate::control::{Control, ControlError};
use crate::devices::legacy::i8042::I8042_PORTS;
use crate::devices::legacy::serial::SerialError;
use crate::devices::legacy::{ConsoleLog, SerialDevice, I8042};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{GuestMemory, VirtioDevice};
use crate::devices::{Bus, BusError};
use crate::seccomp::startup::Startup;
use crate::seccomp::{Policy, SeccompError, ThreadKind};
use crate::stats::{DeviceCounters, VmStats};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VmExit};
use crate::vstate::vm::{self, VmError};

/// Offset of the `QUEUE_NOTIFY` register in a virtio-mmio window.
const QUEUE_NOTIFY: u64 = 0x50;
/// Ports the 8250 UART spans.
const SERIAL_PORTS: u64 = 8;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
/// Reads one device's counters when the stats are written.
type CounterSource = Box<dyn Fn() -> DeviceCounters + Send>;

/// Errors building or running the VM (exit status 1, except `Config`: 2).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM VM set-up.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initramfs, boot structures.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The serial console.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// Device address conflict.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// vCPU CPUID.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// vCPU registers.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// `KVM_CREATE_VCPU`.
    #[error("cannot create vcpu {index}")]
    CreateVcpu {
        /// The vCPU index.
        index: u8,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A virtio-blk device.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The virtio-vsock device.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio-mmio transport.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The event manager.
    #[error("cannot set up the event loop: {0:?}")]
    EventManager(event_manager::Error),
    /// The `--stats` file could not be created.
    #[error("cannot create {}", path.display())]
    Stats {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Starting a thread.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// The seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A disk slot's empty file.
    #[error("cannot create a disk slot")]
    Slot(#[source] std::io::Error),
    /// The control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// A VM whose devices and memory are set up, before its kernel is loaded.
struct Machine {
    vm: VmFd,
    mem: GuestMemory,
    pio: Bus,
    mmio: Bus,
    event_manager: EventManager<Subscriber>,
    subscribers: usize,
    /// (window base, GSI) of each virtio device, in attach order.
    virtio: Vec<(u64, u32)>,
    counters: Vec<CounterSource>,
    /// The writable disks' files, synced when the VM ends.
    writable_disks: Vec<File>,
}

impl Machine {
    /// Puts `device` behind an MMIO transport in the next window, with its irqfd, one
    /// ioeventfd per queue, and its event handler on the event loop.
    fn attach_virtio<D>(&mut self, device: D) -> Result<Arc<Mutex<D>>, BuildError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let index = self.virtio.len();
        let base = VIRTIO_MMIO_BASE + index as u64 * MMIO_WINDOW;
        let gsi = VIRTIO_FIRST_GSI + index as u32;
        for (queue, evt) in device.queue_events().iter().enumerate() {
            vm::register_mmio_ioevent(&self.vm, evt, base + QUEUE_NOTIFY, queue as u32)?;
        }
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(self.mem.clone(), device.clone())?;
        vm::register_irqfd(&self.vm, transport.interrupt().eventfd(), gsi)?;
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW)?;
        self.event_manager.add_subscriber(device.clone());
        self.subscribers += 1;
        self.virtio.push((base, gsi));
        Ok(device)
    }

    fn attach_disks(&mut self, config: &VmConfig) -> Result<(), BuildError> {
        for disk in &config.disks {
            let block = Block::new(&disk.path, disk.read_only)?;
            if !disk.read_only {
                self.writable_disks.push(block.sync_handle(&disk.path)?);
            }
            self.attach_block(block)?;
        }
        Ok(())
    }

    /// The `--disk-slots` disks: read-only, empty (a memfd of size 0) until a swap.
    fn attach_slots(&mut self, config: &VmConfig) -> Result<Vec<Arc<Mutex<Block>>>, BuildError> {
        (0..config.disk_slots)
            .map(|i| {
                let empty = rustix::fs::memfd_create(c"moat-slot", rustix::fs::MemfdFlags::CLOEXEC)
                    .map_err(|e| BuildError::Slot(e.into()))?;
                self.attach_block(Block::slot(i, File::from(empty))?)
            })
            .collect()
    }

    /// Attaches a disk as the next `vdX`, with its counters.
    fn attach_block(&mut self, block: Block) -> Result<Arc<Mutex<Block>>, BuildError> {
        let counters = block.counters();
        let name = format!("vd{}", char::from(b'a' + self.virtio.len() as u8));
        let device = self.attach_virtio(block)?;
        self.counters.push(Box::new(move || {
            let s = counters.snapshot();
            DeviceCounters {
                name: name.clone(),
                counters: vec![
                    ("requests", s.requests),
                    ("read_bytes", s.read_bytes),
                    ("write_bytes", s.write_bytes),
                    ("flushes", s.flushes),
                    ("errors", s.errors),
                    ("dropped", s.dropped),
                    ("interrupts", s.interrupts),
                ],
            }
        }));
        Ok(device)
    }

    /// The control socket, serving the disk slots on the event loop.
    fn attach_control(
        &mut self,
        config: &VmConfig,
        slots: Vec<Arc<Mutex<Block>>>,
    ) -> Result<(), BuildError> {
        let Some(path) = &config.control_uds else {
            return Ok(());
        };
        let control = Control::new(path, slots)?;
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(control)));
        self.subscribers += 1;
        Ok(())
    }

    fn attach_vsock(&mut self, config: &VmConfig) -> Result<(), BuildError> {
        let Some(vsock) = &config.vsock else {
            return Ok(());
        };
        let device = self.attach_virtio(Vsock::new(vsock.cid, &vsock.uds_path)?)?;
        self.counters.push(Box::new(move || {
            let c = device.lock().unwrap_or_else(|p| p.into_inner()).counters();
            DeviceCounters {
                name: "vsock".into(),
                counters: vec![
                    ("tx_malformed", c.tx_malformed),
                    ("tx_bad_cid", c.tx_bad_cid),
                    ("tx_bad_len", c.tx_bad_len),
                    ("rx_malformed", c.rx_malformed),
                ],
            }
        }));
        Ok(())
    }

    fn attach_legacy(
        &mut self,
        config: &VmConfig,
        stats: &Arc<VmStats>,
        exits: &Sender<VmExit>,
    ) -> Result<Arc<Mutex<SerialDevice>>, BuildError> {
        let log = ConsoleLog::create(&config.console_log, config.console_log_max, stats.clone())?;
        let serial = SerialDevice::new(log)?;
        vm::register_irqfd(&self.vm, serial.interrupt_evt(), SERIAL_IRQ)?;
        let serial = Arc::new(Mutex::new(serial));
        self.pio
            .insert(serial.clone(), u64::from(SERIAL_PORT), SERIAL_PORTS)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(exits.clone())));
        self.pio.insert(i8042, u64::from(I8042_PORT), I8042_PORTS)?;
        Ok(serial)
    }
}

fn create_vcpus(
    machine: &Machine,
    kvm: &kvm_ioctls::Kvm,
    cpus: u8,
    entry: u64,
    stats: &Arc<VmStats>,
) -> Result<Vec<Vcpu>, BuildError> {
    let supported = cpuid::supported_cpuid(kvm)?;
    let pio = Arc::new(machine.pio.clone());
    let mmio = Arc::new(machine.mmio.clone());
    (0..cpus)
        .map(|index| {
            let fd = machine
                .vm
                .create_vcpu(u64::from(index))
                .map_err(|source| BuildError::CreateVcpu { index, source })?;
            cpuid::setup_vcpu_cpuid(&fd, &supported, index, cpus)?;
            regs::setup_vcpu_regs(&fd, entry)?;
            regs::setup_vcpu_lapic(&fd)?;
            Ok(Vcpu::new(
                index,
                fd,
                pio.clone(),
                mmio.clone(),
                stats.clone(),
            ))
        })
        .collect()
}

fn start_event_loop(
    mut event_manager: EventManager<Subscriber>,
    exits: Sender<VmExit>,
    startup: Arc<Startup>,
) -> Result<(), BuildError> {
    std::thread::Builder::new()
        .name("event-loop".into())
        .stack_size(crate::THREAD_STACK_SIZE)
        .spawn(move || {
            match startup.enter(ThreadKind::EventLoop) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = exits.send(VmExit::VmmError(crate::error_line(&e)));
                    return;
                }
            }
            loop {
                if let Err(e) = event_manager.run() {
                    let _ = exits.send(VmExit::VmmError(format!("event loop failed: {e:?}")));
                    return;
                }
            }
        })
        .map(drop)
        .map_err(BuildError::Thread)
}

/// A VM that is built and ready to start.
pub struct Vm {
    vcpus: Vec<Vcpu>,
    event_manager: Option<EventManager<Subscriber>>,
    serial: Arc<Mutex<SerialDevice>>,
    stats: Arc<VmStats>,
    exits_tx: Sender<VmExit>,
    exits_rx: Receiver<VmExit>,
    cmdline: String,
    counters: Vec<CounterSource>,
    /// The writable disks' files: synced when the VM ends, after the guest's last write.
    writable_disks: Vec<File>,
    /// Opened when the VM is built (a jailed VMM can no longer create files when it ends).
    stats_file: Option<(PathBuf, File)>,
    /// The filters, unless `--no-seccomp`.
    seccomp: Option<Arc<Policy>>,
    violate_seccomp_in: Option<ThreadKind>,
    /// The VM fd must stay open while the guest runs: closing it makes KVM release every irqfd
    /// (`kvm_vm_release`), and device interrupts would silently stop.
    _vm: VmFd,
    /// Keeps guest memory mapped for the VM's lifetime.
    _mem: GuestMemory,
}

/// Builds the whole VM described by `config`.
pub fn build(config: &VmConfig) -> Result<Vm, BuildError> {
    config.validate()?;
    // Parsed first: a bad filter file fails before anything is set up.
    let seccomp = config
        .seccomp
        .then(Policy::embedded)
        .transpose()?
        .map(Arc::new);
    let cpus = config.cpus as u8;
    let kvm = vm::open_kvm()?;
    let mem = memory::create_guest_memory(config.memory_mib)?;
    let vm_fd = vm::create_vm(&kvm, &mem)?;
    let stats = Arc::new(VmStats::default());
    let (exits_tx, exits_rx) = channel();
    let event_manager = EventManager::new().map_err(BuildError::EventManager)?;
    let mut machine = Machine {
        vm: vm_fd,
        mem: mem.clone(),
        pio: Bus::new(),
        mmio: Bus::new(),
        event_manager,
        subscribers: 0,
        virtio: Vec::new(),
        counters: Vec::new(),
        writable_disks: Vec::new(),
    };
    let serial = machine.attach_legacy(config, &stats, &exits_tx)?;
    machine.attach_disks(config)?;
    let slots = machine.attach_slots(config)?;
    machine.attach_vsock(config)?;
    machine.attach_control(config, slots)?;
    let cmdline = boot::kernel_cmdline(&machine.virtio, config.cmdline_extra.as_deref())?;
    let boot = LinuxBoot {
        kernel: &config.kernel,
        initramfs: &config.initramfs,
        cmdline: &cmdline,
        mem_size: config.memory_mib << 20,
        cpus,
    };
    let entry = boot::load_linux(&mem, &boot)?;
    let stats_file = match &config.stats {
        Some(path) => Some((
            path.clone(),
            File::create(path).map_err(|source| BuildError::Stats {
                path: path.clone(),
                source,
            })?,
        )),
        None => None,
    };
    let vcpus = create_vcpus(&machine, &kvm, cpus, entry, &stats)?;
    let event_manager = (machine.subscribers > 0).then_some(machine.event_manager);
    let cmdline = cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Vm {
        vcpus,
        event_manager,
        serial,
        stats,
        exits_tx,
        exits_rx,
        cmdline,
        counters: machine.counters,
        writable_disks: machine.writable_disks,
        stats_file,
        seccomp,
        violate_seccomp_in: config.violate_seccomp_in,
        _vm: machine.vm,
        _mem: mem,
    })
}

impl Vm {
    /// The kernel command line the guest gets.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The VM's counters.
    pub fn stats(&self) -> Arc<VmStats> {
        self.stats.clone()
    }

    /// Starts the event loop and the vCPUs, loads the main thread's seccomp filter once they
    /// are started, waits for the VM to end, flushes the console log.
    ///
    /// Every thread loads its own filter before any vCPU runs guest code; a filter that cannot
    /// be loaded is an error before the guest runs.
    pub fn run(mut self) -> Result<VmExit, BuildError> {
        let threads = 1 + self.vcpus.len() + usize::from(self.event_manager.is_some());
        let startup = Startup::new(self.seccomp.take(), threads, self.violate_seccomp_in);
        if let Some(event_manager) = self.event_manager.take() {
            start_event_loop(event_manager, self.exits_tx.clone(), startup.clone())?;
        }
        for vcpu in self.vcpus.drain(..) {
            vcpu.start(self.exits_tx.clone(), startup.clone())
                .map_err(BuildError::Thread)?;
        }
        // Ok(false): another thread failed and its error is waiting on the channel.
        startup.enter(ThreadKind::Main)?;
        drop(startup);
        let exit = self.exits_rx.recv().unwrap_or_else(|_| {
            VmExit::VmmError("every vcpu thread ended without a reason".into())
        });
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = serial.flush() {
            tracing::warn!(error = %e, "cannot flush the console log");
        }
        self.sync_disks();
        self.write_stats();
        Ok(exit)
    }

    /// The exit and device counters as JSON.
    pub fn stats_json(&self) -> String {
        let devices: Vec<DeviceCounters> = self.counters.iter().map(|read| read()).collect();
        self.stats.to_json(&devices)
    }

    /// Makes what the guest wrote to each writable disk durable before the VMM exits (a guest
    /// that flushed has this already; one that did not gets it here).
    fn sync_disks(&self) {
        for file in &self.writable_disks {
            if let Err(e) = file.sync_data() {
                tracing::warn!(error = %e, "cannot sync a disk");
            }
        }
    }

    fn write_stats(&self) {
        let Some((path, mut file)) = self.stats_file.as_ref().map(|(p, f)| (p, f)) else {
            return;
        };
        if let Err(e) = file.write_all(self.stats_json().as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the stats");
        }
    }
}
