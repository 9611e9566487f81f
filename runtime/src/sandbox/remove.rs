//! Removing a container completely: its VM's leftovers on the host (a VMM that outlived a
//! killed supervisor, the VM's cgroup), its writable layer's disk and its state directory.

use std::path::Path;

use super::record::Plan;

/// Removes the writable layer, the VM's cgroup and the directory `dir`.
pub fn remove_files(dir: &Path, plan: &Plan) {
    let id = &plan.config.id;
    let scratch = crate::disks::scratch_path(&plan.options.data_root, id);
    match std::fs::remove_file(&scratch) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %scratch.display(), error = %e, "cannot remove the writable layer")
        }
    }
    remove_cgroup(plan);
    let data = data_dir(plan);
    if let Err(e) = std::fs::remove_dir_all(&data) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %data.display(), error = %e, "cannot remove the container's data");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove the state directory");
        }
    }
}

/// The container's own directory in the data root (`<data root>/containers/<name>/`): the link
/// to its stored image, which must outlive the CLI that ran it (for `moat start`).
pub fn data_dir(plan: &Plan) -> std::path::PathBuf {
    plan.options
        .data_root
        .join("containers")
        .join(&plan.config.id)
}

/// Where the container's link to its stored image is.
pub fn image_link(plan: &Plan) -> std::path::PathBuf {
    data_dir(plan).join("image.ext4")
}

/// Hard-links the stored image `disk` (in the same data root) for the container.
pub fn link_image(disk: &Path, plan: &Plan) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = data_dir(plan);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let link = image_link(plan);
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(disk, &link)
}

/// Removes the VM's cgroup (the VMM made it; a killed VMM leaves it).
pub fn remove_cgroup(plan: &Plan) {
    if !plan.options.jail {
        return;
    }
    let Ok(id) = moat_jail::JailId::new(&plan.config.id) else {
        return;
    };
    let removed = plan
        .config
        .cgroup(&id)
        .and_then(|cgroup| moat_jail::cgroup::remove(&plan.options.cgroup_root, &cgroup));
    if let Err(e) = removed {
        tracing::debug!(error = %crate::error_chain(&e), "VM cgroup not removed");
    }
}

/// Kills the VMM `pid` if it still runs and is the VM of container `id` (its command line names
/// the jail id), e.g. after its supervisor was killed before the parent-death signal fired.
pub fn kill_stray_vmm(pid: u32, id: &str) {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = words
        .windows(2)
        .any(|w| w[0] == b"--jail-id" && w[1] == id.as_bytes());
    if !ours {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    // Its cgroup can only go once it is gone.
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
