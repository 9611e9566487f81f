//! End-to-end runs of a tiny hand-made 64-bit "kernel" through the whole VMM: the builder, the
//! boot path, the vCPU loop, the serial console and the i8042 reset, and the exit statuses of the
//! `moat-vmm` binary. Needs /dev/kvm (any speed: the guest runs a dozen instructions).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moat_vmm::builder;
use moat_vmm::config::{VmConfig, DEFAULT_CONSOLE_LOG_MAX};
use moat_vmm::vstate::vcpu::VmExit;

const LOAD_ADDR: u64 = 0x100_0000;

/// `mov dx, 0x3f8; mov al, 'H'; out dx, al; mov al, 'i'; out dx, al; mov al, '\n';
/// out dx, al; mov al, 0xfe; out 0x64, al; 1: hlt; jmp 1b`
const HELLO_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'H', 0xee, 0xb0, b'i', 0xee, 0xb0, b'\n', 0xee, 0xb0, 0xfe,
    0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// Programs the 8259 PIC (vector base 0x20, only IRQ 4 unmasked), installs an interrupt gate
/// for vector 0x24 in an IDT that follows the code, enables the UART's THR-empty interrupt and
/// halts with interrupts on; the handler writes 'I' and resets. Assembled from:
/// `mov al,0x11; out 0x20,al; mov al,0x20; out 0x21,al; mov al,4; out 0x21,al; mov al,1;
/// out 0x21,al; mov al,0xef; out 0x21,al; lea rax,[rip+handler]; lea rdi,[rip+idt+0x240];
/// mov [rdi],ax; mov word [rdi+2],8; mov word [rdi+4],0x8e00; shr rax,16; mov [rdi+6],ax;
/// shr rax,16; mov [rdi+8],eax; lea rax,[rip+idt]; mov [rip+idtr+2],rax; lidt [rip+idtr];
/// mov dx,0x3f9; mov al,2; out dx,al; sti; 1: hlt; jmp 1b;
/// handler: mov dx,0x3f8; mov al,'I'; out dx,al; mov al,0xfe; out 0x64,al; 2: hlt; jmp 2b;
/// .balign 16; idtr: .word 0x2ff; .quad 0; .balign 16; idt:`
const SERIAL_IRQ: &[u8] = &[
    0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21,
    0xb0, 0xef, 0xe6, 0x21, 0x48, 0x8d, 0x05, 0x45, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x3d, 0x9e, 0x02,
    0x00, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47, 0x02, 0x08, 0x00, 0x66, 0xc7, 0x47, 0x04, 0x00,
    0x8e, 0x48, 0xc1, 0xe8, 0x10, 0x66, 0x89, 0x47, 0x06, 0x48, 0xc1, 0xe8, 0x10, 0x89, 0x47, 0x08,
    0x48, 0x8d, 0x05, 0x39, 0x00, 0x00, 0x00, 0x48, 0x89, 0x05, 0x24, 0x00, 0x00, 0x00, 0x0f, 0x01,
    0x1d, 0x1b, 0x00, 0x00, 0x00, 0x66, 0xba, 0xf9, 0x03, 0xb0, 0x02, 0xee, 0xfb, 0xf4, 0xeb, 0xfd,
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x49, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, 0x66, 0x90,
    0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00,
];
/// Size of the IDT the [`SERIAL_IRQ`] guest builds after its code.
const IDT_SIZE: usize = 0x300;

/// `1: jmp 1b`: a guest that spins where it starts.
const SPIN: &[u8] = &[0xeb, 0xfe];

/// `ud2` with an empty IDT: #UD, then #DF, then a triple fault.
const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

/// A minimal ELF64 executable with one PT_LOAD segment holding `code` at [`LOAD_ADDR`].
fn elf(code: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        120u64,
        LOAD_ADDR,
        LOAD_ADDR,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(f.len(), 120);
    f.extend_from_slice(code);
    f
}

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str, code: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("moat-vmm-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), elf(code)).unwrap();
        std::fs::write(dir.join("initramfs"), b"070701 not really a cpio").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn config(&self) -> VmConfig {
        VmConfig {
            kernel: self.path("vmlinux"),
            initramfs: self.path("initramfs"),
            cpus: 1,
            memory_mib: 64,
            disks: vec![],
            disk_slots: 0,
            control_uds: None,
            vsock: None,
            console_log: self.path("console.log"),
            console_log_max: DEFAULT_CONSOLE_LOG_MAX,
            cmdline_extra: None,
            stats: None,
            // These tests run the VM in the test process: a filter would apply to the harness.
            // The binary's runs below have their filters on.
            seccomp: false,
            violate_seccomp_in: None,
        }
    }

    /// `moat-vmm run --no-jail` of this guest with 64 MiB and its console log.
    fn binary(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat-vmm"));
        cmd.args(["run", "--no-jail"])
            .args(["--kernel", self.path("vmlinux").to_str().unwrap()])
            .args(["--initramfs", self.path("initramfs").to_str().unwrap()])
            .args(["--memory-mib", "64", "--console-log"])
            .arg(self.path("console.log"));
        cmd
    }

    fn run_binary(&self, extra: &[&str]) -> (i32, String) {
        let out = self.binary().args(extra).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            without_warning(&out.stderr),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have_kvm() -> bool {
    Path::new("/dev/kvm").exists()
}

#[test]
fn serial_output_then_i8042_reset() {
    if !have_kvm() {
        return;
    }
    let fx = Fixture::new("hello", HELLO_RESET);
    let vm = builder::build(&fx.config()).unwrap();
    let stats = vm.stats();
    assert_eq!(vm.run().unwrap(), VmExit::Reset);
    assert_eq!(
        std::fs::read_to_string(fx.path("console.log")).unwrap(),
        "Hi\n"
    );
    assert_eq!(stats.io_out.get(), 4);
}

/// The UART interrupt travels irqfd -> in-kernel PIC -> LINT0 -> guest handler. This hangs
/// (and fails on the timeout) if KVM dropped the irqfds, e.g. because the VM fd was closed.
#[test]
fn serial_interrupt_reaches_guest() {
    if !have_kvm() {
        return;
    }
    let mut code = SERIAL_IRQ.to_vec();
    code.resize(SERIAL_IRQ.len() + IDT_SIZE, 0);
    let fx = Fixture::new("irq", &code);
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .args(["run", "--no-jail"])
        .args(["--kernel", fx.path("vmlinux").to_str().unwrap()])
        .args(["--initramfs", fx.path("initramfs").to_str().unwrap()])
        .args(["--memory-mib", "64", "--console-log"])
        .arg(fx.path("console.log"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the guest never got the serial interrupt");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(fx.path("console.log")).unwrap(),
        "I"
    );
}

#[test]
fn console_log_is_bounded() {
    if !have_kvm() {
        return;
    }
    let fx = Fixture::new("bounded", HELLO_RESET);
    let mut config = fx.config();
    config.console_log_max = 1;
    let vm = builder::build(&config).unwrap();
    let stats = vm.stats();
    assert_eq!(vm.run().unwrap(), VmExit::Reset);
    assert_eq!(
        std::fs::read_to_string(fx.path("console.log")).unwrap(),
        "H"
    );
    assert_eq!(stats.console_dropped_bytes.get(), 2);
}

#[test]
fn binary_exit_statuses() {
    if !have_kvm() {
        return;
    }
    let fx = Fixture::new("bin-hello", HELLO_RESET);
    let stats = fx.path("stats.json");
    let (code, stderr) = fx.run_binary(&["--cpus", "2", "--stats", stats.to_str().unwrap()]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let json = std::fs::read_to_string(&stats).unwrap();
    assert!(json.contains("\"io_out\":4"), "{json}");

    let fx = Fixture::new("bin-triple", TRIPLE_FAULT);
    let (code, _) = fx.run_binary(&[]);
    assert_eq!(code, 3);

    let (code, stderr) = fx.run_binary(&["--cpus", "0"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (code, stderr) = fx.run_binary(&["--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// stderr without the one-line `--no-jail` warning.
fn without_warning(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.starts_with("moat-vmm: warning: --no-jail"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn binary_setup_errors_are_one_line() {
    let fx = Fixture::new("bin-missing", HELLO_RESET);
    let out = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .args([
            "run",
            "--no-jail",
            "--kernel",
            "/x/vmlinux",
            "--initramfs",
            "/x/initrd",
            "--memory-mib",
            "64",
        ])
        .arg("--console-log")
        .arg(fx.path("console.log"))
        .output()
        .unwrap();
    let stderr = without_warning(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    if have_kvm() {
        assert_eq!(stderr, "moat-vmm: kernel /x/vmlinux: not found\n");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_moat-vmm"))
        .args([
            "run",
            "--no-jail",
            "--kernel",
            "/x",
            "--initramfs",
            "/x",
            "--memory-mib",
            "100000000",
        ])
        .args(["--console-log", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = without_warning(&out.stderr);
    assert!(stderr.contains("exceeds the host"), "{stderr}");
}

#[test]
fn sigusr1_logs_where_a_spinning_guest_is() {
    if !have_kvm() {
        return;
    }
    let fx = Fixture::new("bin-spin", SPIN);
    let log = fx.path("vmm.log");
    let mut child = fx
        .binary()
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The console log exists once the VM is being built, after the handler is installed (before
    // it, SIGUSR1 would end the process as it would any program).
    while !fx.path("console.log").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    // Signalled until it answers: the first signal may come before the vCPU thread exists.
    while !text.contains("vcpu state on SIGUSR1") && Instant::now() < deadline {
        let _ = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "moat-vmm ended: {text}"
        );
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("vcpu state on SIGUSR1"))
        .unwrap_or_else(|| panic!("no register dump in: {text}"));
    assert!(line.contains(&format!("rip={LOAD_ADDR:#x}")), "{line}");
    assert!(line.contains("exits={"), "{line}");
}
