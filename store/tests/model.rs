//! Property test: random sequences of create/write/truncate/rename/delete
//! (and reopening the store) give the same observable tree as a simple
//! in-memory model, and fsck stays clean.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use psync_base::DeviceId;
use psync_store::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Dir,
}

/// The model: full path -> node. The root is "".
#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];
/// Names holding it are kept as a set by the store (as conflict copies are).
const KEPT_MARKER: &[u8] = b"b";

#[derive(Debug, Clone)]
enum Op {
    Create { dir: usize, name: usize },
    Mkdir { dir: usize, name: usize },
    Write { file: usize, offset: u32, len: u32, seed: u8 },
    Truncate { file: usize, size: u32 },
    Rename { src: usize, dir: usize, name: usize },
    Unlink { file: usize },
    Rmdir { dir: usize },
    Commit { file: usize },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<usize>(), 0..3usize).prop_map(|(dir, name)| Op::Create { dir, name }),
        2 => (any::<usize>(), 0..3usize).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        4 => (any::<usize>(), 0..200_000u32, 0..140_000u32, any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        2 => (any::<usize>(), 0..300_000u32).prop_map(|(file, size)| Op::Truncate { file, size }),
        3 => (any::<usize>(), any::<usize>(), 0..3usize).prop_map(|(src, dir, name)| Op::Rename { src, dir, name }),
        1 => any::<usize>().prop_map(|file| Op::Unlink { file }),
        1 => any::<usize>().prop_map(|dir| Op::Rmdir { dir }),
        2 => any::<usize>().prop_map(|file| Op::Commit { file }),
        1 => Just(Op::Reopen),
    ]
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut out = vec![String::new()];
        out.extend(self.nodes.iter().filter(|(_, n)| **n == Node::Dir).map(|(p, _)| p.clone()));
        out
    }
    fn files(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| matches!(n, Node::File(_))).map(|(p, _)| p.clone()).collect()
    }
    fn all(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }
    fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.nodes.keys().any(|p| p.starts_with(&prefix))
    }
}

fn pick(list: &[String], i: usize) -> Option<String> {
    (!list.is_empty()).then(|| list[i % list.len()].clone())
}

fn data(len: u32, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8).wrapping_mul(3)).collect()
}

fn resolve(s: &Store, path: &str) -> Inode {
    s.resolve(path.as_bytes()).unwrap_or_else(|e| panic!("resolve {path:?}: {e}"))
}

/// Applies `op` to both; returns false if the op was not applicable.
fn apply(store: &mut Store, dir: &std::path::Path, model: &mut Model, op: &Op) {
    let now = Timestamp { secs: 1, nanos: 0 };
    match op {
        Op::Create { dir: d, name } | Op::Mkdir { dir: d, name } => {
            let parent = pick(&model.dirs(), *d).unwrap_or_default();
            let path = join(&parent, NAMES[*name]);
            let is_dir = matches!(op, Op::Mkdir { .. });
            let node = if is_dir { NewNode::Dir } else { NewNode::File };
            let result =
                store.create(resolve(store, &parent).ino, NAMES[*name].as_bytes(), node, NodeAttrs::perm(0o644), now);
            match model.nodes.entry(path) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    assert!(matches!(result, Err(StoreError::Exists)), "{result:?}")
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    result.unwrap();
                    slot.insert(if is_dir { Node::Dir } else { Node::File(Vec::new()) });
                }
            }
        }
        Op::Write { file, offset, len, seed } => {
            let Some(path) = pick(&model.files(), *file) else { return };
            let bytes = data(*len, *seed);
            store.write(resolve(store, &path).ino, *offset as u64, &bytes, now).unwrap();
            let Some(Node::File(content)) = model.nodes.get_mut(&path) else { unreachable!() };
            let end = *offset as usize + bytes.len();
            if !bytes.is_empty() {
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*offset as usize..end].copy_from_slice(&bytes);
            }
        }
        Op::Truncate { file, size } => {
            let Some(path) = pick(&model.files(), *file) else { return };
            store.truncate(resolve(store, &path).ino, *size as u64, now).unwrap();
            let Some(Node::File(content)) = model.nodes.get_mut(&path) else { unreachable!() };
            content.resize(*size as usize, 0);
        }
        Op::Commit { file } => {
            let Some(path) = pick(&model.files(), *file) else { return };
            store.commit(resolve(store, &path).ino, now, false).unwrap();
        }
        Op::Unlink { file } => {
            let Some(path) = pick(&model.files(), *file) else { return };
            let parent = resolve(store, parent_of(&path)).ino;
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            store.unlink(parent, name.as_bytes(), now).unwrap();
            model.nodes.remove(&path);
        }
        Op::Rmdir { dir: d } => {
            let dirs: Vec<String> = model.dirs().into_iter().filter(|d| !d.is_empty()).collect();
            let Some(path) = pick(&dirs, *d) else { return };
            let parent = resolve(store, parent_of(&path)).ino;
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            let result = store.rmdir(parent, name.as_bytes(), now);
            if model.has_children(&path) {
                assert!(matches!(result, Err(StoreError::NotEmpty)), "{result:?}");
            } else {
                result.unwrap();
                model.nodes.remove(&path);
            }
        }
        Op::Rename { src, dir: d, name } => {
            let Some(src) = pick(&model.all(), *src) else { return };
            let dst_dir = pick(&model.dirs(), *d).unwrap_or_default();
            let dst = join(&dst_dir, NAMES[*name]);
            let src_parent = resolve(store, parent_of(&src)).ino;
            let src_name = src.rsplit('/').next().unwrap_or(&src).to_string();
            let dst_parent = resolve(store, &dst_dir).ino;
            let result = store.rename(
                src_parent,
                src_name.as_bytes(),
                dst_parent,
                NAMES[*name].as_bytes(),
                RenameMode::Replace,
                now,
            );
            let src_node = model.nodes[&src].clone();
            let into_itself = src_node == Node::Dir && (dst_dir == src || dst_dir.starts_with(&format!("{src}/")));
            let expected_err = if src == dst {
                None
            } else if into_itself {
                Some("invalid")
            } else {
                match (&src_node, model.nodes.get(&dst)) {
                    (Node::Dir, Some(Node::File(_))) => Some("notdir"),
                    (Node::File(_), Some(Node::Dir)) => Some("isdir"),
                    (Node::Dir, Some(Node::Dir)) if model.has_children(&dst) => Some("notempty"),
                    _ => None,
                }
            };
            match (expected_err, &result) {
                (None, Ok(())) => {
                    if src != dst {
                        let moved: Vec<(String, Node)> = model
                            .nodes
                            .iter()
                            .filter(|(p, _)| **p == src || p.starts_with(&format!("{src}/")))
                            .map(|(p, n)| (p.clone(), n.clone()))
                            .collect();
                        model.nodes.remove(&dst);
                        for (p, _) in &moved {
                            model.nodes.remove(p);
                        }
                        for (p, n) in moved {
                            model.nodes.insert(format!("{dst}{}", &p[src.len()..]), n);
                        }
                    }
                }
                (Some("invalid"), Err(StoreError::Invalid(_)))
                | (Some("notdir"), Err(StoreError::NotDir))
                | (Some("isdir"), Err(StoreError::IsDir))
                | (Some("notempty"), Err(StoreError::NotEmpty)) => {}
                (expected, got) => panic!("rename {src} -> {dst}: expected {expected:?}, got {got:?}"),
            }
        }
        Op::Reopen => {
            // Replace the open store with a fresh handle on the same directory.
            let placeholder = tempfile::tempdir().unwrap();
            let old = std::mem::replace(store, Store::open_or_create(placeholder.path(), DeviceId([1; 32])).unwrap());
            drop(old);
            *store = Store::open(dir).unwrap();
        }
    }
}

fn observe(store: &Store, dir: u64, prefix: &str, out: &mut BTreeMap<String, Node>) {
    for (name, entry) in store.read_dir(dir, None, usize::MAX).unwrap() {
        let path = join(prefix, std::str::from_utf8(&name).unwrap());
        match entry.kind {
            NodeKind::Dir => {
                out.insert(path.clone(), Node::Dir);
                observe(store, entry.ino, &path, out);
            }
            _ => {
                let node = store.inode(entry.ino).unwrap();
                let content = store.read(entry.ino, 0, node.content.size as u32).unwrap();
                assert_eq!(content.len() as u64, node.content.size);
                out.insert(path, Node::File(content));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_or_create(dir.path(), DeviceId([9; 32])).unwrap();
        let mut model = Model::default();
        for op in &ops {
            // Counted once, then kept current by each operation's commit.
            store.tree_stats().unwrap();
            store.live_paths_named(KEPT_MARKER).unwrap();
            apply(&mut store, dir.path(), &mut model, op);
        }
        let mut seen = BTreeMap::new();
        observe(&store, ROOT_INO, "", &mut seen);
        prop_assert_eq!(&seen, &model.nodes);
        let (kept, walked) = (store.tree_stats().unwrap(), store.stats().unwrap());
        prop_assert_eq!(
            (kept.files, kept.dirs, kept.symlinks, kept.specials, kept.logical_bytes),
            (walked.files, walked.dirs, walked.symlinks, walked.specials, walked.logical_bytes)
        );
        prop_assert_eq!(
            store.live_paths_named(KEPT_MARKER).unwrap(),
            store.live_paths_named_walked(KEPT_MARKER).unwrap()
        );
        let report = store.fsck().unwrap();
        prop_assert!(report.is_clean(), "fsck: {:#?}", report.problems);
    }
}
