use super::*;

fn store(name: &str) -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(format!("moat-store-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    (Store::open(&dir).unwrap(), dir)
}

fn record(manifest: &str, chain: char) -> ImageRecord {
    ImageRecord {
        manifest: manifest.to_owned(),
        config: manifest.to_owned(),
        repo_digest: None,
        chain_id: format!("sha256:{}", chain.to_string().repeat(64)),
        size: 1,
    }
}

#[test]
fn a_blob_is_published_only_when_its_digest_matches() {
    let (store, dir) = store("digest");
    let tmp = store.temp_dir().unwrap();
    let good = sha256_digest(b"hello");
    let mut writer = store.blob_writer(&tmp, &good).unwrap();
    writer.write_all(b"hel").unwrap();
    assert!(!store.has_blob(&good).unwrap(), "visible before commit");
    writer.write_all(b"lo").unwrap();
    writer.commit().unwrap();
    assert_eq!(fs::read(store.blob_path(&good).unwrap()).unwrap(), b"hello");

    let claimed = sha256_digest(b"other");
    let mut writer = store.blob_writer(&tmp, &claimed).unwrap();
    writer.write_all(b"tampered").unwrap();
    let err = writer.commit().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("blob {claimed}: content does not match")),
        "{err}"
    );
    assert!(!store.has_blob(&claimed).unwrap());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "partial left");
    assert!(store.put_blob(&tmp, &claimed, b"tampered").is_err());
    drop(tmp);
    assert_eq!(fs::read_dir(dir.join("images/tmp")).unwrap().count(), 0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn digests_are_checked_before_they_name_a_path() {
    for bad in ["sha256:../../etc", "sha512:00", "sha256:ABC", ""] {
        assert!(digest_hex(bad).is_err(), "{bad}");
    }
    assert!(digest_hex(&sha256_digest(b"")).is_ok());
}

#[test]
fn what_a_killed_command_left_is_swept_and_a_live_one_is_not() {
    let (store, dir) = store("sweep");
    let live = store.temp_dir().unwrap();
    fs::write(live.path().join("x.part"), b"x").unwrap();
    // A killed command's directory: no process holds its lock.
    let dead = dir.join("images/tmp/999999-0");
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("y.part"), b"y").unwrap();
    Store::open(&dir).unwrap();
    assert!(
        !dead.exists(),
        "a dead command's directory survived the sweep"
    );
    assert!(
        live.path().join("x.part").exists(),
        "a live command's directory was swept"
    );
    drop(live);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn references_and_collection() {
    let (store, dir) = store("gc");
    let tmp = store.temp_dir().unwrap();
    let kept = sha256_digest(b"kept");
    let dropped = sha256_digest(b"dropped");
    store.put_blob(&tmp, &kept, b"kept").unwrap();
    store.put_blob(&tmp, &dropped, b"dropped").unwrap();
    for chain in ['a', 'b'] {
        let file = tmp.path().join("fs");
        fs::write(&file, b"ext4").unwrap();
        store
            .publish_rootfs(&file, &format!("sha256:{}", chain.to_string().repeat(64)))
            .unwrap();
    }
    store
        .tag(&["x:1".into(), "x:2".into()], &record(&kept, 'a'))
        .unwrap();
    store.tag(&["y:1".into()], &record(&dropped, 'b')).unwrap();
    assert_eq!(store.list().unwrap().len(), 3);
    drop(tmp);
    assert_eq!(
        store.untag(&["y:1".into(), "none".into()]).unwrap().len(),
        1
    );
    let blobs = |_: &Store, r: &ImageRecord| Ok(vec![r.manifest.clone()]);
    let freed = store.collect(&blobs).unwrap();
    assert!(freed > 0);
    assert!(store.has_blob(&kept).unwrap());
    assert!(!store.has_blob(&dropped).unwrap());
    assert!(store
        .rootfs_path(&record(&kept, 'a').chain_id)
        .unwrap()
        .exists());
    assert!(!store
        .rootfs_path(&record(&kept, 'b').chain_id)
        .unwrap()
        .exists());
    let index = fs::read_to_string(dir.join("images/refs.json")).unwrap();
    assert!(index.contains("x:2") && !index.contains("y:1"), "{index}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_index_is_an_error_not_an_empty_store() {
    let (store, dir) = store("corrupt");
    fs::write(dir.join("images/refs.json"), b"{not json").unwrap();
    let err = store.list().unwrap_err().to_string();
    assert!(err.contains("refs.json is corrupt"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}
