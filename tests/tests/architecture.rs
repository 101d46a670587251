//! Architecture invariants, checked by machine (ARCHITECTURE.md states them):
//! which crate may depend on what (walked in Cargo.lock), bincode behind
//! the one codec module, no module cycles inside any crate, and no source
//! file so long that it mixes concerns. The sync core's clock and
//! randomness are checked by clippy (`sync/clippy.toml`).

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root. Cargo sets `CARGO_MANIFEST_DIR` when it runs the
/// test too: that one wins, so a binary built from another checkout that
/// shares the target dir still reads the tree it is run for.
fn root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    manifest.parent().unwrap().to_path_buf()
}

/// Package name -> names of its dependencies, from Cargo.lock.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
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

/// Everything `krate` depends on, directly or not.
fn closure(graph: &BTreeMap<String, Vec<String>>, krate: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = graph.get(krate).cloned().unwrap_or_default();
    while let Some(name) = stack.pop() {
        if seen.insert(name.clone()) {
            stack.extend(graph.get(&name).cloned().unwrap_or_default());
        }
    }
    seen
}

const IO_STACKS: &[&str] = &["tokio", "webrtc", "rocksdb", "librocksdb-sys", "fuser", "tokio-tungstenite"];

#[test]
fn crates_depend_only_downwards() {
    let graph = lock_graph();
    assert!(graph.contains_key("psync-sync") && graph.contains_key("rocksdb"), "the lock file parsed");
    // (crate, what it must never reach, directly or through anything).
    let rules: &[(&str, &[&str])] = &[
        ("psync-base", &[IO_STACKS, &["psync-store", "psync-fs", "psync-sync", "psync-signal"]].concat()),
        (
            "psync-store",
            &[&["tokio", "webrtc", "fuser", "tokio-tungstenite"][..], &["psync-fs", "psync-sync", "psync-signal"]]
                .concat(),
        ),
        ("psync-fs", &["tokio", "webrtc", "tokio-tungstenite", "psync-sync", "psync-signal"]),
        ("psync-sync", &[IO_STACKS, &["psync-store", "psync-fs", "psync-signal"]].concat()),
        ("psync-signal", &["rocksdb", "librocksdb-sys", "fuser", "webrtc", "psync-store", "psync-fs", "psync-sync"]),
    ];
    for (krate, forbidden) in rules {
        let reached = closure(&graph, krate);
        assert!(reached.contains("psync-base") || *krate == "psync-base", "the walk from {krate} reached its deps");
        let bad: Vec<&&str> = forbidden.iter().filter(|f| reached.contains(**f)).collect();
        assert!(bad.is_empty(), "{krate} must not depend on {bad:?}");
    }
}

#[test]
fn bincode_is_used_only_by_the_base_codec() {
    let graph = lock_graph();
    let users: Vec<&String> =
        graph.iter().filter(|(_, deps)| deps.iter().any(|d| d == "bincode")).map(|(name, _)| name).collect();
    assert_eq!(users, vec!["psync-base"], "bincode goes through psync_base::codec (always with a byte limit)");
    let codec_users: Vec<PathBuf> = rust_files(&root())
        .into_iter()
        .filter(|f| !f.starts_with(root().join("base")) && !f.ends_with(file!()))
        .filter(|f| code_of(f).contains("bincode::"))
        .collect();
    assert!(codec_users.is_empty(), "bincode named outside base: {codec_users:?}");
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The library and binary sources of each crate: `(crate dir, src dir)`.
fn crate_sources() -> Vec<(String, PathBuf)> {
    let mut out = vec![("psync".to_string(), root().join("src"))];
    for krate in ["base", "store", "fs", "sync", "signal", "mount-helper", "tests"] {
        out.push((krate.to_string(), root().join(krate).join("src")));
    }
    out
}

/// The code of a file without comments and without its test module.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The module a source file is, as a path from the crate root: `src/a/b.rs`
/// and `src/a/b/mod.rs` are `["a", "b"]`; `lib.rs`/`main.rs` are `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !["mod", "lib", "main"].contains(&stem) {
        parts.push(stem.to_string());
    }
    if parts.first().is_some_and(|p| p == "bin") {
        parts.clear();
    }
    parts
}

/// Modules each module names, as absolute paths (from `crate::` and
/// `super::` paths in its code).
fn module_references(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut refs: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in rust_files(src) {
        let me = module_path(src, &file);
        let code = code_of(&file);
        let entry = refs.entry(me.clone()).or_default();
        for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
            let rest = &code[at..];
            let mut path: Vec<String> =
                if rest.starts_with("crate::") { Vec::new() } else { me[..me.len().saturating_sub(1)].to_vec() };
            let tail = rest.split_once("::").map_or("", |(_, t)| t);
            // Up to two segments of lower-case names: modules, not items.
            for segment in tail.split("::").take(2) {
                let name: String = segment.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name.is_empty() || !name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    break;
                }
                path.push(name);
            }
            if !path.is_empty() {
                entry.insert(path);
            }
        }
    }
    refs
}

/// Finds a cycle among `nodes` with edges `edges`, if any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut state, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Dependencies between the children of `parent` (a folder module, or the
/// crate root): child A depends on child B when code inside A names B.
fn child_edges(
    refs: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    parent: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, targets) in refs {
        let Some(child) = module.strip_prefix(parent).and_then(|rest| rest.first()) else { continue };
        for target in targets {
            let Some(other) = target.strip_prefix(parent).and_then(|rest| rest.first()) else { continue };
            if other != child {
                edges.entry(child.clone()).or_default().insert(other.clone());
            }
        }
    }
    edges
}

#[test]
fn no_module_cycles() {
    let mut checked = 0;
    for (krate, src) in crate_sources() {
        let refs = module_references(&src);
        let parents: BTreeSet<Vec<String>> =
            refs.keys().filter(|m| !m.is_empty()).map(|m| m[..m.len() - 1].to_vec()).collect();
        for parent in parents {
            let edges = child_edges(&refs, &parent);
            checked += edges.len();
            if let Some(cycle) = find_cycle(&edges) {
                panic!("module cycle in {krate} under {:?}: {}", parent.join("::"), cycle.join(" -> "));
            }
        }
    }
    assert!(checked > 30, "the check saw the modules ({checked} edges' sources)");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(find_cycle(&edges).map(|c| c.len()), Some(4));
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_string(), ["b".to_string()].into()), ("b".to_string(), BTreeSet::new())].into();
    assert_eq!(find_cycle(&acyclic), None);
}

/// Lines of code a source file may have before its tests: past this, it
/// mixes concerns (split it by concern, not by line count).
const MAX_SOURCE_LINES: usize = 700;

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut long = Vec::new();
    let mut files = 0;
    for (_, src) in crate_sources() {
        for file in rust_files(&src) {
            files += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            let lines = text.split("#[cfg(test)]").next().unwrap_or("").lines().count();
            if lines > MAX_SOURCE_LINES {
                long.push(format!("{} ({lines} lines)", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(files > 50, "the check saw the sources ({files} files)");
    assert!(long.is_empty(), "over {MAX_SOURCE_LINES} lines: {long:?}");
}
