//! What a vault needs of the sync core: ignore rules (per-device files stay
//! per device, rule changes apply at once) and three-way merges of notes.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::mesh::*;
use psync_sync::message::Message;
use psync_sync::SyncStorage;

fn announced(m: &Mesh, p: &str) -> bool {
    m.log.iter().any(|(_, _, msg)| match msg {
        Message::IndexUpdate { records, .. } => records.iter().any(|(_, r)| r.path.as_str() == p),
        Message::Records { records } => records.iter().any(|r| r.path.as_str() == p),
        _ => false,
    })
}

fn write(m: &mut Mesh, i: usize, p: &str, body: &str) {
    let p = path(p);
    if let Some(parent) = p.parent() {
        if m.storage(i).live(&parent).is_none() {
            m.storage(i).local_mkdir(&parent, 1);
        }
    }
    m.storage(i).local_write(&p, body.as_bytes(), 2);
    m.local_change(i);
}

fn text(m: &Mesh, i: usize, p: &str) -> Option<String> {
    m.content(i, p).map(|b| String::from_utf8(b).unwrap())
}

/// Obsidian's workspace file changes on every note switch: each device
/// keeps its own, nothing about it crosses, and notes beside it still sync.
#[test]
fn per_device_files_are_never_announced_nor_installed() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    write(&mut m, 0, ".obsidian/workspace.json", "{\"active\":\"a.md\"}");
    write(&mut m, 1, ".obsidian/workspace.json", "{\"active\":\"b.md\"}");
    write(&mut m, 0, "a.md", "note a");
    m.run(10_000);
    assert_eq!(text(&m, 1, "a.md").as_deref(), Some("note a"));
    assert_eq!(text(&m, 0, ".obsidian/workspace.json").as_deref(), Some("{\"active\":\"a.md\"}"));
    assert_eq!(text(&m, 1, ".obsidian/workspace.json").as_deref(), Some("{\"active\":\"b.md\"}"));
    assert!(!announced(&m, ".obsidian/workspace.json"));
    let conflicts = m.cores[0].storage().live_records().unwrap();
    assert!(!conflicts.iter().any(|r| r.path.as_str().contains(".sync-conflict-")), "{conflicts:?}");
    // Anti-entropy agrees too: the ignored file is outside both trees.
    assert_eq!(m.cores[0].root().unwrap(), m.cores[1].root().unwrap());
    assert!(m.cores.iter().all(|c| c.peer_progress().unwrap().iter().all(|p| p.in_sync())));
}

/// `.psyncignore` syncs and applies on every device without a restart: a
/// path that becomes ignored stays as it is everywhere; one that stops
/// being ignored is announced and converges.
#[test]
fn rule_changes_apply_at_once_on_every_device() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    write(&mut m, 0, "drafts/d.md", "draft 1");
    m.run(10_000);
    assert_eq!(text(&m, 1, "drafts/d.md").as_deref(), Some("draft 1"));

    write(&mut m, 0, ".psyncignore", "# mine\ndrafts/\n");
    m.run(10_000);
    assert_eq!(text(&m, 1, ".psyncignore").as_deref(), Some("# mine\ndrafts/\n"));
    assert!(m.cores[1].ignore_rules().rules().iter().any(|r| r.pattern == "drafts/"));
    write(&mut m, 0, "drafts/d.md", "draft 2 on 0");
    write(&mut m, 1, "drafts/e.md", "only on 1");
    m.run(10_000);
    assert_eq!(text(&m, 1, "drafts/d.md").as_deref(), Some("draft 1"), "an ignored path stays as it was");
    assert_eq!(text(&m, 0, "drafts/e.md"), None);

    m.log.clear();
    write(&mut m, 1, ".psyncignore", "# mine\n");
    m.run(20_000);
    assert!(announced(&m, "drafts/e.md"));
    assert_eq!(text(&m, 0, "drafts/e.md").as_deref(), Some("only on 1"));
    // d.md was edited on 0 while ignored: that edit now reaches 1.
    assert_eq!(text(&m, 1, "drafts/d.md").as_deref(), Some("draft 2 on 0"));
    assert_eq!(m.cores[0].root().unwrap(), m.cores[1].root().unwrap());
}

/// A default taken back with `!` syncs again.
#[test]
fn a_default_can_be_taken_back() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    write(&mut m, 0, ".psyncignore", "!.obsidian/workspace.json\n");
    m.run(10_000);
    write(&mut m, 0, ".obsidian/workspace.json", "{}");
    m.run(10_000);
    assert_eq!(text(&m, 1, ".obsidian/workspace.json").as_deref(), Some("{}"));
}

fn conflict_copies(m: &Mesh, i: usize) -> Vec<String> {
    let live = m.cores[i].storage().live_records().unwrap();
    live.iter().filter(|r| r.path.as_str().contains(".sync-conflict-")).map(|r| r.path.to_string()).collect()
}

fn same_everywhere(m: &Mesh) {
    let first = m.cores[0].storage().live_records().unwrap();
    for (i, core) in m.cores.iter().enumerate().skip(1) {
        assert_eq!(core.storage().live_records().unwrap(), first, "device {i} differs");
    }
}

const BASE: &str = "# Plan\n\nmonday: write\ntuesday: read\nwednesday: rest\nthursday: walk\n";

/// Three devices; 0 and 1 edit different lines of one note while apart;
/// when all meet, every device holds one merged note and no conflict copy,
/// even though both edit-makers merge the pair at once.
#[test]
fn edits_of_different_lines_merge_into_one_note_everywhere() {
    let mut m = Mesh::new(3, |_| {});
    m.connect_all();
    write(&mut m, 0, "plan.md", BASE);
    m.run(10_000);
    assert_eq!(text(&m, 2, "plan.md").as_deref(), Some(BASE));
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        m.disconnect(a, b);
    }
    write(&mut m, 0, "plan.md", &BASE.replace("monday: write", "monday: write the intro"));
    write(&mut m, 1, "plan.md", &format!("{}friday: party\n", BASE.replace("wednesday: rest", "wednesday: swim")));
    m.connect_all();
    m.run(30_000);
    let want = "# Plan\n\nmonday: write the intro\ntuesday: read\nwednesday: swim\nthursday: walk\nfriday: party\n";
    for i in 0..3 {
        assert_eq!(text(&m, i, "plan.md").as_deref(), Some(want), "device {i}");
        assert!(conflict_copies(&m, i).is_empty(), "device {i}: {:?}", conflict_copies(&m, i));
    }
    same_everywhere(&m);
    assert!(m.cores.iter().all(|c| c.peer_progress().unwrap().iter().all(|p| p.in_sync())));
}

/// The same line changed on both: both versions are kept, as before.
#[test]
fn edits_of_the_same_line_keep_both_versions() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    write(&mut m, 0, "plan.md", BASE);
    m.run(10_000);
    m.disconnect(0, 1);
    write(&mut m, 0, "plan.md", &BASE.replace("tuesday: read", "tuesday: read a book"));
    write(&mut m, 1, "plan.md", &BASE.replace("tuesday: read", "tuesday: read the news"));
    m.connect_all();
    m.run(30_000);
    same_everywhere(&m);
    let copies = conflict_copies(&m, 0);
    assert_eq!(copies.len(), 1, "{copies:?}");
    let both: Vec<String> =
        [String::from("plan.md"), copies[0].clone()].iter().map(|p| text(&m, 0, p).unwrap()).collect();
    assert!(both.iter().any(|t| t.contains("read a book")) && both.iter().any(|t| t.contains("read the news")));
}

/// Binary content is never merged, whatever its lines.
#[test]
fn binary_files_are_not_merged() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    write(&mut m, 0, "a.bin", "one\ntwo\n\0three\n");
    m.run(10_000);
    m.disconnect(0, 1);
    write(&mut m, 0, "a.bin", "ONE\ntwo\n\0three\n");
    write(&mut m, 1, "a.bin", "one\ntwo\n\0THREE\n");
    m.connect_all();
    m.run(30_000);
    same_everywhere(&m);
    assert_eq!(conflict_copies(&m, 0).len(), 1);
}

/// A device that never held the common version cannot merge; it keeps
/// both, and the devices that merged win: everyone converges on the merged
/// note (the copy it made is kept, like any conflict copy).
#[test]
fn a_device_without_the_common_version_converges_on_the_merge() {
    let mut m = Mesh::new(3, |_| {});
    m.connect(0, 1);
    write(&mut m, 0, "plan.md", BASE);
    m.run(10_000);
    m.disconnect(0, 1);
    write(&mut m, 0, "plan.md", &BASE.replace("monday: write", "monday: write more"));
    write(&mut m, 1, "plan.md", &BASE.replace("thursday: walk", "thursday: run"));
    // Device 2 meets each side before they meet each other.
    m.connect(0, 2);
    m.run(10_000);
    m.disconnect(0, 2);
    m.connect(1, 2);
    m.run(10_000);
    m.connect(0, 1);
    m.connect(0, 2);
    m.run(30_000);
    same_everywhere(&m);
    let want = BASE.replace("monday: write", "monday: write more").replace("thursday: walk", "thursday: run");
    assert_eq!(text(&m, 0, "plan.md").as_deref(), Some(want.as_str()));
}

/// A peer's record with attributes PSync does not keep is refused on its
/// own (held with the reason), never installed.
#[test]
fn records_with_attributes_outside_user_are_refused() {
    let mut m = Mesh::new(2, |_| {});
    m.storage(0).local_write(&path("a.md"), b"x", 1);
    let mut record = m.storage(0).live(&path("a.md")).cloned().unwrap();
    assert!(record.check().is_ok());
    record.xattrs = Some(vec![(b"trusted.x".to_vec(), b"1".to_vec())]);
    assert!(record.check().unwrap_err().contains("extended attributes"));
    record.xattrs = Some(vec![(b"user.b".to_vec(), vec![]), (b"user.a".to_vec(), vec![])]);
    assert!(record.check().is_err(), "names must be sorted");
    record.xattrs = Some(vec![(b"user.a".to_vec(), vec![0; psync_base::xattr::MAX_XATTR_VALUE_BYTES + 1])]);
    assert!(record.check().is_err(), "too large");
    record.deleted = true;
    record.xattrs = Some(vec![]);
    assert!(record.check().is_err(), "a deletion carries none");
}
