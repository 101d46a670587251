//! A vault that behaves (issue 16), with real mounts: per-device files stay
//! per device, `.psyncignore` applies without a remount.

use crate::group::{group_of_two, unmount_and_fsck, wait_for_content};
use crate::mount::Mounted;
use crate::support::{eventually, json, lazy, psync, PATIENCE};

fn conflict_copies(m: &Mounted, dir: &str) -> Vec<String> {
    std::fs::read_dir(m.path(dir))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".sync-conflict-"))
        .collect()
}

/// Each device rewrites Obsidian's workspace file while apart; after they
/// meet, each keeps its own and there is no conflict copy.
#[test]
fn per_device_workspace_files_stay_per_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    std::fs::create_dir(desktop.path(".obsidian")).unwrap();
    std::fs::write(desktop.path(".obsidian/app.json"), "{\"theme\":\"dark\"}").unwrap();
    wait_for_content(&laptop, ".obsidian/app.json", b"{\"theme\":\"dark\"}");

    laptop.unmount();
    std::fs::write(desktop.path(".obsidian/workspace.json"), "{\"active\":\"desktop.md\"}").unwrap();
    desktop.unmount();
    laptop.mount();
    std::fs::write(laptop.path(".obsidian/workspace.json"), "{\"active\":\"laptop.md\"}").unwrap();
    desktop.mount();
    // Something after it that does sync, to know they have met.
    std::fs::write(desktop.path("met.md"), "met").unwrap();
    wait_for_content(&laptop, "met.md", b"met");
    std::fs::write(laptop.path("met-back.md"), "met back").unwrap();
    wait_for_content(&desktop, "met-back.md", b"met back");

    assert_eq!(
        std::fs::read_to_string(desktop.path(".obsidian/workspace.json")).unwrap(),
        "{\"active\":\"desktop.md\"}"
    );
    assert_eq!(std::fs::read_to_string(laptop.path(".obsidian/workspace.json")).unwrap(), "{\"active\":\"laptop.md\"}");
    assert!(conflict_copies(&desktop, ".obsidian").is_empty());
    assert!(conflict_copies(&laptop, ".obsidian").is_empty());
    let rules = json(&psync(&a, &["ignore", "--list", "--json"]));
    let patterns: Vec<&str> =
        rules["rules"].as_array().unwrap().iter().map(|r| r["pattern"].as_str().unwrap()).collect();
    assert!(patterns.contains(&".obsidian/workspace.json"), "{patterns:?}");
    unmount_and_fsck(&[&desktop, &laptop]);
}

/// `.psyncignore` syncs and takes effect on both devices while mounted.
#[test]
fn a_change_to_psyncignore_applies_without_a_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    std::fs::write(desktop.path(".psyncignore"), "# drafts stay here\ndrafts/\n").unwrap();
    wait_for_content(&laptop, ".psyncignore", b"# drafts stay here\ndrafts/\n");
    let has_rule = |data: &std::path::Path| {
        let rules = json(&psync(data, &["ignore", "--list", "--json"]));
        rules["rules"].as_array().unwrap().iter().any(|r| r["pattern"] == "drafts/" && r["from"] == ".psyncignore:2")
    };
    assert!(has_rule(&a));
    eventually(PATIENCE, "the rule on the laptop", || has_rule(&b));

    std::fs::create_dir(desktop.path("drafts")).unwrap();
    std::fs::write(desktop.path("drafts/secret.md"), "not yet").unwrap();
    std::fs::write(desktop.path("after.md"), "after the draft").unwrap();
    wait_for_content(&laptop, "after.md", b"after the draft");
    assert!(!laptop.path("drafts").exists(), "an ignored folder is not announced");

    // The laptop takes the rule back: the draft is announced and arrives.
    std::fs::write(laptop.path(".psyncignore"), "# nothing ignored here\n").unwrap();
    wait_for_content(&desktop, ".psyncignore", b"# nothing ignored here\n");
    let what =
        lazy(|| format!("the draft on the laptop: {:?}", std::fs::read_dir(laptop.path(".")).map(|d| d.count())));
    eventually(PATIENCE, what, || std::fs::read(laptop.path("drafts/secret.md")).is_ok_and(|b| b == b"not yet"));
    unmount_and_fsck(&[&desktop, &laptop]);
}
