//! moat-vmm's disk slots (docs/vmm-control.md): a jailed VMM under its seccomp filters boots
//! the guest kernel with a boot disk and an empty slot; the host swaps files into the slot and
//! out again through the control socket, and the guest sees each change: the capacity, and the
//! new file's bytes.
//!
//! The guest is the project's kernel with a test initramfs whose /init is a busybox script
//! printing the slot's size and first bytes to the console whenever the size changes; it drops
//! the device's cached blocks first (`blockdev --flushbufs`), as the agent does before it
//! mounts a swapped disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moat_runtime::vmm::{Disk, JailSpec, VmSpec, VmmProcess};
use moat_runtime::vmm_control::swap_disk;
use moat_tests::{unique_name, vm_available, vmm_bin, workspace};

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
last=none
while true; do
  size=$(cat /sys/block/vdb/size)
  if [ "$size" != "$last" ]; then
    blockdev --flushbufs /dev/vdb
    head=$(head -c 11 /dev/vdb 2>/dev/null)
    echo "SLOT size=$size head=$head boot=$(head -c 9 /dev/vda)"
    last=$size
  fi
  sleep 0.1
done
"#;

/// The VM's files and jail; removed (VMM killed, jail dir and cgroup gone) when dropped.
struct SlotVm {
    vmm: Option<VmmProcess>,
    base: PathBuf,
    id: String,
    work: moat_jail::testutil::TempDir,
}

impl SlotVm {
    fn boot() -> Self {
        let work = moat_jail::testutil::TempDir::new("disk-slots");
        let initramfs = build_initramfs(work.path());
        let boot_disk = data_file(work.path(), "boot.img", b"BOOT-DISK", 1);
        let base = PathBuf::from("/run/moat-test-slots");
        let id = unique_name("slots");
        let pid = std::process::id();
        let spec = VmSpec {
            kernel: workspace().join("target/release/moat-assets/vmlinux"),
            initramfs,
            cpus: 1,
            memory_mib: 128,
            disks: vec![Disk {
                path: boot_disk,
                readonly: true,
            }],
            disk_slots: 1,
            control_uds: Some("/control.sock".into()),
            vsock_uds: "/vsock.sock".into(),
            console_log: "/console.log".into(),
            jail: Some(JailSpec {
                id: id.clone(),
                uid: 1_900_000 + pid % 50_000,
                gid: 1_900_000 + pid % 50_000,
                base: base.clone(),
                cgroup_root: "/sys/fs/cgroup".into(),
                cgroup_path: None,
            }),
            seccomp: true,
        };
        let log = File::create(work.path().join("vmm.log")).expect("vmm log");
        let vmm = VmmProcess::spawn(&vmm_bin(), &spec.args().expect("args"), &log, true)
            .expect("spawn moat-vmm");
        Self {
            vmm: Some(vmm),
            base,
            id,
            work,
        }
    }

    fn root(&self) -> PathBuf {
        self.base.join(&self.id).join("root")
    }

    fn control(&self) -> PathBuf {
        self.root().join("control.sock")
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.root().join("console.log")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let vmm_log = std::fs::read_to_string(self.work.path().join("vmm.log")).unwrap_or_default();
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- vmm log\n{vmm_log}\n--- console tail\n{}",
            tail.join("\n")
        )
    }

    /// Waits until the console has shown `line` `times` times.
    fn wait_line(&self, line: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            let seen = self
                .console()
                .lines()
                .filter(|l| l.trim_end() == line)
                .count();
            if seen >= times {
                return;
            }
            if let Some(Ok(Some(status))) = self.vmm.as_ref().map(|v| v.exited()) {
                panic!(
                    "moat-vmm ended ({status}) before `{line}`\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no `{line}` on the console\n{}", self.diagnostics());
    }

    fn wait_for_control(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.control().exists() {
            assert!(
                Instant::now() < deadline,
                "no control socket\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SlotVm {
    fn drop(&mut self) {
        drop(self.vmm.take());
        let _ = std::fs::remove_dir_all(self.base.join(&self.id));
        let cgroup = Path::new("/sys/fs/cgroup/moat").join(&self.id);
        let _ = std::fs::remove_dir(cgroup);
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// A file of `mib` MiB that starts with `head`.
fn data_file(dir: &Path, name: &str, head: &[u8], mib: u64) -> PathBuf {
    let path = dir.join(name);
    let mut file = File::create(&path).expect("data file");
    file.write_all(head).expect("write");
    file.set_len(mib << 20).expect("size");
    path
}

/// A newc cpio of the host's static busybox and [`INIT`].
fn build_initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).expect("initramfs dir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    moat_jail::testutil::write_executable(&root.join("init"), INIT);
    let cpio = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet -R 0:0 > \"$0\"")
        .arg(&cpio)
        .current_dir(&root)
        .status()
        .expect("cpio");
    assert!(status.success(), "cpio failed");
    cpio
}

#[test]
fn a_slot_takes_files_after_boot_and_the_guest_sees_each() {
    if !vm_available("a_slot_takes_files_after_boot_and_the_guest_sees_each") {
        return;
    }
    let vm = SlotVm::boot();
    vm.wait_for_control();
    let empty = "SLOT size=0 head= boot=BOOT-DISK";
    vm.wait_line(empty, 1);

    let a = data_file(vm.work.path(), "a.img", b"MOAT-SLOT-A", 1);
    let b = data_file(vm.work.path(), "b.img", b"MOAT-SLOT-B", 1);
    let open = |p: &Path| File::open(p).expect("open image");
    assert_eq!(swap_disk(&vm.control(), 0, Some(&open(&a))).unwrap(), 2048);
    vm.wait_line("SLOT size=2048 head=MOAT-SLOT-A boot=BOOT-DISK", 1);
    assert_eq!(swap_disk(&vm.control(), 0, None).unwrap(), 0);
    vm.wait_line(empty, 2);
    // The same size as A: the guest reads B's bytes, not A's cached ones.
    assert_eq!(swap_disk(&vm.control(), 0, Some(&open(&b))).unwrap(), 2048);
    vm.wait_line("SLOT size=2048 head=MOAT-SLOT-B boot=BOOT-DISK", 1);

    // Refusals leave the VM as it was, and the VMM (under its filters) keeps serving.
    let err = swap_disk(&vm.control(), 1, Some(&open(&a))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the VMM refused to swap disk slot 1: no disk slot 1 (the VM has 1)"
    );
    let odd = vm.work.path().join("odd.img");
    std::fs::write(&odd, [0u8; 700]).unwrap();
    let err = swap_disk(&vm.control(), 0, Some(&open(&odd))).unwrap_err();
    assert!(err.to_string().contains("not a multiple of 512"), "{err}");
    assert_eq!(swap_disk(&vm.control(), 0, None).unwrap(), 0);
    vm.wait_line(empty, 3);
    let status = vm.vmm.as_ref().and_then(|v| v.exited().ok().flatten());
    assert!(
        status.is_none(),
        "moat-vmm ended: {status:?}\n{}",
        vm.diagnostics()
    );
}
