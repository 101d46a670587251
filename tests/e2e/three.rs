//! The product as the user described it: a signalling server and three
//! devices (init, invite --yes, join, join), each mounted, syncing over real
//! WebRTC on loopback, with `psync status --json` checked against the truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::group::{finish_invite, start_invite, start_server, Server};
use crate::mount::Mounted;
use crate::support::{eventually, json, lazy, psync, PATIENCE};

const NAMES: [&str; 3] = ["desktop", "laptop", "tablet"];

pub fn group_of_three(tmp: &Path) -> (Server, Vec<PathBuf>) {
    let (server, url) = start_server(&tmp.join("server"));
    let dirs: Vec<PathBuf> = NAMES.iter().map(|n| tmp.join(n)).collect();
    assert!(psync(&dirs[0], &["init", "--name", NAMES[0], "--server", &url]).status.success());
    for (dir, name) in dirs.iter().zip(NAMES).skip(1) {
        let (inviter, code) = start_invite(&dirs[0]);
        let joined = psync(dir, &["join", &code, "--name", name, "--server", &url]);
        assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
        finish_invite(inviter);
    }
    (server, dirs)
}

/// Every file and directory under `root`: relative path -> content hash
/// (directories map to "dir").
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else if let Ok(data) = std::fs::read(&path) {
                out.insert(rel, hash(&data));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Waits until every mount shows `want` exactly.
fn wait_for_trees(mounts: &[&Mounted], want: &BTreeMap<String, String>) {
    for m in mounts {
        let what = lazy(|| format!("{} to match\n got {:#?}\nwant {want:#?}", m.mnt.display(), tree(&m.mnt)));
        eventually(PATIENCE, what, || tree(&m.mnt) == *want);
    }
}

pub fn status(data: &Path) -> serde_json::Value {
    json(&psync(data, &["status", "--json"]))
}

/// Waits until `data`'s status shows each named peer with `online` and
/// `in_sync` as wanted.
pub fn wait_for_status(data: &Path, want: &[(&str, bool, bool)]) -> serde_json::Value {
    let shows = |s: &serde_json::Value| {
        want.iter().all(|(name, online, in_sync)| {
            s["peers"].as_array().unwrap().iter().any(|p| {
                p["name"] == *name && p["online"].as_bool() == Some(*online) && p["in_sync"].as_bool() == Some(*in_sync)
            })
        })
    };
    let mut last = serde_json::Value::Null;
    let what = lazy(|| format!("the status of {} to show {want:?}:\n{:#}", data.display(), status(data)));
    eventually(PATIENCE, what, || {
        last = status(data);
        shows(&last)
    });
    last
}

#[test]
fn three_devices_stay_in_sync_and_status_tells_the_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, dirs) = group_of_three(tmp.path());
    let mounts: Vec<Mounted> = dirs.iter().map(|d| Mounted::with_data(d.clone())).collect();
    let all: Vec<&Mounted> = mounts.iter().collect();
    let [a, b, c] = [&mounts[0], &mounts[1], &mounts[2]];

    // Status: the device itself, and both peers online and in sync.
    let s = wait_for_status(&a.data, &[("laptop", true, true), ("tablet", true, true)]);
    assert_eq!(s["device"]["name"], "desktop");
    assert_eq!(s["device"]["id"].as_str().unwrap().len(), status(&b.data)["peers"][0]["id"].as_str().unwrap().len());
    assert_eq!(s["peers"].as_array().unwrap().len(), 2);
    assert_eq!(s["signalling"]["connected"], true);
    assert!(s["daemon"]["pid"].as_u64().is_some());

    // Create, edit, append, truncate, rename, delete: files and directories,
    // from different devices.
    std::fs::create_dir_all(a.path("notes/daily")).unwrap();
    std::fs::write(a.path("notes/daily/monday.md"), b"# Monday\n").unwrap();
    std::fs::write(a.path("notes/todo.md"), b"- one\n- two\n- three\n").unwrap();
    std::fs::write(a.path("paper.pdf"), vec![7u8; 3 << 20]).unwrap();
    std::fs::create_dir(a.path("attic")).unwrap();
    std::fs::write(a.path("attic/old.md"), b"old").unwrap();
    let mut want = tree(&a.mnt);
    wait_for_trees(&all, &want);

    std::fs::write(b.path("notes/todo.md"), b"- one\n- two (edited on the laptop)\n").unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(c.path("notes/daily/monday.md")).unwrap();
        f.write_all(b"appended on the tablet\n").unwrap();
    }
    want.insert("notes/todo.md".into(), hash(b"- one\n- two (edited on the laptop)\n"));
    want.insert("notes/daily/monday.md".into(), hash(b"# Monday\nappended on the tablet\n"));
    wait_for_trees(&all, &want);
    std::fs::OpenOptions::new().write(true).open(b.path("paper.pdf")).unwrap().set_len(1 << 20).unwrap();
    std::fs::rename(c.path("notes/todo.md"), c.path("notes/done.md")).unwrap();
    std::fs::rename(a.path("notes/daily"), a.path("notes/journal")).unwrap();
    std::fs::remove_file(a.path("attic/old.md")).unwrap();
    std::fs::remove_dir(a.path("attic")).unwrap();
    want = BTreeMap::from([
        ("notes".to_string(), "dir".to_string()),
        ("notes/journal".into(), "dir".into()),
        ("notes/journal/monday.md".into(), hash(b"# Monday\nappended on the tablet\n")),
        ("notes/done.md".into(), hash(b"- one\n- two (edited on the laptop)\n")),
        ("paper.pdf".into(), hash(&vec![7u8; 1 << 20])),
    ]);
    wait_for_trees(&all, &want);

    // Offline: the tablet unmounts; status on the desktop says so, and the
    // tablet's own status says no daemon runs.
    c.unmount();
    wait_for_status(&a.data, &[("laptop", true, true), ("tablet", false, false)]);
    let offline = status(&c.data);
    assert!(offline["daemon"].is_null(), "{offline:#}");
    assert_eq!(offline["device"]["name"], "tablet");
    assert_eq!(offline["peers"].as_array().unwrap().len(), 2);
    assert!(offline["peers"].as_array().unwrap().iter().all(|p| p["online"] == false && p["in_sync"] == false));
    let text = psync(&c.data, &["status"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("no daemon serves this data dir"));

    // Changes while the tablet is away reach it when it mounts again.
    std::fs::write(a.path("while-away.md"), b"written while the tablet was away").unwrap();
    // Partitioned edit of the same note: the desktop (with the laptop)
    // and the tablet, alone.
    std::fs::write(a.path("notes/done.md"), b"desktop's version").unwrap();
    want.insert("while-away.md".into(), hash(b"written while the tablet was away"));
    want.insert("notes/done.md".into(), hash(b"desktop's version"));
    wait_for_trees(&[a, b], &want);
    a.unmount();
    b.unmount();
    c.mount();
    std::fs::write(c.path("notes/done.md"), b"tablet's version").unwrap();
    a.mount();
    b.mount();

    // All three converge: the same winner, the same conflict copy, both texts kept.
    let trees = || all.iter().map(|m| tree(&m.mnt)).collect::<Vec<_>>();
    let what = lazy(|| format!("the three devices to converge: {:#?}", trees()));
    eventually(PATIENCE, what, || {
        let trees = trees();
        trees[0].contains_key("while-away.md")
            && trees[0].keys().any(|k| k.contains("sync-conflict"))
            && trees.iter().all(|t| *t == trees[0])
    });
    let settled = trees()[0].clone();
    let texts: Vec<Vec<u8>> =
        settled.keys().filter(|k| k.starts_with("notes/done")).map(|k| std::fs::read(a.mnt.join(k)).unwrap()).collect();
    assert_eq!(texts.len(), 2, "{settled:#?}");
    assert!(texts.contains(&b"desktop's version".to_vec()) && texts.contains(&b"tablet's version".to_vec()));

    // At the end every device reports both peers online and in sync, and
    // the conflict copy.
    for m in &mounts {
        let others: Vec<(&str, bool, bool)> =
            NAMES.iter().filter(|n| m.data.file_name().unwrap() != **n).map(|n| (*n, true, true)).collect();
        let s = wait_for_status(&m.data, &others);
        assert_eq!(s["conflicts"].as_array().unwrap().len(), 1, "{s:#}");
    }
    for m in &mounts {
        m.unmount();
        m.fsck();
    }
}
