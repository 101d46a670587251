//! Bundles through the relay: a device that was never connected to the
//! writer installs exactly what the writer had, from bundles alone; a
//! changed object, a duplicate or a stranger's bundle never installs
//! anything wrong.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::big;
use psync_base::{DeviceId, BLOCK_SIZE};
use psync_sync::relay::{BundleCutter, RelayBundle, MAX_BUNDLE_BYTES};
use psync_sync::{Input, MemStorage, Millis, Output, SyncConfig, SyncCore, SyncPath, SyncStorage};

const T0: Millis = 1_900_000_000_000;

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 32])
}

fn path(s: &str) -> SyncPath {
    SyncPath::new(s).unwrap()
}

fn core(n: u8, group: &[DeviceId]) -> SyncCore<MemStorage> {
    SyncCore::new(MemStorage::new(dev(n), 100 + u64::from(n)), SyncConfig::new(group.to_vec()), 7, T0)
}

/// Every bundle of `storage`'s index after `since`, cut at `max_bytes`.
fn bundles(storage: &MemStorage, since: u64, max_bytes: usize) -> (Vec<RelayBundle>, u64) {
    let mut cutter = BundleCutter::with_max_bytes(since, max_bytes);
    let mut out = Vec::new();
    while let Some(bundle) = cutter.next(storage).unwrap() {
        // Every bundle survives its own encoding.
        assert_eq!(RelayBundle::decode(&bundle.encode().unwrap()).unwrap(), bundle);
        out.push(bundle);
    }
    (out, cutter.complete_to())
}

fn outputs(core: &mut SyncCore<MemStorage>) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// What `core` shows: (path, content) of every live file.
fn files(core: &SyncCore<MemStorage>) -> Vec<(String, Option<Vec<u8>>)> {
    let s = core.storage();
    let mut out: Vec<_> = s.all().filter(|r| !r.deleted).map(|r| (r.path.to_string(), s.content(r))).collect();
    out.sort();
    out
}

#[test]
fn a_device_never_online_with_the_writer_installs_its_changes_from_bundles() {
    let group = [dev(1), dev(2)];
    let mut writer = core(1, &group);
    let w = writer.storage_mut();
    w.local_mkdir(&path("Notes"), 1);
    w.local_write(&path("Notes/a.md"), b"# a note\n", 1);
    // 300 blocks: named through pages of block hashes.
    let large = big(300 * BLOCK_SIZE as usize, 3);
    w.local_write(&path("large.pdf"), &large, 1);
    w.local_write(&path("gone.md"), b"soon deleted", 1);
    w.local_delete(&path("gone.md"), 2);
    w.local_write(&path("Notes/b.md"), b"renamed", 2);
    w.local_delete(&path("Notes/a.md"), 2);
    let (cut, complete_to) = bundles(writer.storage(), 0, 1 << 20);
    assert!(cut.len() >= 19, "a 19 MiB file takes many 1 MiB bundles: {}", cut.len());
    assert_eq!(complete_to, writer.storage().seq());
    assert!(cut.iter().all(|b| b.encode().unwrap().len() <= 1 << 20));

    let mut reader = core(2, &group);
    for bundle in cut {
        reader.handle(T0 + 1, Input::Relayed(dev(1), bundle)).unwrap();
    }
    assert!(outputs(&mut reader).iter().all(|o| !matches!(o, Output::Violation(..))));
    assert_eq!(files(&reader), files(&writer));
    assert_eq!(reader.storage().live(&path("large.pdf")).and_then(|r| reader.storage().content(r)).unwrap(), large);
    assert!(reader.storage().live(&path("gone.md")).is_none());

    // Later changes travel from where the last upload ended; what is
    // already there is not sent again.
    writer.storage_mut().local_write(&path("Notes/b.md"), b"edited", 3);
    let (later, _) = bundles(writer.storage(), complete_to, MAX_BUNDLE_BYTES);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].records.len(), 1);
    for bundle in later {
        reader.handle(T0 + 2, Input::Relayed(dev(1), bundle)).unwrap();
    }
    assert_eq!(files(&reader), files(&writer));
}

#[test]
fn a_changed_object_or_a_strangers_bundle_installs_nothing() {
    let group = [dev(1), dev(2)];
    let mut writer = core(1, &group);
    let data = big(3 * BLOCK_SIZE as usize, 5);
    writer.storage_mut().local_write(&path("doc.pdf"), &data, 1);
    let (mut cut, _) = bundles(writer.storage(), 0, MAX_BUNDLE_BYTES);
    assert_eq!(cut.len(), 1);

    let mut reader = core(2, &group);
    let mut tampered = cut[0].clone();
    tampered.objects[1][10] ^= 1;
    reader.handle(T0, Input::Relayed(dev(1), tampered)).unwrap();
    assert!(reader.storage().live(&path("doc.pdf")).is_none(), "a version missing a block is never installed");
    // The intact bundle (and a duplicate of it) completes it.
    reader.handle(T0 + 1, Input::Relayed(dev(1), cut[0].clone())).unwrap();
    reader.handle(T0 + 2, Input::Relayed(dev(1), cut.remove(0))).unwrap();
    assert_eq!(reader.storage().live(&path("doc.pdf")).and_then(|r| reader.storage().content(r)).unwrap(), data);

    let (strangers, _) = bundles(writer.storage(), 0, MAX_BUNDLE_BYTES);
    let mut other = core(2, &group);
    other.handle(T0, Input::Relayed(dev(9), strangers[0].clone())).unwrap();
    assert!(other.storage().live(&path("doc.pdf")).is_none());
    let out = outputs(&mut other);
    assert!(out.iter().any(|o| matches!(o, Output::Violation(d, _) if *d == dev(9))), "{out:?}");
}

#[test]
fn a_bundle_past_its_limit_is_refused() {
    let oversized = vec![0u8; MAX_BUNDLE_BYTES + 1];
    assert!(RelayBundle::decode(&oversized).is_err());
    assert!(RelayBundle::decode(b"\xff\xff\xff\xff").is_err());
}

#[test]
fn a_bundle_that_meets_a_full_disk_is_not_taken_and_comes_again() {
    let group = [dev(1), dev(2)];
    let mut writer = core(1, &group);
    let data = big(3 * BLOCK_SIZE as usize, 8);
    writer.storage_mut().local_write(&path("doc.pdf"), &data, 1);
    let (cut, _) = bundles(writer.storage(), 0, MAX_BUNDLE_BYTES);
    let mut reader = core(2, &group);
    reader.storage_mut().set_disk_full(true);
    assert!(reader.handle(T0, Input::Relayed(dev(1), cut[0].clone())).is_err(), "not taken: not to be acknowledged");
    assert!(reader.storage().live(&path("doc.pdf")).is_none());
    reader.storage_mut().set_disk_full(false);
    reader.handle(T0 + 120_000, Input::Relayed(dev(1), cut[0].clone())).unwrap();
    // Installs resume once the pause after the full disk ends.
    while let Some(at) = reader.poll_timeout().filter(|at| *at <= T0 + 240_000) {
        reader.handle_timeout(at).unwrap();
    }
    assert_eq!(reader.storage().live(&path("doc.pdf")).and_then(|r| reader.storage().content(r)).unwrap(), data);
}
