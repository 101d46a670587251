//! Unit tests of every store operation against a real RocksDB in a temp dir.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use psync_base::{Causality, DeviceId, NameError};
use psync_store::*;

fn device() -> DeviceId {
    DeviceId([7; 32])
}

fn t(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(dir.path(), device()).unwrap();
    Fixture { _dir: dir, store }
}

fn file(s: &Store, parent: u64, name: &str) -> Inode {
    s.create(parent, name.as_bytes(), NewNode::File, NodeAttrs::perm(0o644), t(1)).unwrap()
}

fn mkdir(s: &Store, parent: u64, name: &str) -> Inode {
    s.create(parent, name.as_bytes(), NewNode::Dir, NodeAttrs::perm(0o755), t(1)).unwrap()
}

fn read_all(s: &Store, ino: u64) -> Vec<u8> {
    let size = s.inode(ino).unwrap().content.size;
    s.read(ino, 0, size as u32).unwrap()
}

fn assert_clean(s: &Store) {
    let report = s.fsck().unwrap();
    assert!(report.is_clean(), "fsck found: {:#?}", report.problems);
}

#[test]
fn create_lookup_and_names() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a.md");
    assert_eq!(s.lookup(ROOT_INO, b"a.md").unwrap().ino, a.ino);
    assert!(matches!(
        s.create(ROOT_INO, b"a.md", NewNode::File, NodeAttrs::perm(0o644), t(2)),
        Err(StoreError::Exists)
    ));
    assert!(matches!(s.lookup(ROOT_INO, b"nope"), Err(StoreError::NotFound)));
    for (bad, err) in
        [(&b".."[..], NameError::Dot), (b"a/b", NameError::Slash), (b"a\0b", NameError::Nul), (b"", NameError::Empty)]
    {
        match s.create(ROOT_INO, bad, NewNode::File, NodeAttrs::perm(0o644), t(2)) {
            Err(StoreError::Name(e)) => assert_eq!(e, err),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let long = vec![b'x'; 256];
    assert!(matches!(
        s.create(ROOT_INO, &long, NewNode::File, NodeAttrs::perm(0o644), t(2)),
        Err(StoreError::Name(NameError::TooLong(256)))
    ));
    assert!(matches!(s.create(a.ino, b"x", NewNode::File, NodeAttrs::perm(0o644), t(2)), Err(StoreError::NotDir)));
    assert_clean(s);
}

#[test]
fn write_read_sparse_and_overwrite() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    assert_eq!(s.write(a.ino, 0, b"hello", t(2)).unwrap(), 5);
    assert_eq!(read_all(s, a.ino), b"hello");
    // A write far past the end leaves a hole that reads as zeros.
    let far = 3 * BLOCK_SIZE + 10;
    assert_eq!(s.write(a.ino, far, b"end", t(3)).unwrap(), far + 3);
    let data = read_all(s, a.ino);
    assert_eq!(&data[..5], b"hello");
    assert!(data[5..far as usize].iter().all(|&b| b == 0));
    assert_eq!(&data[far as usize..], b"end");
    // Overwrite across a block boundary.
    let edge = BLOCK_SIZE - 2;
    s.write(a.ino, edge, b"WXYZ", t(4)).unwrap();
    assert_eq!(s.read(a.ino, edge, 4).unwrap(), b"WXYZ");
    assert_eq!(s.read(a.ino, far + 3, 10).unwrap(), b"", "read past EOF is empty");
    assert_eq!(s.read(a.ino, far + 1, 100).unwrap(), b"nd", "read is clamped at EOF");
    assert_eq!(s.inode(a.ino).unwrap().mtime, t(4));
    assert_clean(s);
}

#[test]
fn append_writes_at_the_end() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "log");
    assert_eq!(s.append(a.ino, b"one\n", t(2)).unwrap(), 0);
    assert_eq!(s.append(a.ino, b"two\n", t(3)).unwrap(), 4);
    assert_eq!(read_all(s, a.ino), b"one\ntwo\n");
}

#[test]
fn truncate_shrinks_and_extends_with_zeros() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
    s.write(a.ino, 0, &data, t(2)).unwrap();
    s.truncate(a.ino, 70_000, t(3)).unwrap();
    assert_eq!(read_all(s, a.ino), &data[..70_000]);
    // Extending must not resurrect the truncated bytes.
    s.truncate(a.ino, 150_000, t(4)).unwrap();
    let grown = read_all(s, a.ino);
    assert_eq!(&grown[..70_000], &data[..70_000]);
    assert!(grown[70_000..].iter().all(|&b| b == 0));
    s.truncate(a.ino, 0, t(5)).unwrap();
    assert_eq!(s.inode(a.ino).unwrap().content, Content::default());
    assert_clean(s);
}

#[test]
fn identical_blocks_are_stored_once() {
    let f = fixture();
    let s = &f.store;
    let block = vec![42u8; BLOCK_SIZE as usize];
    for name in ["a", "b", "c"] {
        let n = file(s, ROOT_INO, name);
        s.write(n.ino, 0, &block, t(2)).unwrap();
        s.write(n.ino, BLOCK_SIZE, &block, t(2)).unwrap();
        s.commit(n.ino, t(2), false).unwrap();
    }
    let stats = s.stats().unwrap();
    assert_eq!(stats.blocks, 1);
    assert_eq!(stats.block_bytes, BLOCK_SIZE);
    assert_eq!(stats.logical_bytes, 6 * BLOCK_SIZE);
}

#[test]
fn one_byte_edit_in_large_file_touches_one_block() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "big");
    let size = 64 * 1024 * 1024u64;
    let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for i in 0..64u64 {
        s.write(a.ino, i * chunk.len() as u64, &chunk, t(2)).unwrap();
    }
    s.commit(a.ino, t(2), false).unwrap();
    let before = s.block_list(&s.inode(a.ino).unwrap().content).unwrap();
    let blocks_before = s.stats().unwrap().blocks;
    s.write(a.ino, size / 2 + 12_345, b"!", t(3)).unwrap();
    s.commit(a.ino, t(3), false).unwrap();
    let after = s.block_list(&s.inode(a.ino).unwrap().content).unwrap();
    let changed = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    assert_eq!(changed, 1);
    assert_eq!(s.stats().unwrap().blocks, blocks_before + 1);
    assert_eq!(s.read(a.ino, size / 2 + 12_345, 1).unwrap(), b"!");
    // The old version is still readable in full.
    let versions = s.versions(a.file_id).unwrap();
    assert_eq!(versions.len(), 2);
    let old = s.read_content(&versions[0].content, size / 2 + 12_345, 1).unwrap();
    assert_ne!(old, b"!");
}

#[test]
fn commit_records_versions_vectors_and_changes() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    assert_eq!(s.path_versions_since(0, 100).unwrap().len(), 0, "an uncommitted new file is not yet a change");
    assert_eq!(s.dirty_files().unwrap(), vec![a.ino]);
    s.write(a.ino, 0, b"v1", t(2)).unwrap();
    let seq1 = s.commit(a.ino, t(2), true).unwrap().unwrap();
    assert_eq!(s.commit(a.ino, t(2), true).unwrap(), None, "no change, no version");
    assert!(s.dirty_files().unwrap().is_empty());
    s.write(a.ino, 0, b"v2", t(3)).unwrap();
    let seq2 = s.commit(a.ino, t(3), false).unwrap().unwrap();
    assert!(seq2 > seq1);
    let node = s.inode(a.ino).unwrap();
    // A device's counter is the sequence number of its latest change: it
    // never repeats, even for a path whose history was collected.
    assert_eq!(node.vv.get(&device()), seq2);
    let versions = s.versions(a.file_id).unwrap();
    assert_eq!(versions.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![seq1, seq2]);
    assert_eq!(versions[0].vv.compare(&versions[1].vv), Causality::Dominated);
    assert_eq!(s.read_content(&versions[0].content, 0, 10).unwrap(), b"v1");
    assert_eq!(versions[1].path, b"a");
    // Each path appears once in the change log (the sync index), at its latest change.
    let changes = s.path_versions_since(0, 100).unwrap();
    assert_eq!(changes.len(), 1);
    let (last, latest) = &changes[0];
    assert!(*last > seq2, "the index entry is numbered after the commit it records");
    assert_eq!((latest.path.as_slice(), latest.deleted, latest.vv.get(&device())), (&b"a"[..], false, *last));
    assert!(s.path_versions_since(*last, 100).unwrap().is_empty());
    mkdir(s, ROOT_INO, "d");
    let since = s.path_versions_since(*last, 100).unwrap();
    assert!(matches!(&since[..], [(_, v)] if v.path == b"d" && v.kind == NodeKind::Dir && !v.deleted));
    assert_clean(s);
}

#[test]
fn unlink_records_a_deleted_path_and_open_files_survive_until_released() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    s.write(a.ino, 0, b"data", t(2)).unwrap();
    s.commit(a.ino, t(2), false).unwrap();
    s.pin(a.ino, 1);
    s.unlink(ROOT_INO, b"a", t(3)).unwrap();
    assert!(matches!(s.lookup(ROOT_INO, b"a"), Err(StoreError::NotFound)));
    assert_eq!(s.read(a.ino, 0, 10).unwrap(), b"data", "open-but-unlinked stays readable");
    assert_clean(s);
    s.unpin(a.ino, 1).unwrap();
    assert!(matches!(s.inode(a.ino), Err(StoreError::NotFound)));
    let changes = s.path_versions_since(0, 10).unwrap();
    let [(seq, deleted)] = &changes[..] else { panic!("one change expected, got {changes:?}") };
    assert_eq!((deleted.path.as_slice(), deleted.deleted), (&b"a"[..], true));
    assert_eq!(deleted.dot, (device(), deleted.vv.get(&device())), "the delete is this device's change");
    assert_eq!(deleted.vv.get(&device()), *seq, "the delete is this device's latest change");
    assert_eq!(s.stats().unwrap().tombstones, 1);
    assert_clean(s);
    s.drop_deleted_paths(&[b"a".to_vec()]).unwrap();
    assert!(s.path_versions_since(0, 10).unwrap().is_empty());
    assert_eq!(s.stats().unwrap().tombstones, 0);
    assert_clean(s);
}

#[test]
fn orphans_are_reaped_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ino;
    {
        let s = Store::open_or_create(dir.path(), device()).unwrap();
        ino = file(&s, ROOT_INO, "a").ino;
        s.pin(ino, 1);
        s.unlink(ROOT_INO, b"a", t(3)).unwrap();
        // The process "dies" with the handle open.
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(matches!(s.inode(ino), Err(StoreError::NotFound)));
    assert_clean(&s);
}

#[test]
fn rmdir_and_nlink() {
    let f = fixture();
    let s = &f.store;
    let d = mkdir(s, ROOT_INO, "d");
    let e = mkdir(s, d.ino, "e");
    assert_eq!(s.inode(ROOT_INO).unwrap().nlink(), 3);
    assert_eq!(s.inode(d.ino).unwrap().nlink(), 3);
    assert!(matches!(s.rmdir(ROOT_INO, b"d", t(2)), Err(StoreError::NotEmpty)));
    assert!(matches!(s.unlink(ROOT_INO, b"d", t(2)), Err(StoreError::IsDir)));
    s.rmdir(d.ino, b"e", t(2)).unwrap();
    assert!(matches!(s.inode(e.ino), Err(StoreError::NotFound)));
    assert_eq!(s.inode(d.ino).unwrap().nlink(), 2);
    file(s, d.ino, "f");
    assert!(matches!(s.rmdir(d.ino, b"f", t(2)), Err(StoreError::NotDir)));
    assert_clean(s);
}

#[test]
fn hard_links() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    let d = mkdir(s, ROOT_INO, "d");
    s.link(a.ino, d.ino, b"b", t(2)).unwrap();
    assert_eq!(s.inode(a.ino).unwrap().nlink(), 2);
    assert!(matches!(s.link(d.ino, ROOT_INO, b"x", t(2)), Err(StoreError::NotPermitted(_))));
    s.unlink(ROOT_INO, b"a", t(3)).unwrap();
    assert_eq!(s.lookup(d.ino, b"b").unwrap().ino, a.ino);
    assert_eq!(s.inode(a.ino).unwrap().nlink(), 1);
    assert_clean(s);
}

#[test]
fn rename_replace_noreplace_exchange() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    let b = file(s, ROOT_INO, "b");
    let d = mkdir(s, ROOT_INO, "d");
    s.write(a.ino, 0, b"A", t(2)).unwrap();
    s.write(b.ino, 0, b"B", t(2)).unwrap();
    assert!(matches!(s.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::NoReplace, t(3)), Err(StoreError::Exists)));
    s.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::Exchange, t(3)).unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"b").unwrap().ino, a.ino);
    assert_eq!(s.lookup(ROOT_INO, b"a").unwrap().ino, b.ino);
    // Replace: the old target goes away, the inode number moves with the name.
    s.rename(ROOT_INO, b"b", d.ino, b"c", RenameMode::Replace, t(4)).unwrap();
    s.rename(ROOT_INO, b"a", d.ino, b"c", RenameMode::Replace, t(5)).unwrap();
    assert_eq!(s.lookup(d.ino, b"c").unwrap().ino, b.ino);
    assert!(matches!(s.inode(a.ino), Err(StoreError::NotFound)));
    assert_eq!(read_all(s, b.ino), b"B");
    assert!(matches!(s.rename(ROOT_INO, b"zz", ROOT_INO, b"y", RenameMode::Replace, t(5)), Err(StoreError::NotFound)));
    assert!(matches!(s.rename(d.ino, b"c", ROOT_INO, b"y", RenameMode::Exchange, t(5)), Err(StoreError::NotFound)));
    assert_clean(s);
}

#[test]
fn rename_directories() {
    let f = fixture();
    let s = &f.store;
    let d = mkdir(s, ROOT_INO, "d");
    let e = mkdir(s, d.ino, "e");
    let x = mkdir(s, ROOT_INO, "x");
    assert!(matches!(s.rename(ROOT_INO, b"d", e.ino, b"d2", RenameMode::Replace, t(2)), Err(StoreError::Invalid(_))));
    assert!(matches!(s.rename(ROOT_INO, b"d", d.ino, b"d2", RenameMode::Replace, t(2)), Err(StoreError::Invalid(_))));
    // A directory replaces an empty directory, not a non-empty one.
    assert!(matches!(s.rename(ROOT_INO, b"x", ROOT_INO, b"d", RenameMode::Replace, t(2)), Err(StoreError::NotEmpty)));
    s.rename(d.ino, b"e", ROOT_INO, b"x", RenameMode::Replace, t(2)).unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"x").unwrap().ino, e.ino);
    assert!(matches!(s.inode(x.ino), Err(StoreError::NotFound)));
    assert_eq!(s.inode(d.ino).unwrap().nlink(), 2);
    assert_eq!(s.inode(ROOT_INO).unwrap().nlink(), 4);
    let f1 = file(s, ROOT_INO, "f");
    assert!(matches!(s.rename(ROOT_INO, b"f", ROOT_INO, b"x", RenameMode::Replace, t(3)), Err(StoreError::IsDir)));
    assert!(matches!(s.rename(ROOT_INO, b"x", ROOT_INO, b"f", RenameMode::Replace, t(3)), Err(StoreError::NotDir)));
    // Exchange a file and a directory across parents.
    s.rename(ROOT_INO, b"f", d.ino, b"inner", RenameMode::Replace, t(4)).unwrap();
    s.rename(d.ino, b"inner", ROOT_INO, b"x", RenameMode::Exchange, t(5)).unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"x").unwrap().ino, f1.ino);
    assert_eq!(s.lookup(d.ino, b"inner").unwrap().ino, e.ino);
    assert_eq!(s.path_of(e.ino).unwrap(), b"d/inner");
    assert_clean(s);
}

#[test]
fn symlinks_and_attrs() {
    let f = fixture();
    let s = &f.store;
    let l = s.create(ROOT_INO, b"l", NewNode::Symlink(b"../target"), NodeAttrs::perm(0o777), t(1)).unwrap();
    assert_eq!(s.inode(l.ino).unwrap().symlink, b"../target");
    assert!(matches!(
        s.create(ROOT_INO, b"m", NewNode::Symlink(b""), NodeAttrs::perm(0o777), t(1)),
        Err(StoreError::Invalid(_))
    ));
    let a = file(s, ROOT_INO, "a");
    s.commit(a.ino, t(1), false).unwrap();
    let seq = s.inode(a.ino).unwrap().seq;
    let attr = SetAttr { perm: Some(0o600), uid: Some(5), gid: Some(6), mtime: Some(t(9)), atime: Some(t(8)) };
    let node = s.set_attr(a.ino, &attr, t(10)).unwrap();
    assert_eq!((node.perm, node.uid, node.gid, node.mtime, node.atime, node.ctime), (0o600, 5, 6, t(9), t(8), t(10)));
    assert!(node.seq > seq, "a permission change is a change for sync");
    assert_clean(s);
}

#[test]
fn read_dir_pages_through_entries() {
    let f = fixture();
    let s = &f.store;
    for i in 0..25 {
        file(s, ROOT_INO, &format!("f{i:02}"));
    }
    let mut names = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = s.read_dir(ROOT_INO, after.as_deref(), 7).unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        names.extend(page.into_iter().map(|(n, _)| String::from_utf8(n).unwrap()));
    }
    assert_eq!(names, (0..25).map(|i| format!("f{i:02}")).collect::<Vec<_>>());
}

#[test]
fn gc_keeps_referenced_and_removes_the_rest() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    for v in 0..5u8 {
        s.write(a.ino, 0, &vec![v; 1000], t(100 + v as i64)).unwrap();
        s.commit(a.ino, t(100 + v as i64), false).unwrap();
    }
    let b = file(s, ROOT_INO, "b");
    s.write(b.ino, 0, b"bye", t(100)).unwrap();
    s.commit(b.ino, t(100), false).unwrap();
    s.unlink(ROOT_INO, b"b", t(101)).unwrap();
    let now = t(100 + 365 * 86_400);
    let report = s.gc(GcPolicy { keep_versions: 2, keep_for_secs: 86_400, keep_for_merges: true }, now).unwrap();
    assert_eq!(report.versions_removed, 3);
    assert_eq!(report.blocks_removed, 3);
    assert_eq!(s.versions(a.file_id).unwrap().len(), 2);
    // The deleted file's last version is history too, kept by the policy.
    assert_eq!(s.versions(b.file_id).unwrap().len(), 1);
    assert_eq!(read_all(s, a.ino), vec![4u8; 1000]);
    assert_clean(s);
    let again = s.gc(GcPolicy { keep_versions: 2, keep_for_secs: 86_400, keep_for_merges: true }, now).unwrap();
    assert_eq!(again, GcReport::default());
    // Uncommitted content is referenced by its inode and survives GC.
    s.write(a.ino, 0, b"draft", t(200)).unwrap();
    s.gc(GcPolicy { keep_versions: 1, keep_for_secs: 0, keep_for_merges: true }, now).unwrap();
    assert_eq!(s.read(a.ino, 0, 5).unwrap(), b"draft");
    assert_clean(s);
}

/// A peer that has not acknowledged the latest versions may have edited
/// from the last one it has: that version and everything after it stay,
/// whatever the policy, so a concurrent edit can still be merged.
#[test]
fn gc_keeps_what_a_merge_may_need() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    let mut seqs = Vec::new();
    for v in 0..6u8 {
        s.write(a.ino, 0, &[v; 100], t(100 + v as i64)).unwrap();
        s.commit(a.ino, t(100 + v as i64), false).unwrap();
        seqs.push(s.versions(a.file_id).unwrap().last().unwrap().seq);
    }
    // The peer took versions up to the third.
    s.set_peer_record(&DeviceId([9; 32]), PeerRecord { index_id: 1, applied: 0, acked: seqs[2] }).unwrap();
    let now = t(100 + 365 * 86_400);
    let strict = GcPolicy { keep_versions: 1, keep_for_secs: 0, keep_for_merges: true };
    s.gc(strict, now).unwrap();
    let kept: Vec<u64> = s.versions(a.file_id).unwrap().iter().map(|v| v.seq).collect();
    assert_eq!(kept, seqs[2..].to_vec(), "the common version and everything after it");
    // Once the peer has everything, only the policy's one version is left.
    s.set_peer_record(&DeviceId([9; 32]), PeerRecord { index_id: 1, applied: 0, acked: seqs[5] }).unwrap();
    s.gc(strict, now).unwrap();
    assert_eq!(s.versions(a.file_id).unwrap().len(), 1);
    assert_clean(s);
}

/// A deleted file is listed with its last version and comes back (its
/// folder too) in one transaction, continuing its history.
#[test]
fn deleted_files_are_listed_and_come_back() {
    let f = fixture();
    let s = &f.store;
    let d = mkdir(s, ROOT_INO, "notes");
    let a = file(s, d.ino, "gone.md");
    for text in ["first", "second"] {
        s.write(a.ino, 0, text.as_bytes(), t(10)).unwrap();
        s.truncate(a.ino, text.len() as u64, t(10)).unwrap();
        s.commit(a.ino, t(10), false).unwrap();
    }
    let kept = file(s, ROOT_INO, "kept.md");
    s.write(kept.ino, 0, b"kept", t(10)).unwrap();
    s.commit(kept.ino, t(10), false).unwrap();
    s.unlink(d.ino, b"gone.md", t(11)).unwrap();
    s.rmdir(ROOT_INO, b"notes", t(11)).unwrap();

    let deleted = s.deleted_files().unwrap();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].path, b"notes/gone.md");
    assert_eq!(deleted[0].content.size, "second".len() as u64);
    let first = s.versions(a.file_id).unwrap()[0].seq;

    let back = s.undelete(a.file_id, first, b"notes/gone.md", t(12)).unwrap();
    assert_eq!(back.made_dirs, vec![b"notes".to_vec()]);
    let node = s.resolve(b"notes/gone.md").unwrap();
    assert_eq!(read_all(s, node.ino), b"first");
    assert_eq!(s.versions(a.file_id).unwrap().len(), 3, "the history goes on");
    assert!(s.deleted_files().unwrap().is_empty());
    assert!(matches!(s.undelete(a.file_id, first, b"notes/gone.md", t(13)), Err(StoreError::Exists)));
    assert_clean(s);
}

/// The tree at a point in time: each file's version then, without the
/// files already deleted then; a deleted file's time is kept.
#[test]
fn the_tree_at_a_point_in_time() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a.md");
    s.write(a.ino, 0, b"a one", t(10)).unwrap();
    s.commit(a.ino, t(10), false).unwrap();
    let b = file(s, ROOT_INO, "b.md");
    s.write(b.ino, 0, b"b", t(15)).unwrap();
    s.commit(b.ino, t(15), false).unwrap();
    s.write(a.ino, 0, b"a two", t(20)).unwrap();
    s.commit(a.ino, t(20), false).unwrap();
    s.unlink(ROOT_INO, b"b.md", t(25)).unwrap();
    let at = |secs: i64| -> Vec<(String, u64)> {
        s.tree_at(secs).unwrap().iter().map(|v| (String::from_utf8(v.path.clone()).unwrap(), v.content.size)).collect()
    };
    assert_eq!(at(5), vec![]);
    assert_eq!(at(12), vec![("a.md".to_string(), 5)]);
    assert_eq!(at(22), vec![("a.md".to_string(), 5), ("b.md".to_string(), 1)]);
    assert_eq!(at(30), vec![("a.md".to_string(), 5)]);
    let at22 = s.tree_at(22).unwrap();
    assert_eq!(s.read_content(&at22[0].content, 0, 5).unwrap(), b"a two");
    assert_clean(s);
}

/// `user.*` attributes: kept, a new version of a committed file, bounded,
/// other namespaces refused, gone with the file.
#[test]
fn extended_attributes() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a.md");
    s.write(a.ino, 0, b"x", t(1)).unwrap();
    s.commit(a.ino, t(1), false).unwrap();
    let before = s.path_version(b"a.md").unwrap().unwrap();
    s.setxattr(a.ino, b"user.tag", b"red", XattrMode::Any, t(2)).unwrap();
    let after = s.path_version(b"a.md").unwrap().unwrap();
    assert_eq!(after.vv.compare(&before.vv), Causality::Dominates, "a new version");
    assert_eq!(after.xattrs, Some(vec![(b"user.tag".to_vec(), b"red".to_vec())]));
    assert_eq!(s.getxattr(a.ino, b"user.tag").unwrap(), b"red");
    assert!(matches!(s.setxattr(a.ino, b"user.tag", b"x", XattrMode::Create, t(3)), Err(StoreError::Exists)));
    assert!(matches!(s.setxattr(a.ino, b"user.no", b"x", XattrMode::Replace, t(3)), Err(StoreError::NoXattr)));
    assert!(matches!(
        s.setxattr(a.ino, b"trusted.x", b"x", XattrMode::Any, t(3)),
        Err(StoreError::XattrUnsupported(_))
    ));
    let big = vec![7u8; psync_base::xattr::MAX_XATTR_VALUE_BYTES + 1];
    assert!(matches!(s.setxattr(a.ino, b"user.big", &big, XattrMode::Any, t(3)), Err(StoreError::XattrTooLarge(_))));
    assert!(matches!(s.getxattr(a.ino, b"user.none"), Err(StoreError::NoXattr)));
    s.removexattr(a.ino, b"user.tag", t(4)).unwrap();
    assert!(s.xattrs(a.ino).unwrap().is_empty());
    s.setxattr(a.ino, b"user.tag", b"blue", XattrMode::Any, t(5)).unwrap();
    s.unlink(ROOT_INO, b"a.md", t(6)).unwrap();
    assert!(s.xattrs(a.ino).unwrap().is_empty(), "gone with the file");
    assert_clean(s);
}

/// An editor that saves by renaming a new file over the old one: the
/// history at the path still reaches the old file's versions.
#[test]
fn versions_at_a_path_follow_saves_by_rename() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "note.md");
    s.write(a.ino, 0, b"first", t(1)).unwrap();
    s.commit(a.ino, t(1), false).unwrap();
    let tmp = file(s, ROOT_INO, ".note.md.tmp");
    s.write(tmp.ino, 0, b"second", t(2)).unwrap();
    s.commit(tmp.ino, t(2), false).unwrap();
    s.rename(ROOT_INO, b".note.md.tmp", ROOT_INO, b"note.md", RenameMode::Replace, t(2)).unwrap();
    let sizes: Vec<u64> = s.versions_at_path(b"note.md").unwrap().iter().map(|v| v.content.size).collect();
    assert_eq!(sizes, vec![5, 6], "the replaced file's version, then the new one's");
    assert_clean(s);
}

#[test]
fn reopen_keeps_everything_and_inode_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (a_ino, d_ino);
    {
        let s = Store::open_or_create(dir.path(), device()).unwrap();
        d_ino = mkdir(&s, ROOT_INO, "d").ino;
        a_ino = file(&s, d_ino, "a").ino;
        s.write(a_ino, 0, b"persist", t(2)).unwrap();
        s.commit(a_ino, t(2), true).unwrap();
        s.rename(d_ino, b"a", ROOT_INO, b"moved", RenameMode::Replace, t(3)).unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.device(), device());
    let a = s.lookup(ROOT_INO, b"moved").unwrap();
    assert_eq!(a.ino, a_ino, "inode numbers are stable across renames and restarts");
    assert_eq!(read_all(&s, a.ino), b"persist");
    let new = file(&s, ROOT_INO, "new");
    assert!(new.ino > a_ino.max(d_ino), "inode numbers are never reused");
    assert_clean(&s);
}

#[test]
fn clear_errors_for_bad_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Store::open(dir.path()), Err(StoreError::NotAStore(_))));
    // A `db` directory that is not RocksDB.
    std::fs::create_dir(dir.path().join(DB_DIR_NAME)).unwrap();
    std::fs::write(dir.path().join(DB_DIR_NAME).join("notes.txt"), "hi").unwrap();
    assert!(matches!(Store::open_or_create(dir.path(), device()), Err(StoreError::NotAStore(_))));

    let other = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(other.path(), device()).unwrap();
    let err = Store::open(other.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err:?}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(s);
    Store::open(other.path()).unwrap();
}

/// What a creation killed at any point can leave behind never makes a data
/// dir unusable: a build directory of a dead process, or (from a psync that
/// built in place) a `db` with RocksDB's first files but no `CURRENT`.
#[test]
fn an_interrupted_creation_is_cleared_and_the_store_created() {
    let dir = tempfile::tempdir().unwrap();
    // A dead process's half-built store (pid 0 is never a process of ours).
    let stale = dir.path().join("db.creating-4000000000-00000000000000aa");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("LOCK"), "").unwrap();
    // A `db` an older psync started in place: RocksDB files, no CURRENT.
    let db = dir.path().join(DB_DIR_NAME);
    std::fs::create_dir_all(&db).unwrap();
    for name in ["LOCK", "LOG", "IDENTITY", "MANIFEST-000001", "OPTIONS-000005", "000004.log"] {
        std::fs::write(db.join(name), "partial").unwrap();
    }
    assert!(!Store::exists(dir.path()));
    assert!(matches!(Store::open(dir.path()), Err(StoreError::NotAStore(_))), "nothing to open yet");
    let s = Store::open_or_create(dir.path(), device()).unwrap();
    assert!(Store::exists(dir.path()));
    file(&s, ROOT_INO, "a");
    assert_clean(&s);
    drop(s);
    assert!(!stale.exists(), "the dead process's build directory is gone");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != DB_DIR_NAME)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Store::open(dir.path()).unwrap().lookup(ROOT_INO, b"a").unwrap();
}

#[test]
fn read_only_snapshot_beside_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Store::open_or_create(dir.path(), device()).unwrap();
    let a = file(&writer, ROOT_INO, "a");
    writer.write(a.ino, 0, b"seen", t(2)).unwrap();
    writer.commit(a.ino, t(2), false).unwrap();
    let snapshot = Store::open_read_only(dir.path()).unwrap();
    assert!(snapshot.is_read_only());
    assert_eq!(snapshot.read(a.ino, 0, 10).unwrap(), b"seen");
    assert!(snapshot.fsck().unwrap().is_clean());
    assert!(matches!(snapshot.write(a.ino, 0, b"x", t(3)), Err(StoreError::ReadOnly)));
    assert!(matches!(snapshot.gc(GcPolicy::default(), t(3)), Err(StoreError::ReadOnly)));
    // The writer is unaffected.
    writer.write(a.ino, 0, b"more", t(4)).unwrap();
}

#[test]
fn corrupt_block_is_an_error_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let ino;
    {
        let s = Store::open_or_create(dir.path(), device()).unwrap();
        ino = file(&s, ROOT_INO, "a").ino;
        s.write(ino, 0, b"precious", t(2)).unwrap();
        s.commit(ino, t(2), true).unwrap();
        let hash = s.block_list(&s.inode(ino).unwrap().content).unwrap()[0].unwrap();
        s.debug_overwrite_block(&hash, b"tampered").unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(matches!(s.read(ino, 0, 8), Err(StoreError::Corrupt(_))));
    let report = s.fsck().unwrap();
    assert!(!report.is_clean());
    assert!(report.problems.iter().any(|p| p.contains("does not match its hash")), "{:?}", report.problems);
}

#[test]
fn newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open_or_create(dir.path(), device()).unwrap();
        s.debug_set_format_version(FORMAT_VERSION + 1).unwrap();
    }
    match Store::open(dir.path()) {
        Err(StoreError::NewerFormat { found, supported, .. }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
        }
        other => panic!("{other:?}"),
    }
}

fn entry(s: &Store, p: &str) -> Option<PathVersion> {
    s.path_version(p.as_bytes()).unwrap()
}

#[test]
fn the_sync_index_follows_every_change_by_path() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a.md");
    assert!(entry(s, "a.md").is_none(), "an uncommitted file is not announced");
    s.write(a.ino, 0, b"one", t(2)).unwrap();
    s.commit(a.ino, t(2), false).unwrap();
    let e1 = entry(s, "a.md").unwrap();
    assert!(!e1.deleted && e1.size == 3 && e1.dot.0 == device());
    // Rename over an existing, synced file: the new version there has seen
    // the replaced one, and the old path is deleted.
    let b = file(s, ROOT_INO, "b.md");
    s.commit(b.ino, t(2), false).unwrap();
    let old_b = entry(s, "b.md").unwrap();
    s.rename(ROOT_INO, b"a.md", ROOT_INO, b"b.md", RenameMode::Replace, t(3)).unwrap();
    assert!(entry(s, "a.md").unwrap().deleted);
    let new_b = entry(s, "b.md").unwrap();
    assert_eq!(new_b.vv.compare(&old_b.vv), Causality::Dominates);
    assert_eq!(new_b.blocks, e1.blocks, "a rename reuses the blocks");
    // Directory rename moves the whole subtree.
    let d = mkdir(s, ROOT_INO, "d");
    let inner = file(s, d.ino, "x.md");
    s.commit(inner.ino, t(4), false).unwrap();
    s.rename(ROOT_INO, b"d", ROOT_INO, b"e", RenameMode::Replace, t(5)).unwrap();
    assert!(entry(s, "d").unwrap().deleted && entry(s, "d/x.md").unwrap().deleted);
    assert!(!entry(s, "e").unwrap().deleted && !entry(s, "e/x.md").unwrap().deleted);
    // Exchange: both paths stay live.
    s.rename(ROOT_INO, b"b.md", ROOT_INO, b"e", RenameMode::Exchange, t(6)).unwrap();
    assert_eq!(entry(s, "b.md").unwrap().kind, NodeKind::Dir);
    assert!(!entry(s, "b.md/x.md").unwrap().deleted && !entry(s, "e").unwrap().deleted);
    // Names that are not UTF-8 stay local.
    let odd = s.create(ROOT_INO, b"\xff.bin", NewNode::File, NodeAttrs::perm(0o644), t(7)).unwrap();
    s.commit(odd.ino, t(7), false).unwrap();
    assert!(s.path_versions(false).unwrap().iter().all(|(_, v)| std::str::from_utf8(&v.path).is_ok()));
    assert_clean(s);
    // Sequence order lists each path once, at its latest change.
    let since = s.path_versions_since(0, 1000).unwrap();
    let paths: std::collections::HashSet<_> = since.iter().map(|(_, v)| v.path.clone()).collect();
    assert_eq!(paths.len(), since.len());
}

#[test]
fn remote_versions_install_atomically_with_their_structure() {
    let src = fixture();
    let a = file(&src.store, ROOT_INO, "n.md");
    src.store.write(a.ino, 0, &vec![5u8; 100_000], t(1)).unwrap();
    src.store.commit(a.ino, t(1), false).unwrap();
    let v = entry(&src.store, "n.md").unwrap();
    let dst = fixture();
    let mut dir_vv = psync_base::VersionVector::new();
    dir_vv.set(DeviceId([9; 32]), 4);
    let dir = PathVersion {
        path: b"notes".to_vec(),
        kind: NodeKind::Dir,
        deleted: false,
        vv: dir_vv,
        dot: (DeviceId([9; 32]), 4),
        size: 0,
        blocks: BlockRefs::Blocks(vec![]),
        symlink: vec![],
        perm: 0o755,
        mtime: 1,
        xattrs: None,
    };
    let moved = PathVersion { path: b"notes/n.md".to_vec(), ..v.clone() };
    // Blocks must be present first.
    let blocks = block_hashes(&src.store, &v);
    for hash in blocks.iter().flatten() {
        let data = src.store.block(hash).unwrap();
        dst.store.put_verified_block(hash, &data).unwrap();
    }
    assert!(dst.store.put_verified_block(&blocks[0].unwrap(), b"wrong").is_err());
    // Sent as a list of blocks (a small file), not as pages.
    let moved = PathVersion { blocks: BlockRefs::Blocks(blocks), ..moved };
    dst.store.install_versions(&[dir.clone(), moved.clone()], &[], t(2)).unwrap();
    let node = dst.store.resolve(b"notes/n.md").unwrap();
    assert_eq!(dst.store.read(node.ino, 0, 200_000).unwrap(), vec![5u8; 100_000]);
    let got = entry(&dst.store, "notes/n.md").unwrap();
    assert_eq!((got.vv.clone(), got.dot), (moved.vv.clone(), moved.dot));
    assert_eq!(BlockRefs::Blocks(block_hashes(&dst.store, &got)), moved.blocks);
    assert_eq!(dst.store.versions(node.file_id).unwrap().len(), 1, "a remote version is history too");
    // A file open for writing, or written and not committed, is not
    // replaced: nothing of the batch is installed and the path is reported.
    let gone = PathVersion { deleted: true, size: 0, blocks: BlockRefs::Blocks(vec![]), ..got };
    dst.store.writer_opened(node.ino);
    assert_eq!(
        dst.store.install_versions(std::slice::from_ref(&gone), &[], t(3)).unwrap(),
        InstallResult::Busy(vec![b"notes/n.md".to_vec()])
    );
    dst.store.write(node.ino, 0, b"local", t(3)).unwrap();
    dst.store.writer_closed(node.ino);
    assert_eq!(
        dst.store.install_versions(std::slice::from_ref(&gone), &[], t(3)).unwrap(),
        InstallResult::Busy(vec![b"notes/n.md".to_vec()])
    );
    assert_eq!(dst.store.read(node.ino, 0, 5).unwrap(), b"local");
    let decided_on = vec![(b"notes/n.md".to_vec(), Some(gone.vv.clone()))];
    dst.store.commit(node.ino, t(3), false).unwrap();
    // Decided against the version before that commit (a writer's close
    // committed in between): refused, the local content stays.
    assert_eq!(
        dst.store.install_versions(std::slice::from_ref(&gone), &decided_on, t(3)).unwrap(),
        InstallResult::Moved(vec![b"notes/n.md".to_vec()])
    );
    assert_eq!(dst.store.read(node.ino, 0, 5).unwrap(), b"local");
    // A remote delete decided against the current version removes the
    // file; the entry remembers it.
    let current = vec![(b"notes/n.md".to_vec(), Some(entry(&dst.store, "notes/n.md").unwrap().vv))];
    assert_eq!(dst.store.install_versions(&[gone], &current, t(3)).unwrap(), InstallResult::Installed);
    assert!(matches!(dst.store.resolve(b"notes/n.md"), Err(StoreError::NotFound)));
    assert!(entry(&dst.store, "notes/n.md").unwrap().deleted);
    assert_clean(&dst.store);
}

#[test]
fn remote_versions_are_validated_like_local_ones() {
    let f = fixture();
    let mut vv = psync_base::VersionVector::new();
    vv.set(DeviceId([9; 32]), 1);
    let bad_link = PathVersion {
        path: b"link".to_vec(),
        kind: NodeKind::Symlink,
        deleted: false,
        vv,
        dot: (DeviceId([9; 32]), 1),
        size: 0,
        blocks: BlockRefs::Blocks(vec![]),
        symlink: b"a\0b".to_vec(),
        perm: 0o777,
        mtime: 1,
        xattrs: None,
    };
    assert!(matches!(f.store.install_versions(&[bad_link], &[], t(1)), Err(StoreError::Invalid(_))));
    assert!(matches!(f.store.resolve(b"link"), Err(StoreError::NotFound)), "nothing half-applied");
    assert_clean(&f.store);
}

fn block_hashes(s: &Store, v: &PathVersion) -> Vec<Option<psync_base::ContentHash>> {
    match &v.blocks {
        BlockRefs::Blocks(list) => list.clone(),
        BlockRefs::Pages(pages) => s.block_list(&Content { size: v.size, pages: pages.clone() }).unwrap(),
    }
}

fn peer_version(path: &str, kind: NodeKind, deleted: bool) -> PathVersion {
    let mut vv = psync_base::VersionVector::new();
    vv.set(DeviceId([9; 32]), 50);
    PathVersion {
        path: path.as_bytes().to_vec(),
        kind,
        deleted,
        vv,
        dot: (DeviceId([9; 32]), 50),
        size: 0,
        blocks: BlockRefs::Blocks(vec![]),
        symlink: vec![],
        perm: 0o755,
        mtime: 1,
        xattrs: None,
    }
}

/// Local things that do not sync (a FIFO, a socket, an editor's swap file
/// not yet saved) are never removed or replaced for a peer: an install
/// that would is refused whole, for that path only, with the reason; a
/// peer's delete of a folder that holds them keeps the folder and them.
#[test]
fn local_files_that_do_not_sync_are_never_removed_for_a_peer() {
    let f = fixture();
    let s = &f.store;
    let drafts = mkdir(s, ROOT_INO, "drafts");
    s.create(drafts.ino, b"pipe", NewNode::Special(NodeKind::Fifo, 0), NodeAttrs::perm(0o644), t(1)).unwrap();
    let current = vec![(b"drafts".to_vec(), Some(entry(s, "drafts").unwrap().vv))];
    let delete_dir = peer_version("drafts", NodeKind::Dir, true);
    match s.install_versions(&[delete_dir], &current, t(2)).unwrap() {
        InstallResult::Blocked { path, reason } => {
            assert_eq!(path, b"drafts");
            assert!(reason.contains("pipe"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(s.lookup(drafts.ino, b"pipe").is_ok() && !entry(s, "drafts").unwrap().deleted, "nothing changed");
    // A peer's file where a local FIFO stands: refused, the FIFO stays.
    let file_there = peer_version("drafts/pipe", NodeKind::File, false);
    assert!(matches!(s.install_versions(&[file_there], &[], t(2)).unwrap(), InstallResult::Blocked { .. }));
    assert_eq!(s.lookup(drafts.ino, b"pipe").unwrap().kind, NodeKind::Fifo);
    // A peer's delete of a name that, here, is only a local FIFO: recorded,
    // and the FIFO stays.
    let delete_name = peer_version("drafts/pipe", NodeKind::File, true);
    assert_eq!(s.install_versions(&[delete_name], &[], t(2)).unwrap(), InstallResult::Installed);
    assert_eq!(s.lookup(drafts.ino, b"pipe").unwrap().kind, NodeKind::Fifo);
    assert_clean(s);
}

/// A name in NFD (as macOS writes it) does not sync; a peer's file whose
/// name is the same text in NFC is refused rather than becoming a second,
/// identical-looking file beside it.
#[test]
fn names_not_in_nfc_stay_local_and_never_get_a_twin() {
    let f = fixture();
    let s = &f.store;
    let nfd = "re\u{301}sume\u{301}.md";
    let local = file(s, ROOT_INO, nfd);
    s.write(local.ino, 0, b"mine", t(1)).unwrap();
    s.commit(local.ino, t(1), false).unwrap();
    assert!(s.path_versions(false).unwrap().is_empty(), "not in the sync index");
    let listed = s.local_only_paths(10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, nfd.as_bytes());
    assert!(listed[0].reason.contains("NFC"), "{}", listed[0].reason);
    let twin = peer_version("résumé.md", NodeKind::Dir, false);
    assert!(matches!(s.install_versions(&[twin], &[], t(2)).unwrap(), InstallResult::Blocked { .. }));
    assert!(s.lookup(ROOT_INO, "résumé.md".as_bytes()).is_err(), "no second file");
    // Renamed to NFC, it syncs and is no longer listed.
    s.rename(ROOT_INO, nfd.as_bytes(), ROOT_INO, "résumé.md".as_bytes(), RenameMode::Replace, t(3)).unwrap();
    assert!(s.local_only_paths(10).unwrap().is_empty());
    assert!(entry(s, "résumé.md").is_some_and(|e| !e.deleted));
    assert_clean(s);
}

/// A large file's version travels as pages of block hashes: installing it
/// needs the pages and blocks stored, and gives the same content.
#[test]
fn large_versions_install_from_pages() {
    let src = fixture();
    let data: Vec<u8> = (0..300u32).flat_map(|i| vec![(i % 251) as u8 + 1; 65_536]).collect();
    let a = file(&src.store, ROOT_INO, "big.bin");
    src.store.write(a.ino, 0, &data, t(1)).unwrap();
    src.store.commit(a.ino, t(1), false).unwrap();
    let v = entry(&src.store, "big.bin").unwrap();
    let BlockRefs::Pages(pages) = v.blocks.clone() else { panic!("a stored version names its pages") };
    assert_eq!(pages.len(), 2);
    let dst = fixture();
    assert!(dst.store.install_versions(std::slice::from_ref(&v), &[], t(2)).is_err(), "pages missing");
    for page in pages.iter().flatten() {
        let bytes = src.store.page_bytes(page).unwrap().unwrap();
        assert!(dst.store.put_verified_page(page, b"not a page").is_err());
        dst.store.put_verified_page(page, &bytes).unwrap();
    }
    assert!(dst.store.install_versions(std::slice::from_ref(&v), &[], t(2)).is_err(), "blocks missing");
    for hash in block_hashes(&src.store, &v).iter().flatten() {
        dst.store.put_verified_block(hash, &src.store.block(hash).unwrap()).unwrap();
    }
    assert_eq!(dst.store.install_versions(std::slice::from_ref(&v), &[], t(2)).unwrap(), InstallResult::Installed);
    let node = dst.store.resolve(b"big.bin").unwrap();
    assert!(dst.store.read(node.ino, 0, data.len() as u32).unwrap() == data);
    assert_clean(&dst.store);
}

#[test]
fn opening_a_format_2_store_removes_its_dead_change_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open_or_create(dir.path(), device()).unwrap();
        let a = file(&s, ROOT_INO, "a");
        s.write(a.ino, 0, b"kept", t(2)).unwrap();
        s.commit(a.ino, t(2), true).unwrap();
        s.debug_make_format_2_change_log(500).unwrap();
        let report = s.fsck().unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains("old change log")),
            "fsck notices the old keys: {:?}",
            report.problems
        );
    }
    let s = Store::open(dir.path()).unwrap();
    assert_clean(&s);
    assert_eq!(s.read(s.resolve(b"a").unwrap().ino, 0, 10).unwrap(), b"kept", "nothing else is touched");
    assert_eq!(s.path_versions(false).unwrap().len(), 1);
    drop(s);
    let s = Store::open_read_only(dir.path()).unwrap();
    assert_clean(&s);
}

#[test]
fn saves_leave_no_growing_log() {
    // Editors save by writing a temporary file and renaming it over the
    // note: each save must leave the key count where it was (history aside).
    let f = fixture();
    let s = &f.store;
    let count_keys = |s: &Store| s.stats().unwrap();
    for round in 0..50u8 {
        let tmp = file(s, ROOT_INO, "note.md.tmp");
        s.write(tmp.ino, 0, &[round; 10], t(2)).unwrap();
        s.commit(tmp.ino, t(2), false).unwrap();
        s.rename(ROOT_INO, b"note.md.tmp", ROOT_INO, b"note.md", RenameMode::Replace, t(2)).unwrap();
    }
    let stats = count_keys(s);
    assert_eq!(stats.files, 1);
    assert_eq!(stats.tombstones, 1, "one deleted path (the temporary name) is kept for peers, not one per save");
    assert_eq!(s.path_versions_since(0, 1000).unwrap().len(), 2, "the index holds note.md and the temporary name");
    assert_clean(s);
}

#[test]
fn restore_is_one_transaction_that_reuses_the_old_pages() {
    let f = fixture();
    let s = &f.store;
    let a = file(s, ROOT_INO, "a");
    let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    s.write(a.ino, 0, &old, t(2)).unwrap();
    let v1 = s.commit(a.ino, t(2), false).unwrap().unwrap();
    s.truncate(a.ino, 10, t(3)).unwrap();
    s.write(a.ino, 0, b"new", t(3)).unwrap();
    s.commit(a.ino, t(3), false).unwrap().unwrap();
    let before = s.stats().unwrap();
    let v3 = s.restore(a.ino, v1, t(4)).unwrap().expect("a new version");
    let node = s.inode(a.ino).unwrap();
    assert_eq!((node.committed_seq, node.dirty, node.size()), (v3, false, old.len() as u64));
    assert_eq!(s.read(a.ino, 0, old.len() as u32).unwrap(), old);
    let after = s.stats().unwrap();
    assert_eq!(after.blocks, before.blocks, "no block is written again");
    assert_eq!(after.versions, before.versions + 1);
    assert_eq!(s.versions(a.file_id).unwrap()[0].content, node.content, "the old pages are reused");
    assert_eq!(s.restore(a.ino, v3, t(5)).unwrap(), None, "restoring the current content makes no version");
    assert!(matches!(s.restore(a.ino, 999_999, t(5)), Err(StoreError::NotFound)));
    assert_clean(s);
}
