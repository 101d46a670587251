//! A store on a small tmpfs is filled until the disk is full: the failing
//! write gets a clear error, nothing committed before it is lost, and after
//! space is freed the store opens, passes fsck and accepts writes again.
//!
//! Needs root (to mount tmpfs); CI runs as root. Fails loudly otherwise.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use psync_base::DeviceId;
use psync_store::{NewNode, NodeAttrs, Store, StoreError, Timestamp, ROOT_INO};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "store_disk_full needs root to mount a small tmpfs (CI runs as root); run the suite as root"
        );
        mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::empty(), Some(format!("size={size}").as_str()))
            .unwrap_or_else(|e| panic!("cannot mount tmpfs on {}: {e}", dir.display()));
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        mount(None::<&str>, &self.0, None::<&str>, MsFlags::MS_REMOUNT, Some(format!("size={size}").as_str()))
            .expect("remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

fn content(i: u32) -> Vec<u8> {
    let mut state = u64::from(i) * 0x9E37_79B9 + 1;
    (0..(1 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn full_disk_gives_a_clear_error_and_loses_nothing() {
    let mountpoint = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(mountpoint.path(), "48m");
    let data_dir = mountpoint.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let now = Timestamp::now();

    let mut committed = 0u32;
    let error = {
        let store = Store::open_or_create(&data_dir, DeviceId([5; 32])).unwrap();
        let error = loop {
            assert!(committed < 200, "the 48 MiB tmpfs never filled up");
            let name = format!("f{committed}");
            let step = store
                .create(ROOT_INO, name.as_bytes(), NewNode::File, NodeAttrs::perm(0o644), now)
                .and_then(|node| store.write(node.ino, 0, &content(committed), now).map(|_| node))
                .and_then(|node| store.commit(node.ino, now, true));
            match step {
                Ok(_) => committed += 1,
                Err(e) => break e,
            }
        };
        // Everything committed before the failure is still readable now.
        for i in 0..committed {
            let node = store.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
            assert!(store.read(node.ino, 0, 1 << 20).unwrap() == content(i), "f{i} damaged while the disk was full");
        }
        error
    };
    eprintln!("after {committed} files the store said: {error}");
    assert!(matches!(error, StoreError::DiskFull), "expected DiskFull, got {error:?}");
    assert!(error.to_string().contains("no space left"), "{error}");
    assert!(committed >= 5, "only {committed} files fit: the test did not exercise much");

    // Free space: the store opens, is consistent, and has lost nothing committed.
    fs.resize("256m");
    let store = Store::open(&data_dir).unwrap();
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "fsck after disk full: {:#?}", report.problems);
    for i in 0..committed {
        let node = store.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
        assert!(store.read(node.ino, 0, 1 << 20).unwrap() == content(i), "f{i} lost after disk full");
    }
    let node = store.create(ROOT_INO, b"after", NewNode::File, NodeAttrs::perm(0o644), now).unwrap();
    store.write(node.ino, 0, b"writable again", now).unwrap();
    store.commit(node.ino, now, true).unwrap();
}
