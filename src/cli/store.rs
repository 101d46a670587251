//! `psync store ...`, `fsck`, `gc`, `stats`: the store without a mount.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use psync_base::DeviceId;
use psync_store::{GcPolicy, NewNode, NodeAttrs, NodeKind, SetAttr, Store, Timestamp, ROOT_INO};

use super::{data_dir, exit, open_existing, open_for_reading, Global, StoreCommand};
use psync_fs::beneath;

/// `psync fsck`: exits with [`exit::DAMAGED`] when the store is inconsistent.
pub fn fsck(global: &Global, json: bool) -> Result<ExitCode> {
    let store = open_for_reading(global)?;
    let report = store.fsck()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        println!(
            "checked {} inodes, {} entries, {} versions, {} tombstones; verified {} blocks ({} bytes)",
            report.inodes,
            report.dirents,
            report.versions,
            report.tombstones,
            report.blocks_verified,
            report.bytes_verified
        );
        if report.unreferenced_blocks + report.unreferenced_pages > 0 {
            println!(
                "{} unreferenced blocks and {} pages can be reclaimed with `psync gc`",
                report.unreferenced_blocks, report.unreferenced_pages
            );
        }
        println!("{}", if report.is_clean() { "store is consistent" } else { "STORE IS INCONSISTENT" });
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(exit::DAMAGED) })
}

/// `psync gc`.
pub fn gc(global: &Global, keep_versions: usize, keep_days: i64, json: bool) -> Result<ExitCode> {
    let store = open_existing(global)?;
    let policy = GcPolicy { keep_versions, keep_for_secs: keep_days.saturating_mul(86_400), keep_for_merges: true };
    let report = store.gc(policy, Timestamp::now())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "removed {} old versions, {} pages, {} blocks ({} bytes)",
            report.versions_removed, report.pages_removed, report.blocks_removed, report.block_bytes_freed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `psync stats`.
pub fn stats(global: &Global, json: bool) -> Result<ExitCode> {
    let store = open_for_reading(global)?;
    let s = store.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("device:        {}", store.device());
        println!("files:         {} ({} bytes)", s.files, s.logical_bytes);
        println!("directories:   {}", s.dirs);
        println!("symlinks:      {}", s.symlinks);
        println!("blocks:        {} ({} bytes, deduplicated)", s.blocks, s.block_bytes);
        println!("versions:      {}", s.versions);
        println!("tombstones:    {}", s.tombstones);
        println!("sequence:      {}", s.seq);
    }
    Ok(ExitCode::SUCCESS)
}

/// `psync store ...`.
pub fn run(global: &Global, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Import { source } => import(global, &source),
        StoreCommand::Export { dest } => export(global, &dest),
        StoreCommand::Ls { path } => ls(global, &path),
        StoreCommand::Cat { path } => cat(global, &path),
        StoreCommand::Log { path, json } => super::history::log_offline(global, &path, json),
        StoreCommand::Restore { path, version } => super::history::restore_offline(global, &path, version),
    }
}

/// `psync store import DIR`.
fn import(global: &Global, source: &Path) -> Result<()> {
    let dir = data_dir(global)?;
    let count = import_into(&dir, source, false)?;
    println!(
        "imported {} files ({} new versions), {} directories, {} symlinks from {}",
        count.files,
        count.versions,
        count.dirs,
        count.symlinks,
        source.display()
    );
    Ok(())
}

/// Imports `source` into the data dir's store (made with the device's
/// identity when it has one); `only_into_empty` refuses a store that holds
/// anything already.
pub(crate) fn import_into(dir: &Path, source: &Path, only_into_empty: bool) -> Result<ImportCount> {
    crate::data_dir::prepare(dir)?;
    // A device of a group is known by its key; one without a group
    // gets a random id.
    let device = match crate::identity::sync_setup(dir)? {
        Some(setup) => setup.key.public().device_id(),
        None => DeviceId(rand::random()),
    };
    let store = Store::open_or_create(dir, device)?;
    if only_into_empty && !store.read_dir(ROOT_INO, None, 1)?.is_empty() {
        bail!("the store in {} already holds files: adopt a folder into a fresh data dir", dir.display());
    }
    let mut count = ImportCount::default();
    import_dir(&store, source, ROOT_INO, &mut count)?;
    store.sync()?;
    Ok(count)
}

/// `psync store export DIR`.
fn export(global: &Global, dest: &Path) -> Result<()> {
    let store = open_for_reading(global)?;
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let root = beneath::open_root(dest).with_context(|| format!("cannot open {}", dest.display()))?;
    let n = export_dir(&store, ROOT_INO, &root, dest)?;
    println!("exported {n} entries to {}", dest.display());
    Ok(())
}

/// `psync store ls [PATH]`.
fn ls(global: &Global, path: &str) -> Result<()> {
    let store = open_for_reading(global)?;
    let dir = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let entries = store.read_dir(dir.ino, after.as_deref(), 256)?;
        let Some((last, _)) = entries.last() else { break };
        after = Some(last.clone());
        for (name, entry) in &entries {
            let node = store.inode(entry.ino)?;
            let kind = match node.kind {
                NodeKind::File => '-',
                NodeKind::Dir => 'd',
                NodeKind::Symlink => 'l',
                NodeKind::Fifo => 'p',
                NodeKind::Socket => 's',
                NodeKind::CharDevice => 'c',
                NodeKind::BlockDevice => 'b',
            };
            println!("{kind}{:04o} {:>10} {}", node.perm, node.size(), String::from_utf8_lossy(name));
        }
    }
    Ok(())
}

/// `psync store cat PATH`.
fn cat(global: &Global, path: &str) -> Result<()> {
    let store = open_for_reading(global)?;
    let node = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
    let mut out = std::io::stdout().lock();
    let mut offset = 0;
    while offset < node.size() {
        let chunk = store.read(node.ino, offset, (1 << 20) as u32)?;
        if chunk.is_empty() {
            break;
        }
        out.write_all(&chunk)?;
        offset += chunk.len() as u64;
    }
    out.flush()?;
    Ok(())
}

/// What an import brought in.
#[derive(Default, Debug)]
pub(crate) struct ImportCount {
    pub files: u64,
    pub versions: u64,
    pub dirs: u64,
    pub symlinks: u64,
}

fn name_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().to_vec()
}

fn import_dir(store: &Store, source: &Path, parent: u64, count: &mut ImportCount) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut entries: Vec<_> = std::fs::read_dir(source)
        .with_context(|| format!("cannot read {}", source.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = name_bytes(&entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let perm = meta.permissions().mode() & 0o7777;
        let now = Timestamp::now();
        let existing = match store.lookup(parent, &name) {
            Ok(node) => Some(node),
            Err(psync_store::StoreError::NotFound) => None,
            Err(e) => return Err(e).with_context(|| format!("looking up {}", path.display())),
        };
        let ctx = || format!("importing {}", path.display());
        if meta.is_dir() {
            let dir = match existing {
                Some(node) if node.kind == NodeKind::Dir => node,
                Some(_) => bail!("{}: a non-directory of that name is already in the store", path.display()),
                None => {
                    count.dirs += 1;
                    store
                        .create(parent, &name, NewNode::Dir, NodeAttrs { perm, uid: meta.uid(), gid: meta.gid() }, now)
                        .with_context(ctx)?
                }
            };
            import_dir(store, &path, dir.ino, count)?;
        } else if meta.file_type().is_symlink() {
            if existing.is_none() {
                let target = std::fs::read_link(&path)?;
                store
                    .create(
                        parent,
                        &name,
                        NewNode::Symlink(&name_bytes(target.as_os_str())),
                        NodeAttrs { perm: 0o777, uid: meta.uid(), gid: meta.gid() },
                        now,
                    )
                    .with_context(ctx)?;
                count.symlinks += 1;
            }
        } else if meta.is_file() {
            let node = match existing {
                Some(node) if node.kind == NodeKind::File => node,
                Some(_) => bail!("{}: a non-file of that name is already in the store", path.display()),
                None => store
                    .create(parent, &name, NewNode::File, NodeAttrs { perm, uid: meta.uid(), gid: meta.gid() }, now)
                    .with_context(ctx)?,
            };
            count.files += 1;
            if copy_in(store, node.ino, &path, now).with_context(ctx)? {
                // The file keeps its own modification time, not the import's.
                let mtime = Timestamp { secs: meta.mtime(), nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32 };
                store
                    .set_attr(node.ino, &SetAttr { mtime: Some(mtime), ..SetAttr::default() }, now)
                    .with_context(ctx)?;
                if store.commit(node.ino, now, false)?.is_some() {
                    count.versions += 1;
                }
            }
        }
    }
    Ok(())
}

/// Copies `path` into file `ino` in 1 MiB pieces (memory stays bounded);
/// returns whether anything changed.
fn copy_in(store: &Store, ino: u64, path: &Path, now: Timestamp) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    // The entry was seen as a regular file: never follow a symlink put in
    // its place since, nor wait on a FIFO.
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let mut changed = false;
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        let current = store.read(ino, offset, n as u32)?;
        if current != buf[..n] {
            store.write(ino, offset, &buf[..n], now)?;
            changed = true;
        }
        offset += n as u64;
    }
    if store.inode(ino)?.content.size != offset {
        store.truncate(ino, offset, now)?;
        changed = true;
    }
    // A new empty file is a change too (its first version).
    Ok(changed || store.inode(ino)?.dirty)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Writes the tree under `dir` into the directory `dest` (shown as
/// `shown`). Nothing outside `dest` is touched: every entry is made
/// relative to its parent's descriptor and no symlink in `dest` is
/// followed (one where a file goes is replaced, one where a folder goes is
/// an error).
fn export_dir(store: &Store, dir: u64, dest: &std::os::fd::OwnedFd, shown: &Path) -> Result<u64> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fchmod, mkdirat, Mode, SFlag};
    use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
    use std::os::unix::ffi::OsStrExt;
    let mut n = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let entries = store.read_dir(dir, after.as_deref(), 256)?;
        let Some((last, _)) = entries.last() else { break };
        after = Some(last.clone());
        for (name, entry) in entries {
            let name = std::ffi::OsStr::from_bytes(&name);
            let target = shown.join(name);
            let node = store.inode(entry.ino)?;
            let existing = beneath::kind_at(dest, name).with_context(|| format!("{}", target.display()))?;
            let in_the_way = |what: &str| anyhow::anyhow!("{}: {what} is in the way; not replaced", target.display());
            match node.kind {
                NodeKind::Dir => {
                    match existing {
                        None => mkdirat(dest, name, Mode::from_bits_truncate(0o755))
                            .with_context(|| format!("cannot create {}", target.display()))?,
                        Some(SFlag::S_IFDIR) => {}
                        Some(_) => return Err(in_the_way("something other than a folder")),
                    }
                    let child = beneath::child_dir(dest, name).with_context(|| format!("{}", target.display()))?;
                    n += export_dir(store, node.ino, &child, &target)?;
                }
                // Local-only nodes (FIFOs, sockets, devices) are not exported.
                NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice => continue,
                NodeKind::Symlink | NodeKind::File => {
                    match existing {
                        Some(SFlag::S_IFDIR) => return Err(in_the_way("a folder")),
                        // Replaced, never written through.
                        Some(SFlag::S_IFLNK) => unlinkat(dest, name, UnlinkatFlags::NoRemoveDir)
                            .with_context(|| format!("cannot replace {}", target.display()))?,
                        _ => {}
                    }
                    if node.kind == NodeKind::Symlink {
                        if existing.is_some_and(|k| k != SFlag::S_IFLNK) {
                            unlinkat(dest, name, UnlinkatFlags::NoRemoveDir)
                                .with_context(|| format!("cannot replace {}", target.display()))?;
                        }
                        symlinkat(node.symlink.as_slice(), dest, name)
                            .with_context(|| format!("cannot create {}", target.display()))?;
                    } else {
                        let flags = OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_TRUNC
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_NONBLOCK
                            | OFlag::O_CLOEXEC;
                        let fd = openat(dest, name, flags, Mode::from_bits_truncate(0o600))
                            .with_context(|| format!("cannot write {}", target.display()))?;
                        let stat = nix::sys::stat::fstat(&fd)?;
                        if beneath::file_type(&stat) != SFlag::S_IFREG {
                            return Err(in_the_way("something other than a file"));
                        }
                        let mut out = std::fs::File::from(fd);
                        let mut offset = 0;
                        while offset < node.content.size {
                            let chunk = store.read(node.ino, offset, 1 << 20)?;
                            out.write_all(&chunk)?;
                            offset += chunk.len() as u64;
                        }
                        fchmod(&out, Mode::from_bits_truncate(node.perm & 0o7777))?;
                    }
                }
            }
            n += 1;
        }
    }
    Ok(n)
}
