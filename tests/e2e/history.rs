//! A file's history while mounted: `psync log` and `psync restore` go
//! through the daemon; a restore shows on the mount and reaches the peers.

use crate::group::group_of_two;
use crate::mount::Mounted;
use crate::support::{eventually, json, lazy, psync, PATIENCE};

#[test]
fn a_restore_while_mounted_shows_here_and_reaches_the_other_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());

    std::fs::write(desktop.path("plan.md"), "# Plan\nfirst draft\n").unwrap();
    eventually(PATIENCE, "the first draft on the laptop", || {
        std::fs::read_to_string(laptop.path("plan.md")).is_ok_and(|t| t == "# Plan\nfirst draft\n")
    });
    std::fs::write(desktop.path("plan.md"), "# Plan\nrewritten badly\n").unwrap();
    eventually(PATIENCE, "the rewrite on the laptop", || {
        std::fs::read_to_string(laptop.path("plan.md")).is_ok_and(|t| t == "# Plan\nrewritten badly\n")
    });

    // The history, while mounted (the store is the daemon's).
    let rows = json(&psync(&a, &["log", "plan.md", "--json"]));
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 2, "{rows:?}");
    for field in ["version", "size", "committed_at", "path", "current"] {
        assert!(rows[0].get(field).is_some(), "the store log's field {field} is kept");
    }
    assert_eq!(rows.last().unwrap()["current"], true);
    let first = rows.iter().find(|r| r["size"] == "# Plan\nfirst draft\n".len()).unwrap();
    let version = first["version"].as_u64().unwrap().to_string();

    let out = psync(&a, &["restore", "plan.md", "--version", &version]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let what = lazy(|| format!("the restored draft on both: {:?}", std::fs::read_to_string(laptop.path("plan.md"))));
    eventually(PATIENCE, what, || {
        [&desktop, &laptop]
            .iter()
            .all(|m| std::fs::read_to_string(m.path("plan.md")).is_ok_and(|t| t == "# Plan\nfirst draft\n"))
    });
    let after = json(&psync(&a, &["log", "plan.md", "--json"]));
    assert_eq!(after.as_array().unwrap().len(), rows.len() + 1, "the restore is a new version; nothing is lost");
    // No daemon: the same commands read and change the store itself.
    laptop.unmount();
    let offline = json(&psync(&b, &["log", "plan.md", "--json"]));
    assert!(!offline.as_array().unwrap().is_empty());
}
