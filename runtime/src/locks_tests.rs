use std::io::{Seek, SeekFrom, Write};

use super::*;
use crate::testutil::TempDir;

fn image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&path)
        .arg("4m")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    path
}

fn rw<'a>(path: &'a Path, destination: &'a str) -> Attach<'a> {
    Attach {
        path,
        destination,
        readonly: false,
    }
}

fn ro<'a>(path: &'a Path, destination: &'a str) -> Attach<'a> {
    Attach {
        readonly: true,
        ..rw(path, destination)
    }
}

/// [`lock_all`] right after this test released the same images: a child that another test
/// thread is spawning shares a released lock's open file description between its fork and its
/// exec, so the lock may last that moment longer (a second at most).
fn lock_once_free(attaches: &[Attach<'_>], root: &Path) -> Result<VolumeLocks, LockError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match lock_all(attaches, root) {
            Err(LockError::Busy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[test]
fn read_write_is_exclusive_read_only_is_shared() {
    let tmp = TempDir::new("locks");
    let (a, b) = (image(tmp.path(), "a.ext4"), image(tmp.path(), "b.ext4"));
    let held = lock_all(&[rw(&a, "/a"), ro(&b, "/b")], tmp.path()).unwrap();
    // Another run (another open file description) cannot write a or b, but can read b.
    let err = lock_all(&[rw(&a, "/x")], tmp.path()).unwrap_err();
    assert!(matches!(err, LockError::Busy { write: true, .. }), "{err}");
    let pid = std::process::id();
    assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
    assert!(matches!(
        lock_all(&[ro(&a, "/x")], tmp.path()),
        Err(LockError::Busy { write: false, .. })
    ));
    assert!(matches!(
        lock_all(&[rw(&b, "/x")], tmp.path()),
        Err(LockError::Busy { .. })
    ));
    let shared = lock_all(&[ro(&b, "/y")], tmp.path()).unwrap();
    drop((held, shared));
    // Released with the locks.
    lock_once_free(&[rw(&a, "/a"), rw(&b, "/b")], tmp.path()).unwrap();
}

#[test]
fn one_image_twice_in_one_run() {
    let tmp = TempDir::new("locks");
    let a = image(tmp.path(), "a.ext4");
    let err = lock_all(&[rw(&a, "/a"), rw(&a, "/b")], tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("attached twice (at /a and /b)"),
        "{err}"
    );
    assert!(matches!(
        lock_all(&[ro(&a, "/a"), rw(&a, "/b")], tmp.path()),
        Err(LockError::Twice { .. })
    ));
    lock_all(&[ro(&a, "/a"), ro(&a, "/b")], tmp.path()).unwrap();
}

#[test]
fn read_only_refuses_a_journal_to_replay() {
    let tmp = TempDir::new("locks");
    let a = image(tmp.path(), "a.ext4");
    let mut f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    let mut word = [0u8; 4];
    std::fs::File::open(&a)
        .and_then(|mut r| {
            r.seek(SeekFrom::Start(EXT4_INCOMPAT_OFFSET))?;
            std::io::Read::read_exact(&mut r, &mut word)
        })
        .unwrap();
    let flags = u32::from_le_bytes(word) | EXT4_INCOMPAT_RECOVER;
    f.seek(SeekFrom::Start(EXT4_INCOMPAT_OFFSET)).unwrap();
    f.write_all(&flags.to_le_bytes()).unwrap();
    drop(f);
    let err = lock_all(&[ro(&a, "/a")], tmp.path()).unwrap_err();
    assert!(matches!(err, LockError::NeedsRecovery(_)), "{err}");
    assert!(err.to_string().contains("journal needs recovery"), "{err}");
    // Read-write: the guest's mount replays it.
    lock_once_free(&[rw(&a, "/a")], tmp.path()).unwrap();
}

#[test]
fn proc_locks_lines() {
    let locks = "1: FLOCK  ADVISORY  WRITE 4242 fe:01:1234 0 EOF\n\
                 1: -> FLOCK  ADVISORY  WRITE 99 fe:01:1234 0 EOF\n\
                 2: POSIX  ADVISORY  WRITE 77 08:01:55 0 EOF\n";
    let dev = rustix::fs::makedev(0xfe, 1);
    assert_eq!(lock_holder(locks, dev, 1234), Some(4242));
    assert_eq!(lock_holder(locks, dev, 1235), None);
    assert_eq!(lock_holder(locks, rustix::fs::makedev(8, 1), 55), None);
}

#[test]
fn other_content_has_no_journal_to_check() {
    let tmp = TempDir::new("locks");
    let short = tmp.path().join("short.img");
    std::fs::write(&short, b"not a filesystem").unwrap();
    let zeros = tmp.path().join("zeros.img");
    std::fs::write(&zeros, vec![0xffu8; 8192]).unwrap();
    lock_all(&[ro(&short, "/"), ro(&zeros, "/z")], tmp.path()).unwrap();
}
