//! Architecture invariant, checked by machine: the sync core's dependency
//! tree (from Cargo.lock) contains no tokio, WebRTC, RocksDB or FUSE.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

const FORBIDDEN: &[&str] = &[
    "tokio",
    "webrtc",
    "rocksdb",
    "librocksdb-sys",
    "fuser",
    "tokio-tungstenite",
    "psync-store",
    "psync-fs",
    "psync-signal",
];

/// package name -> names of its dependencies.
fn lock_graph(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut graph = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name = ") {
                name = Some(rest.trim_matches('"').to_string());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line.starts_with(']') {
                in_deps = false;
            } else if in_deps {
                // "name" or "name version" or "name version (source)".
                let dep = line.trim_matches(|c| c == '"' || c == ',');
                if let Some(dep_name) = dep.split_whitespace().next() {
                    deps.push(dep_name.trim_matches('"').to_string());
                }
            }
        }
        if let Some(name) = name {
            graph.entry(name).or_insert_with(Vec::new).extend(deps);
        }
    }
    graph
}

#[test]
fn the_sync_core_depends_on_no_io_stack() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).expect("Cargo.lock");
    let graph = lock_graph(&lock);
    assert!(graph.contains_key("psync-sync") && graph.contains_key("rocksdb"), "the lock file parsed");
    let mut seen = BTreeSet::new();
    let mut stack = vec!["psync-sync".to_string()];
    while let Some(name) = stack.pop() {
        if seen.insert(name.clone()) {
            stack.extend(graph.get(&name).cloned().unwrap_or_default());
        }
    }
    let bad: Vec<&&str> = FORBIDDEN.iter().filter(|f| seen.contains(**f)).collect();
    assert!(bad.is_empty(), "psync-sync must not depend on {bad:?}");
    assert!(seen.contains("psync-base"), "the walk reached the core's real dependencies");
}
