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

const NOTE: &str = "# Week\n\nmonday: write\ntuesday: read\nwednesday: rest\nthursday: walk\n";

/// A note edited on both devices while apart: different lines end merged
/// and identical on both with no conflict copy; the same line keeps both
/// versions, as before.
#[test]
fn concurrent_edits_of_a_note_merge_unless_they_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    std::fs::write(desktop.path("week.md"), NOTE).unwrap();
    std::fs::write(desktop.path("clash.md"), NOTE).unwrap();
    wait_for_content(&laptop, "week.md", NOTE.as_bytes());
    wait_for_content(&laptop, "clash.md", NOTE.as_bytes());

    laptop.unmount();
    std::fs::write(desktop.path("week.md"), NOTE.replace("monday: write", "monday: write the intro")).unwrap();
    std::fs::write(desktop.path("clash.md"), NOTE.replace("tuesday: read", "tuesday: read a book")).unwrap();
    desktop.unmount();
    laptop.mount();
    // The laptop's editor saves by writing a new file and renaming it over
    // the note (a new file each time): the merge still finds the common version.
    let text = format!("{}friday: party\n", NOTE.replace("wednesday: rest", "wednesday: swim"));
    std::fs::write(laptop.path(".week.md.tmp"), text).unwrap();
    std::fs::rename(laptop.path(".week.md.tmp"), laptop.path("week.md")).unwrap();
    std::fs::write(laptop.path("clash.md"), NOTE.replace("tuesday: read", "tuesday: read the news")).unwrap();
    desktop.mount();

    let merged = "# Week\n\nmonday: write the intro\ntuesday: read\nwednesday: swim\nthursday: walk\nfriday: party\n";
    let what = lazy(|| {
        format!(
            "the merged note on both: desktop {:?}, laptop {:?}",
            std::fs::read_to_string(desktop.path("week.md")),
            std::fs::read_to_string(laptop.path("week.md"))
        )
    });
    eventually(PATIENCE, what, || {
        [&desktop, &laptop].iter().all(|m| std::fs::read_to_string(m.path("week.md")).is_ok_and(|t| t == merged))
    });
    // The overlapping edit: one keeps the name, the other is a conflict copy, on both.
    let what = lazy(|| {
        format!(
            "one conflict copy of clash.md on both: {:?} {:?}",
            conflict_copies(&desktop, "."),
            conflict_copies(&laptop, ".")
        )
    });
    eventually(PATIENCE, what, || {
        conflict_copies(&desktop, ".").len() == 1 && conflict_copies(&laptop, ".") == conflict_copies(&desktop, ".")
    });
    let copy = conflict_copies(&desktop, ".").remove(0);
    assert!(copy.starts_with("clash.sync-conflict-"), "{copy}");
    let texts: Vec<String> = [&desktop, &laptop]
        .iter()
        .flat_map(|m| ["clash.md", copy.as_str()].map(|p| std::fs::read_to_string(m.path(p)).unwrap()))
        .collect();
    assert!(texts.iter().any(|t| t.contains("read a book")) && texts.iter().any(|t| t.contains("read the news")));
    eventually(PATIENCE, "the same clash.md on both", || {
        std::fs::read(desktop.path("clash.md")).ok() == std::fs::read(laptop.path("clash.md")).ok()
    });
    // The merge is a version in the history like any other.
    let rows = json(&psync(&a, &["log", "week.md", "--json"]));
    assert!(rows.as_array().unwrap().iter().any(|r| r["current"] == true && r["size"] == merged.len()));
    unmount_and_fsck(&[&desktop, &laptop]);
}

/// The daemon prunes history while mounted, by the `[history]` policy,
/// and keeps what a merge may need: versions the laptop has not taken yet,
/// and the last one it has.
#[test]
fn history_is_pruned_while_mounted_keeping_what_merges_need() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    std::fs::write(a.join("config.toml"), "[history]\nkeep_days = 0\nkeep_versions = 1\nprune_every_secs = 1\n")
        .unwrap();
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    for n in 0..5 {
        let text = format!("draft {n}\n");
        std::fs::write(desktop.path("plan.md"), &text).unwrap();
        wait_for_content(&laptop, "plan.md", text.as_bytes());
    }
    let versions = |data: &std::path::Path| json(&psync(data, &["log", "plan.md", "--json"])).as_array().unwrap().len();
    let what = lazy(|| format!("history pruned to one version: {} left", versions(&a)));
    eventually(PATIENCE, what, || versions(&a) == 1);
    let status = json(&psync(&a, &["status", "--json"]));
    assert!(status["history"]["versions_removed"].as_u64().is_some(), "{}", status["history"]);

    // The laptop goes away: what it has not taken stays, with the last it has.
    laptop.unmount();
    std::fs::write(desktop.path("plan.md"), "draft 5\n").unwrap();
    std::fs::write(desktop.path("plan.md"), "draft 6\n").unwrap();
    // Two more passes at least (one per second), then still three versions.
    let passes = |data: &std::path::Path| json(&psync(data, &["status", "--json"]))["history"]["pruned_at_ms"].as_u64();
    let first = passes(&a);
    eventually(PATIENCE, "two more pruning passes", || passes(&a).is_some_and(|t| t > first.unwrap_or(0) + 1000));
    assert_eq!(versions(&a), 3, "draft 4 (the laptop's last) and the two it has not taken");
    unmount_and_fsck(&[&desktop]);
}

/// A deleted note (and its folder) is listed and brought back while
/// mounted; it shows on the mount and reaches the other device.
#[test]
fn a_deleted_file_is_listed_and_brought_back_while_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    std::fs::create_dir(desktop.path("ideas")).unwrap();
    std::fs::write(desktop.path("ideas/old.md"), "keep me").unwrap();
    std::fs::write(desktop.path("ideas/old.md"), "keep me, edited").unwrap();
    wait_for_content(&laptop, "ideas/old.md", b"keep me, edited");
    std::fs::remove_file(desktop.path("ideas/old.md")).unwrap();
    std::fs::remove_dir(desktop.path("ideas")).unwrap();
    eventually(PATIENCE, "the folder gone on the laptop", || !laptop.path("ideas").exists());

    let deleted = json(&psync(&a, &["log", "--deleted", "--json"]));
    let rows = deleted.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{deleted}");
    assert_eq!(rows[0]["path"], "ideas/old.md");
    let human = psync(&a, &["log", "--deleted", "ideas"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("ideas/old.md"));
    let version = rows[0]["version"].as_u64().unwrap().to_string();
    let out = psync(&a, &["restore", "ideas/old.md", "--version", &version]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for_content(&desktop, "ideas/old.md", b"keep me, edited");
    wait_for_content(&laptop, "ideas/old.md", b"keep me, edited");
    assert!(json(&psync(&a, &["log", "--deleted", "--json"])).as_array().unwrap().is_empty());
    let history = json(&psync(&a, &["log", "ideas/old.md", "--json"]));
    assert!(history.as_array().unwrap().len() >= 3, "its history goes on: {history}");
    unmount_and_fsck(&[&desktop, &laptop]);
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `psync mount --at TIME DIR` shows the vault as it was then, read-only,
/// beside the live mount; ordinary tools read and copy from it.
#[test]
fn a_view_of_the_past_shows_old_content_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, _b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    std::fs::create_dir(desktop.path("notes")).unwrap();
    std::fs::write(desktop.path("notes/plan.md"), "the old plan\n").unwrap();
    std::fs::write(desktop.path("notes/gone.md"), "deleted later\n").unwrap();
    let then = now_secs();
    // Later changes fall in a later second than `then`.
    eventually(PATIENCE, "the next second", || now_secs() > then);
    std::fs::write(desktop.path("notes/plan.md"), "the new plan\n").unwrap();
    std::fs::remove_file(desktop.path("notes/gone.md")).unwrap();
    std::fs::write(desktop.path("new.md"), "made later\n").unwrap();

    let view = tmp.path().join("then");
    std::fs::create_dir(&view).unwrap();
    let at = jiff::Timestamp::from_second(then).unwrap().to_string();
    let out = psync(&a, &["mount", view.to_str().unwrap(), "--at", &at]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let unmount = |p: &std::path::Path| psync(&a, &["unmount", p.to_str().unwrap()]);
    let shown = std::fs::read_to_string(view.join("notes/plan.md"));
    let gone = std::fs::read_to_string(view.join("notes/gone.md"));
    let later = view.join("new.md").exists();
    let write = std::fs::write(view.join("notes/plan.md"), "changed?");
    let copied =
        std::process::Command::new("cp").arg("-r").arg(view.join("notes")).arg(tmp.path().join("copy")).status();
    let out = unmount(&view);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(shown.unwrap(), "the old plan\n");
    assert_eq!(gone.unwrap(), "deleted later\n");
    assert!(!later, "a file made later is not in the view");
    assert!(write.is_err(), "the view is read-only");
    assert!(copied.unwrap().success());
    assert_eq!(std::fs::read_to_string(tmp.path().join("copy/plan.md")).unwrap(), "the old plan\n");
    // The live mount is untouched.
    assert_eq!(std::fs::read_to_string(desktop.path("notes/plan.md")).unwrap(), "the new plan\n");
    unmount_and_fsck(&[&desktop]);
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (scripts/install-deps.sh installs attr): {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn getfattr(path: &std::path::Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .expect("getfattr must be installed (scripts/install-deps.sh installs attr)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `user.*` extended attributes (file managers' tags, `cp -a`) are kept
/// with the file, sync to the other device, and can be removed there.
#[test]
fn extended_attributes_round_trip_and_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    std::fs::write(desktop.path("tagged.md"), "a note with a tag").unwrap();
    std::fs::create_dir(desktop.path("folder")).unwrap();
    let file = desktop.path("tagged.md");
    run(
        "setfattr",
        &["-n".as_ref(), "user.xdg.tags".as_ref(), "-v".as_ref(), "work,urgent".as_ref(), file.as_os_str()],
    );
    let folder = desktop.path("folder");
    run("setfattr", &["-n".as_ref(), "user.color".as_ref(), "-v".as_ref(), "blue".as_ref(), folder.as_os_str()]);
    assert_eq!(getfattr(&file, "user.xdg.tags").as_deref(), Some("work,urgent"));
    let listed = run("getfattr", &["-d".as_ref(), file.as_os_str()]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("user.xdg.tags=\"work,urgent\""));
    // Another namespace is not kept: refused, not silently dropped.
    let trusted =
        std::process::Command::new("setfattr").args(["-n", "trusted.x", "-v", "1"]).arg(&file).status().unwrap();
    assert!(!trusted.success());

    eventually(PATIENCE, "the tags on the laptop", || {
        getfattr(&laptop.path("tagged.md"), "user.xdg.tags").as_deref() == Some("work,urgent")
            && getfattr(&laptop.path("folder"), "user.color").as_deref() == Some("blue")
    });
    assert_eq!(std::fs::read_to_string(laptop.path("tagged.md")).unwrap(), "a note with a tag");
    // A change of tags is a version like any other: removing one syncs back.
    let there = laptop.path("tagged.md");
    run("setfattr", &["-x".as_ref(), "user.xdg.tags".as_ref(), there.as_os_str()]);
    eventually(PATIENCE, "the tag removed on the desktop", || getfattr(&file, "user.xdg.tags").is_none());
    // cp -a into the mount keeps them.
    let outside = tmp.path().join("outside.md");
    std::fs::write(&outside, "from outside").unwrap();
    run("setfattr", &["-n".as_ref(), "user.origin".as_ref(), "-v".as_ref(), "disk".as_ref(), outside.as_os_str()]);
    run("cp", &["-a".as_ref(), outside.as_os_str(), desktop.path("copied.md").as_os_str()]);
    eventually(PATIENCE, "the copied file's attribute on the laptop", || {
        getfattr(&laptop.path("copied.md"), "user.origin").as_deref() == Some("disk")
    });
    unmount_and_fsck(&[&desktop, &laptop]);
}
