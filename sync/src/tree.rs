//! The anti-entropy hash tree, kept up to date incrementally: it follows
//! the storage's sequence numbers, so each refresh costs what changed since
//! the last one, never a scan of every record. Its hashes are those of
//! [`crate::merkle::Tree::build`] over the same records (a test checks it).

use std::collections::BTreeMap;

use psync_base::ContentHash;

use crate::ignore::IgnoreRules;
use crate::message::TreeEntry;
use crate::path::SyncPath;
use crate::record::RecordKind;
use crate::storage::{follow_changes, StorageError, SyncStorage};

#[derive(Debug, Default)]
struct Node {
    /// Digest of the record at this path, if it is live.
    own: Option<ContentHash>,
    children: BTreeMap<String, Node>,
    /// This subtree's hash; `None` when something below changed.
    hash: Option<ContentHash>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.own.is_none() && self.children.is_empty()
    }

    fn hash(&mut self) -> ContentHash {
        if let Some(hash) = self.hash {
            return hash;
        }
        let mut buf = Vec::with_capacity(32 + self.children.len() * 48);
        buf.extend_from_slice(self.own.map_or([0u8; 32], |h| h.0).as_slice());
        for (name, child) in self.children.iter_mut() {
            buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(child.hash().as_bytes());
        }
        let hash = ContentHash::of(&buf);
        self.hash = Some(hash);
        hash
    }

    /// Sets (or clears) the digest at `parts` below this node; prunes empty nodes.
    fn set(&mut self, parts: &[&str], digest: Option<ContentHash>) {
        self.hash = None;
        let Some((first, rest)) = parts.split_first() else {
            self.own = digest;
            return;
        };
        if digest.is_none() && !self.children.contains_key(*first) {
            return;
        }
        let child = self.children.entry((*first).to_string()).or_default();
        child.set(rest, digest);
        if child.is_empty() {
            self.children.remove(*first);
        }
    }

    fn find(&mut self, parts: &[&str]) -> Option<&mut Node> {
        match parts.split_first() {
            None => Some(self),
            Some((first, rest)) => self.children.get_mut(*first)?.find(rest),
        }
    }

    fn collect_live(&self, path: &str, out: &mut Vec<String>) {
        if self.own.is_some() && !path.is_empty() {
            out.push(path.to_string());
        }
        for (name, child) in &self.children {
            let below = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
            child.collect_live(&below, out);
        }
    }
}

fn parts(path: &SyncPath) -> Vec<&str> {
    path.as_str().split('/').collect()
}

/// The live records' hash tree, shaped like the directory tree.
#[derive(Debug, Default)]
pub(crate) struct LiveTree {
    /// Storage changes up to this sequence number are in the tree.
    at_seq: u64,
    top: Node,
}

impl LiveTree {
    /// Takes in every change the storage made since the last refresh.
    pub(crate) fn refresh<S: SyncStorage>(&mut self, storage: &S, ignore: &IgnoreRules) -> Result<(), StorageError> {
        let top = &mut self.top;
        follow_changes(storage, &mut self.at_seq, |record| {
            let ignored = ignore.is_ignored(&record.path, record.kind == RecordKind::Dir);
            let digest = (!record.deleted && !ignored).then(|| record.digest());
            top.set(&parts(&record.path), digest);
        })
    }

    /// The hash of the whole tree.
    pub(crate) fn root(&mut self) -> ContentHash {
        self.top.hash()
    }

    /// The children of `prefix` (`None`: the top level), sorted by name.
    pub(crate) fn children(&mut self, prefix: Option<&SyncPath>) -> Vec<TreeEntry> {
        let node = match prefix {
            None => Some(&mut self.top),
            Some(p) => self.top.find(&parts(p)),
        };
        let Some(node) = node else { return Vec::new() };
        node.children
            .iter_mut()
            .map(|(name, child)| TreeEntry {
                name: name.clone(),
                hash: child.hash(),
                has_children: !child.children.is_empty(),
            })
            .collect()
    }

    /// Every live path at or below `path`.
    pub(crate) fn live_within(&mut self, path: &SyncPath) -> Vec<SyncPath> {
        let mut out = Vec::new();
        if let Some(node) = self.top.find(&parts(path)) {
            node.collect_live(path.as_str(), &mut out);
        }
        out.into_iter().filter_map(|p| SyncPath::new(&p).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::Tree;
    use crate::storage::MemStorage;
    use psync_base::DeviceId;

    fn path(s: &str) -> SyncPath {
        SyncPath::new(s).unwrap()
    }

    /// After any sequence of changes, refreshed step by step, the tree has
    /// the hashes of one built from scratch over the live records.
    #[test]
    fn incremental_tree_equals_a_tree_built_from_scratch() {
        let mut s = MemStorage::new(DeviceId([1; 32]), 1);
        let mut tree = LiveTree::default();
        let mut state = 7u64;
        for step in 0..600u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let p = path(&format!("d{}/s{}/f{}.md", state % 4, (state >> 8) % 3, (state >> 16) % 9));
            if state % 5 == 0 {
                s.local_delete(&p, 1);
            } else {
                for dir in [p.parent().and_then(|d| d.parent()), p.parent()].into_iter().flatten() {
                    if s.live(&dir).is_none() {
                        s.local_mkdir(&dir, 1);
                    }
                }
                s.local_write(&p, format!("{step}").as_bytes(), 1);
            }
            if step % 7 == 0 {
                tree.refresh(&s, &IgnoreRules::default()).unwrap();
                let scratch = Tree::build(&s.live_records().unwrap());
                assert_eq!(tree.root(), scratch.root, "step {step}");
                assert_eq!(tree.children(None), scratch.children(None));
                assert_eq!(tree.children(Some(&path("d1"))), scratch.children(Some(&path("d1"))));
            }
        }
        tree.refresh(&s, &IgnoreRules::default()).unwrap();
        let mut live = tree.live_within(&path("d2"));
        live.sort();
        let expected: Vec<SyncPath> =
            s.live_records().unwrap().into_iter().map(|r| r.path).filter(|p| p.is_within(&path("d2"))).collect();
        assert_eq!(live, expected);
    }
}
