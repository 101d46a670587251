//! POSIX semantics of the filesystem core, without mounting.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use psync_base::DeviceId;
use psync_fs::{Caller, FsCore, FsError, FsEvent, SetAttrRequest, TimeSet};
use psync_store::{NodeKind, Store, Timestamp, BLOCK_SIZE, ROOT_INO};

const USER: Caller = Caller { uid: 1000, gid: 1000, pid: 42 };

struct Fixture {
    _dir: tempfile::TempDir,
    fs: FsCore,
    events: Receiver<FsEvent>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_or_create(dir.path(), DeviceId([2; 32])).unwrap());
    let (tx, events) = channel();
    let fs = FsCore::new(store, Some(tx)).unwrap();
    Fixture { _dir: dir, fs, events }
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

fn new_file(fs: &FsCore, name: &str) -> (u64, u64) {
    let (node, fh) = fs.create(ROOT_INO, name.as_bytes(), 0o100644, 0o022, libc::O_RDWR, USER).unwrap();
    (node.ino, fh)
}

fn contents(fs: &FsCore, ino: u64) -> Vec<u8> {
    fs.read(ino, 0, u32::MAX).unwrap()
}

fn commits(events: &Receiver<FsEvent>) -> usize {
    events.try_iter().filter(|e| matches!(e, FsEvent::Committed { .. })).count()
}

#[test]
fn create_applies_umask_and_owner() {
    let f = fixture();
    let (node, fh) = f.fs.create(ROOT_INO, b"a", 0o100666, 0o027, libc::O_WRONLY, USER).unwrap();
    assert_eq!((node.perm, node.uid, node.gid), (0o640, 1000, 1000));
    assert_eq!(node.kind, NodeKind::File);
    f.fs.release(fh).unwrap();
    assert_eq!(errno(f.fs.create(ROOT_INO, b"a", 0o100644, 0, libc::O_WRONLY, USER)), libc::EEXIST);
}

#[test]
fn names_are_checked_like_the_kernel() {
    let f = fixture();
    let long = vec![b'n'; 256];
    assert_eq!(errno(f.fs.mkdir(ROOT_INO, &long, 0o755, 0, USER)), libc::ENAMETOOLONG);
    assert_eq!(errno(f.fs.lookup(ROOT_INO, &long)), libc::ENAMETOOLONG);
    assert_eq!(errno(f.fs.mkdir(ROOT_INO, b"a/b", 0o755, 0, USER)), libc::EINVAL);
    assert_eq!(errno(f.fs.mkdir(ROOT_INO, b"a\0b", 0o755, 0, USER)), libc::EINVAL);
    assert_eq!(errno(f.fs.lookup(ROOT_INO, b"missing")), libc::ENOENT);
    f.fs.mkdir(ROOT_INO, &long[..255], 0o755, 0, USER).unwrap();
}

#[test]
fn write_read_sparse_and_commit_on_release() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    assert_eq!(f.fs.write(ino, fh, 0, b"hello").unwrap(), 5);
    assert_eq!(f.fs.write(ino, fh, 3 * BLOCK_SIZE, b"far").unwrap(), 3);
    let data = contents(&f.fs, ino);
    assert_eq!(data.len() as u64, 3 * BLOCK_SIZE + 3);
    assert_eq!(&data[..5], b"hello");
    assert!(data[5..3 * BLOCK_SIZE as usize].iter().all(|&b| b == 0), "holes read as zeros");
    // close(2) of a descriptor does not commit; the last close (release) does.
    f.fs.flush(ino).unwrap();
    assert_eq!(commits(&f.events), 0);
    f.fs.release(fh).unwrap();
    assert_eq!(commits(&f.events), 1);
    assert_eq!(f.fs.store().versions(f.fs.getattr(ino).unwrap().file_id).unwrap().len(), 1);
    assert_eq!(errno(f.fs.release(fh)), libc::EBADF);
}

#[test]
fn fsync_commits_durably() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.write(ino, fh, 0, b"v1").unwrap();
    f.fs.fsync(ino).unwrap();
    assert_eq!(commits(&f.events), 1);
    f.fs.fsync(ino).unwrap();
    assert_eq!(commits(&f.events), 0, "nothing new, no new version");
    f.fs.release(fh).unwrap();
    assert_eq!(commits(&f.events), 0);
    f.fs.fsyncdir().unwrap();
}

#[test]
fn open_flags_trunc_append_and_access_mode() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "log");
    f.fs.write(ino, fh, 0, b"0123456789").unwrap();
    f.fs.release(fh).unwrap();
    let app = f.fs.open(ino, libc::O_WRONLY | libc::O_APPEND).unwrap();
    // The kernel's offset may be stale; O_APPEND writes at the real end.
    f.fs.write(ino, app, 0, b"AB").unwrap();
    assert_eq!(contents(&f.fs, ino), b"0123456789AB");
    let ro = f.fs.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(errno(f.fs.write(ino, ro, 0, b"x")), libc::EBADF);
    let req = SetAttrRequest { size: Some(0), fh: Some(ro), ..Default::default() };
    assert_eq!(errno(f.fs.setattr(ino, req)), libc::EBADF);
    // O_TRUNC with O_RDONLY does nothing (as on Linux filesystems).
    let ro_trunc = f.fs.open(ino, libc::O_RDONLY | libc::O_TRUNC).unwrap();
    assert_eq!(contents(&f.fs, ino).len(), 12);
    let trunc = f.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    assert_eq!(contents(&f.fs, ino), b"");
    for fh in [app, ro, ro_trunc, trunc] {
        f.fs.release(fh).unwrap();
    }
    let dir = f.fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).unwrap();
    assert_eq!(errno(f.fs.open(dir.ino, libc::O_RDONLY)), libc::EISDIR);
}

#[test]
fn unlinked_open_file_stays_readable_until_released() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.write(ino, fh, 0, b"still here").unwrap();
    f.fs.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(errno(f.fs.lookup(ROOT_INO, b"a")), libc::ENOENT);
    assert_eq!(contents(&f.fs, ino), b"still here");
    f.fs.write(ino, fh, 10, b"!").unwrap();
    assert_eq!(f.fs.getattr(ino).unwrap().nlink(), 0);
    f.fs.release(fh).unwrap();
    // Still referenced by the kernel (from create) until it forgets.
    assert_eq!(f.fs.getattr(ino).unwrap().nlink(), 0);
    f.fs.forget(ino, 1);
    assert_eq!(errno(f.fs.getattr(ino)), libc::ENOENT);
    let report = f.fs.store().fsck().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn setattr_chmod_chown_truncate_utimens() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.write(ino, fh, 0, &[7u8; 100_000]).unwrap();
    f.fs.release(fh).unwrap();
    let when = Timestamp { secs: 1_000_000_000, nanos: 5 };
    let req = SetAttrRequest {
        mode: Some(0o100600),
        uid: Some(7),
        gid: Some(8),
        size: Some(10),
        atime: Some(TimeSet::At(when)),
        mtime: Some(TimeSet::At(when)),
        fh: None,
    };
    let node = f.fs.setattr(ino, req).unwrap();
    assert_eq!((node.perm, node.uid, node.gid, node.content.size), (0o600, 7, 8, 10));
    assert_eq!((node.atime, node.mtime), (when, when));
    assert!(node.ctime > when, "ctime moves with every attribute change");
    assert_eq!(commits(&f.events), 2, "the close, then the path truncate, are committed");
    // UTIME_OMIT is a None: mtime stays.
    let node = f.fs.setattr(ino, SetAttrRequest { atime: Some(TimeSet::Now), ..Default::default() }).unwrap();
    assert_eq!(node.mtime, when);
    assert!(node.atime > when);
}

#[test]
fn mknod_of_every_kind() {
    let f = fixture();
    let node = f.fs.mknod(ROOT_INO, b"plain", libc::S_IFREG | 0o644, 0, 0, USER).unwrap();
    assert_eq!(node.kind, NodeKind::File);
    assert_eq!(f.fs.mknod(ROOT_INO, b"fifo", libc::S_IFIFO | 0o644, 0, 0, USER).unwrap().kind, NodeKind::Fifo);
    assert_eq!(f.fs.mknod(ROOT_INO, b"sock", libc::S_IFSOCK | 0o644, 0, 0, USER).unwrap().kind, NodeKind::Socket);
    let dev = f.fs.mknod(ROOT_INO, b"dev", libc::S_IFCHR | 0o644, 0, 0x0102, USER).unwrap();
    assert_eq!((dev.kind, dev.rdev), (NodeKind::CharDevice, 0x0102));
    assert_eq!(f.fs.mknod(ROOT_INO, b"blk", libc::S_IFBLK | 0o600, 0, 7, USER).unwrap().kind, NodeKind::BlockDevice);
    assert_eq!(errno(f.fs.open(dev.ino, libc::O_RDONLY)), libc::ENXIO);
    assert_eq!(errno(f.fs.mknod(ROOT_INO, b"dir", libc::S_IFDIR | 0o755, 0, 0, USER)), libc::EINVAL);
    assert!(f.fs.store().fsck().unwrap().is_clean());
    assert_eq!(f.fs.store().stats().unwrap().specials, 4);
}

#[test]
fn directories_and_nlink() {
    let f = fixture();
    let d = f.fs.mkdir(ROOT_INO, b"d", 0o755, 0o022, USER).unwrap();
    assert_eq!(d.nlink(), 2);
    f.fs.mkdir(d.ino, b"e", 0o755, 0, USER).unwrap();
    assert_eq!(f.fs.getattr(d.ino).unwrap().nlink(), 3);
    assert_eq!(errno(f.fs.rmdir(ROOT_INO, b"d")), libc::ENOTEMPTY);
    assert_eq!(errno(f.fs.unlink(ROOT_INO, b"d")), libc::EISDIR);
    f.fs.rmdir(d.ino, b"e").unwrap();
    f.fs.rmdir(ROOT_INO, b"d").unwrap();
    let (_, fh) = new_file(&f.fs, "file");
    f.fs.release(fh).unwrap();
    assert_eq!(errno(f.fs.rmdir(ROOT_INO, b"file")), libc::ENOTDIR);
}

#[test]
fn setgid_directories_pass_on_their_group() {
    let f = fixture();
    let d = f.fs.mkdir(ROOT_INO, b"shared", 0o2775, 0, Caller { uid: 1, gid: 500, pid: 1 }).unwrap();
    assert_eq!(d.perm & libc::S_ISGID, libc::S_ISGID);
    let sub = f.fs.mkdir(d.ino, b"sub", 0o755, 0, USER).unwrap();
    assert_eq!(sub.gid, 500);
    assert_eq!(sub.perm & libc::S_ISGID, libc::S_ISGID);
    let (file, fh) = f.fs.create(d.ino, b"f", 0o644, 0, libc::O_WRONLY, USER).unwrap();
    f.fs.release(fh).unwrap();
    assert_eq!((file.gid, file.perm & libc::S_ISGID), (500, 0));
}

#[test]
fn rename_flags() {
    let f = fixture();
    for name in ["a", "b"] {
        let (ino, fh) = new_file(&f.fs, name);
        f.fs.write(ino, fh, 0, name.as_bytes()).unwrap();
        f.fs.release(fh).unwrap();
    }
    let a = f.fs.lookup(ROOT_INO, b"a").unwrap().ino;
    let b = f.fs.lookup(ROOT_INO, b"b").unwrap().ino;
    assert_eq!(errno(f.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_NOREPLACE)), libc::EEXIST);
    f.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(f.fs.lookup(ROOT_INO, b"a").unwrap().ino, b);
    assert_eq!(errno(f.fs.rename(ROOT_INO, b"a", ROOT_INO, b"c", libc::RENAME_WHITEOUT)), libc::EINVAL);
    assert_eq!(errno(f.fs.rename(ROOT_INO, b"a", ROOT_INO, b"zz", libc::RENAME_EXCHANGE)), libc::ENOENT);
    // Atomic replace: the target's inode is gone, the source's number moves.
    f.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(f.fs.lookup(ROOT_INO, b"b").unwrap().ino, b);
    // `a` was referenced by create and one lookup; the kernel forgets both.
    f.fs.forget(a, 2);
    assert_eq!(errno(f.fs.getattr(a)), libc::ENOENT);
    let d = f.fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).unwrap();
    assert_eq!(errno(f.fs.rename(ROOT_INO, b"d", d.ino, b"inside", 0)), libc::EINVAL);
}

#[test]
fn symlinks_and_hard_links() {
    let f = fixture();
    let l = f.fs.symlink(ROOT_INO, b"l", b"target/../x", USER).unwrap();
    assert_eq!(f.fs.readlink(l.ino).unwrap(), b"target/../x");
    assert_eq!(l.perm, 0o777);
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.release(fh).unwrap();
    assert_eq!(errno(f.fs.readlink(ino)), libc::EINVAL);
    let linked = f.fs.link(ino, ROOT_INO, b"b").unwrap();
    assert_eq!(linked.nlink(), 2);
    let d = f.fs.mkdir(ROOT_INO, b"d", 0o755, 0, USER).unwrap();
    assert_eq!(errno(f.fs.link(d.ino, ROOT_INO, b"dl")), libc::EPERM);
    assert_eq!(errno(f.fs.symlink(ROOT_INO, b"long", &vec![b'x'; 5000], USER)), libc::ENAMETOOLONG);
}

#[test]
fn readdir_offsets_are_stable_under_changes() {
    let f = fixture();
    for i in 0..10 {
        let (_, fh) = new_file(&f.fs, &format!("f{i}"));
        f.fs.release(fh).unwrap();
    }
    let dh = f.fs.opendir(ROOT_INO).unwrap();
    let first: Vec<_> = f.fs.readdir(dh, 0).unwrap();
    assert_eq!(first.len(), 12);
    assert_eq!(first[0].name, b".");
    assert_eq!(first[1].name, b"..");
    // Entries removed after opendir do not shift the offsets.
    f.fs.unlink(ROOT_INO, b"f0").unwrap();
    let rest = f.fs.readdir(dh, 5).unwrap();
    assert_eq!(rest, first[5..].to_vec());
    f.fs.releasedir(dh);
    assert_eq!(errno(f.fs.readdir(dh, 0)), libc::EBADF);
}

#[test]
fn access_follows_mode_bits() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.release(fh).unwrap();
    f.fs.setattr(ino, SetAttrRequest { mode: Some(0o640), ..Default::default() }).unwrap();
    f.fs.access(ino, libc::R_OK | libc::W_OK, USER).unwrap();
    assert_eq!(errno(f.fs.access(ino, libc::X_OK, USER)), libc::EACCES);
    let group = Caller { uid: 2000, gid: 1000, pid: 1 };
    f.fs.access(ino, libc::R_OK, group).unwrap();
    assert_eq!(errno(f.fs.access(ino, libc::W_OK, group)), libc::EACCES);
    let other = Caller { uid: 3000, gid: 3000, pid: 1 };
    assert_eq!(errno(f.fs.access(ino, libc::R_OK, other)), libc::EACCES);
    f.fs.access(ino, libc::F_OK, other).unwrap();
    f.fs.access(ino, libc::R_OK | libc::W_OK, Caller::ROOT).unwrap();
    assert_eq!(errno(f.fs.access(ino, libc::X_OK, Caller::ROOT)), libc::EACCES);
}

#[test]
fn fallocate_and_statfs() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.fallocate(ino, 0, 1000, 0).unwrap();
    assert_eq!(f.fs.getattr(ino).unwrap().content.size, 1000);
    f.fs.fallocate(ino, 0, 5000, libc::FALLOC_FL_KEEP_SIZE).unwrap();
    assert_eq!(f.fs.getattr(ino).unwrap().content.size, 1000);
    assert_eq!(
        errno(f.fs.fallocate(ino, 0, 10, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)),
        libc::EOPNOTSUPP
    );
    f.fs.release(fh).unwrap();
    let stats = f.fs.statfs(&f.fs.data_dir()).unwrap();
    assert!(stats.blocks > 0 && stats.blocks_free <= stats.blocks);
    assert_eq!(stats.name_max, 255);
}

#[test]
fn files_left_dirty_are_committed_at_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let ino;
    {
        let store = Arc::new(Store::open_or_create(dir.path(), DeviceId([2; 32])).unwrap());
        let fs = FsCore::new(store, None).unwrap();
        let (node, fh) = fs.create(ROOT_INO, b"open", 0o644, 0, libc::O_WRONLY, USER).unwrap();
        ino = node.ino;
        fs.write(ino, fh, 0, b"unsaved but written").unwrap();
        // The daemon dies here: no release.
    }
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let fs = FsCore::new(store, None).unwrap();
    let node = fs.getattr(ino).unwrap();
    assert!(!node.dirty);
    let versions = fs.store().versions(node.file_id).unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(fs.store().read_content(&versions[0].content, 0, 100).unwrap(), b"unsaved but written");
}

#[test]
fn an_inode_the_kernel_references_outlives_its_last_link() {
    let f = fixture();
    let (ino, fh) = new_file(&f.fs, "a");
    f.fs.write(ino, fh, 0, b"old").unwrap();
    f.fs.release(fh).unwrap();
    // The kernel looked the name up (one reference), then it is replaced.
    assert_eq!(f.fs.lookup(ROOT_INO, b"a").unwrap().ino, ino);
    let (new, fh2) = new_file(&f.fs, "a.tmp");
    f.fs.release(fh2).unwrap();
    f.fs.rename(ROOT_INO, b"a.tmp", ROOT_INO, b"a", 0).unwrap();
    // An open through the old reference still works, with the old content.
    let fh = f.fs.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(contents(&f.fs, ino), b"old");
    f.fs.release(fh).unwrap();
    assert!(f.fs.store().fsck().unwrap().is_clean());
    // Once the kernel forgets it (create and lookup: two references), it is gone.
    f.fs.forget(ino, 1);
    assert!(f.fs.getattr(ino).is_ok(), "one reference left");
    f.fs.forget(ino, 1);
    assert_eq!(errno(f.fs.getattr(ino)), libc::ENOENT);
    assert_eq!(f.fs.lookup(ROOT_INO, b"a").unwrap().ino, new);
    assert!(f.fs.store().fsck().unwrap().is_clean());
}
