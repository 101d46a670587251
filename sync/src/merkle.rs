//! A hash tree over the live records, shaped like the directory tree, so
//! two devices find what differs by descending only where hashes differ.
//! Tombstones are left out: devices drop them at different times.

use std::collections::BTreeMap;

use psync_base::ContentHash;

use crate::message::TreeEntry;
use crate::path::SyncPath;
use crate::record::FileRecord;

#[derive(Default)]
struct Node {
    own: Option<ContentHash>,
    children: BTreeMap<String, Node>,
}

/// Every node's children and hashes, computed once per index state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Hash of the whole tree.
    pub root: ContentHash,
    nodes: BTreeMap<Option<SyncPath>, Vec<TreeEntry>>,
}

impl Tree {
    /// Builds the tree over `records` (live records; any order).
    pub fn build(records: &[FileRecord]) -> Tree {
        let mut top = Node::default();
        for record in records {
            let mut node = &mut top;
            for part in record.path.as_str().split('/') {
                node = node.children.entry(part.to_string()).or_default();
            }
            node.own = Some(record.digest());
        }
        let mut nodes = BTreeMap::new();
        let root = hash_node(&top, None, &mut nodes);
        Tree { root, nodes }
    }

    /// The children of `prefix` (`None`: the top level), sorted by name.
    pub fn children(&self, prefix: Option<&SyncPath>) -> Vec<TreeEntry> {
        self.nodes.get(&prefix.cloned()).cloned().unwrap_or_default()
    }
}

fn hash_node(node: &Node, path: Option<SyncPath>, out: &mut BTreeMap<Option<SyncPath>, Vec<TreeEntry>>) -> ContentHash {
    let mut buf = Vec::with_capacity(33 + node.children.len() * 48);
    buf.extend_from_slice(node.own.map_or([0u8; 32], |h| h.0).as_slice());
    let mut entries = Vec::with_capacity(node.children.len());
    for (name, child) in &node.children {
        let child_path = match &path {
            None => SyncPath::new(name).ok(),
            Some(p) => p.join(name).ok(),
        };
        let hash = hash_node(child, child_path, out);
        buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(hash.as_bytes());
        entries.push(TreeEntry { name: name.clone(), hash, has_children: !child.children.is_empty() });
    }
    if !entries.is_empty() {
        out.insert(path, entries);
    }
    ContentHash::of(&buf)
}
