//! `psync fsck`: walks the whole store and reports every inconsistency.

use std::collections::{HashMap, HashSet, VecDeque};

use psync_base::{codec, ContentHash};
use rocksdb::{Direction, IteratorMode};
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::keys;
use crate::records::*;
use crate::store::Store;

/// The outcome of an integrity check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Every inconsistency found; empty means the store is consistent.
    pub problems: Vec<String>,
    /// Inodes checked.
    pub inodes: u64,
    /// Directory entries checked.
    pub dirents: u64,
    /// History versions checked.
    pub versions: u64,
    /// Deleted paths the sync index keeps for peers, checked.
    pub tombstones: u64,
    /// Distinct blocks read and verified against their hash.
    pub blocks_verified: u64,
    /// Bytes of block data verified.
    pub bytes_verified: u64,
    /// Blocks stored but referenced by nothing (reclaimed by `psync gc`; not an error).
    pub unreferenced_blocks: u64,
    /// Pages stored but referenced by nothing (reclaimed by `psync gc`; not an error).
    pub unreferenced_pages: u64,
}

impl FsckReport {
    /// True if no inconsistency was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Checker<'a> {
    store: &'a Store,
    report: FsckReport,
    pages_ok: HashMap<ContentHash, bool>,
    blocks_ok: HashMap<ContentHash, bool>,
}

impl Checker<'_> {
    fn problem(&mut self, text: String) {
        self.report.problems.push(text);
    }

    fn decode_all<T: DeserializeOwned>(&mut self, tag: u8, what: &str) -> Result<Vec<(Box<[u8]>, T)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(&[tag])? {
            match codec::decode::<T>(&v) {
                Ok(value) => out.push((k, value)),
                Err(e) => self.problem(format!("{what} record {:?} does not decode: {e}", HexKey(&k))),
            }
        }
        Ok(out)
    }

    /// Verifies a content value's pages and blocks; `owner` names it in reports.
    fn check_content(&mut self, content: &Content, owner: &str) -> Result<()> {
        let blocks_needed = content.size.div_ceil(BLOCK_SIZE);
        if content.pages.len() as u64 > blocks_needed.div_ceil(BLOCKS_PER_PAGE) {
            self.problem(format!("{owner}: {} pages for {} bytes", content.pages.len(), content.size));
        }
        for (page_index, page_hash) in content.pages.iter().enumerate() {
            let Some(page_hash) = page_hash else { continue };
            if let Some(&ok) = self.pages_ok.get(page_hash) {
                if !ok {
                    self.problem(format!("{owner}: page {page_hash} is missing or corrupt"));
                }
                continue;
            }
            let page = match self.store.page(page_hash) {
                Ok(page) => page,
                Err(e) => {
                    self.pages_ok.insert(*page_hash, false);
                    self.problem(format!("{owner}: {e}"));
                    continue;
                }
            };
            self.pages_ok.insert(*page_hash, true);
            for (slot, block) in page.blocks.iter().enumerate() {
                let Some(block) = block else { continue };
                let index = page_index as u64 * BLOCKS_PER_PAGE + slot as u64;
                if index >= blocks_needed {
                    self.problem(format!("{owner}: block {index} lies past the end of the file"));
                }
                match self.blocks_ok.get(block) {
                    Some(true) => {}
                    Some(false) => self.problem(format!("{owner}: block {block} is missing or corrupt")),
                    None => {
                        let ok = match self.store.block(block) {
                            Ok(data) => {
                                self.report.blocks_verified += 1;
                                self.report.bytes_verified += data.len() as u64;
                                let start = index * BLOCK_SIZE;
                                if data.len() as u64 > BLOCK_SIZE || start + data.len() as u64 > content.size {
                                    self.problem(format!(
                                        "{owner}: block {index} holds bytes past the end of the file"
                                    ));
                                }
                                true
                            }
                            Err(e) => {
                                self.problem(format!("{owner}: {e}"));
                                false
                            }
                        };
                        self.blocks_ok.insert(*block, ok);
                    }
                }
            }
        }
        Ok(())
    }
}

struct HexKey<'a>(&'a [u8]);

impl std::fmt::Debug for HexKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Store {
    /// Checks every invariant in the key layout (see `keys.rs`) and verifies
    /// every referenced page and block against its hash.
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut c =
            Checker { store: self, report: FsckReport::default(), pages_ok: HashMap::new(), blocks_ok: HashMap::new() };
        let counters = c.header();
        let mut seen = Seen::default();
        c.inodes(&mut seen)?;
        c.dirents(&mut seen)?;
        c.inode_invariants(&mut seen)?;
        c.history(&mut seen)?;
        c.no_legacy_change_log()?;
        c.counters(counters, &seen);
        c.sync_index(counters, &mut seen)?;
        c.garbage()?;
        Ok(c.report)
    }
}

/// What the walk has seen so far.
#[derive(Default)]
struct Seen {
    inodes: HashMap<u64, Inode>,
    orphans: HashSet<u64>,
    children: HashMap<u64, Vec<u64>>,
    subdirs: HashMap<u64, u32>,
    dirents: HashSet<(u64, Vec<u8>)>,
    /// The largest sequence number in use.
    max_seq: u64,
}

impl Checker<'_> {
    /// The format and counters records.
    fn header(&mut self) -> Option<Counters> {
        let format: Option<FormatRecord> = self.store.get_record(keys::FORMAT).unwrap_or_else(|e| {
            self.problem(format!("format record: {e}"));
            None
        });
        if format.is_none() {
            self.problem("format record missing".into());
        }
        let counters: Option<Counters> = self.store.get_record(keys::COUNTERS).unwrap_or(None);
        if counters.is_none() {
            self.problem("counters record missing or undecodable".into());
        }
        counters
    }

    /// Every inode, and the unlinked-inode markers.
    fn inodes(&mut self, seen: &mut Seen) -> Result<()> {
        for (k, node) in self.decode_all::<Inode>(keys::TAG_INODE, "inode")? {
            if keys::u64_at(&k, 1) != Some(node.ino) {
                self.problem(format!("inode {} stored under the wrong key", node.ino));
            }
            seen.inodes.insert(node.ino, node);
        }
        self.report.inodes = seen.inodes.len() as u64;
        match seen.inodes.get(&ROOT_INO) {
            None => self.problem("root directory missing".into()),
            Some(root) if root.kind != NodeKind::Dir || !root.links.is_empty() => {
                self.problem("root is not a directory without links".into())
            }
            Some(_) => {}
        }
        seen.orphans =
            self.store.scan_prefix(&[keys::TAG_ORPHAN])?.iter().filter_map(|(k, _)| keys::u64_at(k, 1)).collect();
        Ok(())
    }

    /// Every directory entry against the inodes.
    fn dirents(&mut self, seen: &mut Seen) -> Result<()> {
        for (k, entry) in self.decode_all::<DirEntry>(keys::TAG_DIRENT, "directory entry")? {
            self.report.dirents += 1;
            let Some(parent) = keys::u64_at(&k, 1) else {
                self.problem("short directory entry key".into());
                continue;
            };
            let name = k[9..].to_vec();
            let shown = String::from_utf8_lossy(&name).into_owned();
            if let Err(e) = psync_base::validate_name(&name) {
                self.problem(format!("entry {shown:?} in directory {parent}: {e}"));
            }
            match seen.inodes.get(&parent) {
                Some(p) if p.kind == NodeKind::Dir => {}
                _ => self.problem(format!("entry {shown:?} is in {parent}, which is not a directory")),
            }
            match seen.inodes.get(&entry.ino) {
                None => {
                    self.problem(format!("entry {shown:?} in directory {parent} names missing inode {}", entry.ino))
                }
                Some(child) => {
                    if child.kind != entry.kind {
                        self.problem(format!("entry {shown:?} kind differs from inode {}", entry.ino));
                    }
                    if !child.links.iter().any(|l| l.parent == parent && l.name == name) {
                        self.problem(format!("inode {} lacks the link {parent}/{shown:?} that names it", entry.ino));
                    }
                    if child.kind == NodeKind::Dir {
                        *seen.subdirs.entry(parent).or_default() += 1;
                    }
                }
            }
            seen.children.entry(parent).or_default().push(entry.ino);
            seen.dirents.insert((parent, name));
        }
        Ok(())
    }

    /// Each inode against the entries: links, reachability, history, content.
    fn inode_invariants(&mut self, seen: &mut Seen) -> Result<()> {
        let mut reachable: HashSet<u64> = HashSet::new();
        let mut queue = VecDeque::from([ROOT_INO]);
        while let Some(ino) = queue.pop_front() {
            if reachable.insert(ino) {
                queue.extend(seen.children.get(&ino).into_iter().flatten().copied());
            }
        }
        let mut ids: HashMap<FileId, u64> = HashMap::new();
        let mut sorted: Vec<&Inode> = seen.inodes.values().collect();
        sorted.sort_by_key(|n| n.ino);
        for node in sorted {
            let ino = node.ino;
            seen.max_seq = seen.max_seq.max(node.seq).max(node.committed_seq);
            for link in &node.links {
                if !seen.dirents.contains(&(link.parent, link.name.clone())) {
                    self.problem(format!(
                        "inode {ino} has a link {}/{:?} with no directory entry",
                        link.parent,
                        String::from_utf8_lossy(&link.name)
                    ));
                }
            }
            if ino != ROOT_INO {
                if let Some(other) = ids.insert(node.file_id, ino) {
                    self.problem(format!("inodes {other} and {ino} share file id {}", node.file_id));
                }
            }
            if node.kind == NodeKind::Dir {
                if ino != ROOT_INO && node.links.len() != 1 {
                    self.problem(format!("directory {ino} has {} links", node.links.len()));
                }
                let counted = seen.subdirs.get(&ino).copied().unwrap_or(0);
                if node.subdirs != counted {
                    self.problem(format!("directory {ino} records {} subdirectories, has {counted}", node.subdirs));
                }
            }
            let orphan = seen.orphans.contains(&ino);
            if !reachable.contains(&ino) && !orphan {
                self.problem(format!("inode {ino} is not reachable from the root"));
            }
            if orphan && !node.links.is_empty() {
                self.problem(format!("inode {ino} is marked unlinked but has links"));
            }
            if node.committed_seq != 0
                && self.store.get_record::<FileVersion>(&keys::version(node.file_id, node.committed_seq))?.is_none()
            {
                self.problem(format!("inode {ino}: committed version {} missing from history", node.committed_seq));
            }
            if node.kind == NodeKind::File {
                self.check_content(&node.content, &format!("inode {ino}"))?;
            }
        }
        for ino in &seen.orphans {
            if !seen.inodes.contains_key(ino) {
                self.problem(format!("unlinked-inode marker for missing inode {ino}"));
            }
        }
        Ok(())
    }

    /// History: every version under its key, its content whole.
    fn history(&mut self, seen: &mut Seen) -> Result<()> {
        for (k, version) in self.decode_all::<FileVersion>(keys::TAG_VERSION, "version")? {
            self.report.versions += 1;
            seen.max_seq = seen.max_seq.max(version.seq);
            if keys::u128_at(&k, 1) != Some(version.file_id.0) || keys::u64_at(&k, 17) != Some(version.seq) {
                self.problem(format!("version {} of {} stored under the wrong key", version.seq, version.file_id));
            }
            self.check_content(&version.content, &format!("version {} of file {}", version.seq, version.file_id))?;
        }
        // A file that went names no file a linked inode holds (an open,
        // unlinked one is gone already).
        let live: std::collections::HashSet<FileId> =
            seen.inodes.values().filter(|n| !n.links.is_empty()).map(|n| n.file_id).collect();
        for (k, _) in self.store.scan_prefix(&[keys::TAG_XATTR])? {
            match keys::u64_at(&k, 1) {
                Some(ino) if seen.inodes.contains_key(&ino) => {}
                _ => self.problem(format!("an extended attribute of a missing inode: {:?}", HexKey(&k))),
            }
        }
        for (k, _) in self.decode_all::<Timestamp>(keys::TAG_GONE, "deletion time")? {
            match keys::gone_file(&k) {
                Some(id) if live.contains(&id) => self.problem(format!("file {id} is live but marked as gone")),
                Some(_) => {}
                None => self.problem(format!("a malformed deletion key {:?}", HexKey(&k))),
            }
        }
        Ok(())
    }

    /// Formats 1-2 kept an inode-level change log; the migration removes it.
    fn no_legacy_change_log(&mut self) -> Result<()> {
        let (from, to) = keys::LEGACY_CHANGE_LOG;
        if let Some(item) =
            self.store.db().iterator_cf(self.store.meta(), IteratorMode::From(from, Direction::Forward)).next()
        {
            let (k, _) = item.map_err(|e| self.store.rocks_err(e))?;
            if *k < *to {
                self.problem(format!("a key of the old change log is left: {:?}", HexKey(&k)));
            }
        }
        Ok(())
    }

    /// The allocation counters are above everything allocated.
    fn counters(&mut self, counters: Option<Counters>, seen: &Seen) {
        if let Some(counters) = counters {
            let max_ino = seen.inodes.keys().copied().max().unwrap_or(ROOT_INO);
            if counters.next_ino <= max_ino {
                self.problem(format!(
                    "next inode number {} is not above the largest inode {max_ino}",
                    counters.next_ino
                ));
            }
            if counters.next_seq <= seen.max_seq {
                self.problem(format!(
                    "next sequence number {} is not above the largest in use {}",
                    counters.next_seq, seen.max_seq
                ));
            }
        }
    }

    /// The sync index: every entry has its sequence key; live entries name
    /// existing nodes of their kind.
    fn sync_index(&mut self, counters: Option<Counters>, seen: &mut Seen) -> Result<()> {
        let mut index_seqs = HashSet::new();
        for (k, v) in self.store.scan_prefix(&[keys::TAG_PATH])? {
            let path = k[1..].to_vec();
            let shown = String::from_utf8_lossy(&path).into_owned();
            let entry: PathEntry = match codec::decode(&v) {
                Ok(e) => e,
                Err(e) => {
                    self.problem(format!("sync entry {shown:?} does not decode: {e}"));
                    continue;
                }
            };
            seen.max_seq = seen.max_seq.max(entry.seq);
            index_seqs.insert(entry.seq);
            if entry.deleted {
                self.report.tombstones += 1;
            }
            match self.store.db().get_pinned_cf(self.store.meta(), keys::path_seq(entry.seq)) {
                Ok(Some(p)) if *p == *path => {}
                _ => self.problem(format!("sync entry {shown:?}: sequence key {} missing or wrong", entry.seq)),
            }
            if !entry.deleted {
                match self.store.resolve(&path) {
                    Ok(node) if node.kind == entry.kind => {}
                    Ok(node) => self
                        .problem(format!("sync entry {shown:?} says {:?}, the tree has {:?}", entry.kind, node.kind)),
                    Err(_) => self.problem(format!("sync entry {shown:?} is live but the path does not exist")),
                }
            }
        }
        for (k, _) in self.store.scan_prefix(&[keys::TAG_PATH_SEQ])? {
            let seq = keys::u64_at(&k, 1).unwrap_or(0);
            if !index_seqs.contains(&seq) {
                self.problem(format!("sync sequence key {seq} points at no entry"));
            }
        }
        if let Some(counters) = counters {
            if counters.next_seq <= seen.max_seq {
                self.problem(format!(
                    "next sequence number {} is not above the sync index's {}",
                    counters.next_seq, seen.max_seq
                ));
            }
        }
        Ok(())
    }

    /// Garbage (not an error): pages and blocks nothing references.
    fn garbage(&mut self) -> Result<()> {
        for (k, _) in self.store.scan_prefix(&[keys::TAG_PAGE])? {
            if keys::hash_at(&k, 1).is_some_and(|h| !self.pages_ok.contains_key(&h)) {
                self.report.unreferenced_pages += 1;
            }
        }
        for item in self.store.db().iterator_cf(self.store.blocks_cf(), IteratorMode::From(&[], Direction::Forward)) {
            let (k, _) = item.map_err(|e| self.store.rocks_err(e))?;
            if keys::hash_at(&k, 0).is_some_and(|h| !self.blocks_ok.contains_key(&h)) {
                self.report.unreferenced_blocks += 1;
            }
        }
        Ok(())
    }
}
