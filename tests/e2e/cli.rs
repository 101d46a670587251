use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use psync::cli::exit;

use crate::support::psync;
use psync_store::Store;

fn ok(data_dir: &Path, args: &[&str]) -> String {
    let out = psync(data_dir, args);
    assert!(out.status.success(), "psync {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn fail(data_dir: &Path, args: &[&str]) -> String {
    fail_with(data_dir, args, exit::FAILED)
}

/// Fails with exactly `code` (`psync --help` lists them).
fn fail_with(data_dir: &Path, args: &[&str], code: u8) -> String {
    let out = psync(data_dir, args);
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(i32::from(code)), "psync {args:?}: {said}");
    said
}

/// Every file, directory and symlink under `root` with contents and permissions.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                let data = std::fs::read(&path).unwrap();
                format!("file {:o} {} {}", meta.permissions().mode() & 0o777, data.len(), blake3::hash(&data))
            };
            out.push((rel, desc));
        }
    }
    out.sort();
    out
}

fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("notes/deep/er")).unwrap();
    std::fs::write(root.join("notes/a.md"), "# A\n").unwrap();
    std::fs::write(root.join("notes/deep/er/b.md"), "b".repeat(100_000)).unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    let big = crate::mount::noise(3_000_000, 5);
    std::fs::write(root.join("paper.pdf"), big).unwrap();
    std::fs::set_permissions(root.join("notes/a.md"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("notes/a.md", root.join("link")).unwrap();
}

#[test]
fn import_export_round_trip_and_history() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, data, out) = (tmp.path().join("src"), tmp.path().join("data"), tmp.path().join("out"));
    sample_tree(&src);
    let said = ok(&data, &["store", "import", src.to_str().unwrap()]);
    assert!(said.contains("imported 4 files (4 new versions), 3 directories, 1 symlinks"), "{said}");
    ok(&data, &["store", "export", out.to_str().unwrap()]);
    assert_eq!(snapshot(&src), snapshot(&out));
    assert!(ok(&data, &["fsck"]).contains("store is consistent"));

    // An unchanged re-import makes no versions; a change makes exactly one.
    assert!(ok(&data, &["store", "import", src.to_str().unwrap()]).contains("(0 new versions)"));
    std::fs::write(src.join("notes/a.md"), "# A, edited\n").unwrap();
    assert!(ok(&data, &["store", "import", src.to_str().unwrap()]).contains("(1 new versions)"));
    assert_eq!(ok(&data, &["store", "cat", "notes/a.md"]), "# A, edited\n");
    let log: serde_json::Value = serde_json::from_str(&ok(&data, &["store", "log", "notes/a.md", "--json"])).unwrap();
    let versions = log.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    let first = versions[0]["version"].as_u64().unwrap().to_string();
    ok(&data, &["store", "restore", "notes/a.md", "--version", &first]);
    assert_eq!(ok(&data, &["store", "cat", "notes/a.md"]), "# A\n");

    let stats: serde_json::Value = serde_json::from_str(&ok(&data, &["stats", "--json"])).unwrap();
    assert_eq!(stats["files"], 4);
    assert_eq!(stats["symlinks"], 1);
    let listing = ok(&data, &["store", "ls", "notes"]);
    assert!(listing.contains("a.md") && listing.contains("deep"), "{listing}");
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let said = fail(&data, &["fsck"]);
    assert!(said.contains("is not a PSync data directory"), "{said}");

    let src = tmp.path().join("src");
    sample_tree(&src);
    ok(&data, &["store", "import", src.to_str().unwrap()]);
    assert!(fail(&data, &["store", "cat", "nope.md"]).contains("no such file or directory"));

    // A store in use by another process: changes are refused with a hint,
    // looking works on a read-only snapshot.
    let held = Store::open(&data).unwrap();
    let said = fail_with(&data, &["gc"], exit::STORE_BUSY);
    assert!(said.contains("in use by another psync process"), "{said}");
    let out = psync(&data, &["stats", "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only snapshot"));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["files"], 4);
    drop(held);

    // Commands that need the daemon say so, with their own code.
    let said = fail_with(&data, &["revert", "--all"], exit::NO_DAEMON);
    assert!(said.contains("no daemon serves"), "{said}");
    fail_with(&data, &["no-such-command"], exit::USAGE);
}

#[test]
fn fsck_exits_non_zero_on_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, data) = (tmp.path().join("src"), tmp.path().join("data"));
    sample_tree(&src);
    ok(&data, &["store", "import", src.to_str().unwrap()]);
    {
        let store = Store::open(&data).unwrap();
        let node = store.resolve(b"paper.pdf").unwrap();
        let hash = store.block_list(&node.content).unwrap()[3].unwrap();
        store.debug_delete_block(&hash).unwrap();
    }
    // Damage found is not "could not run": a script can tell them apart.
    let said = fail_with(&data, &["fsck"], exit::DAMAGED);
    assert!(said.contains("STORE IS INCONSISTENT") && said.contains("is missing"), "{said}");
    let json: serde_json::Value = serde_json::from_str(&psync_stdout(&data, &["fsck", "--json"])).unwrap();
    assert!(!json["problems"].as_array().unwrap().is_empty());
}

fn psync_stdout(data_dir: &Path, args: &[&str]) -> String {
    String::from_utf8(psync(data_dir, args).stdout).unwrap()
}

/// Completions and man pages come from the command's own definitions, so
/// they list every subcommand and flag.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = ok(tmp.path(), &["completions", "bash"]);
    for word in ["mount", "unmount", "status", "invite", "join", "--debounce-ms", "--upload-limit", "--config"] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    assert!(ok(tmp.path(), &["completions", "zsh"]).contains("#compdef psync"));
    assert!(ok(tmp.path(), &["completions", "fish"]).contains("complete -c psync"));
    assert!(fail_with(tmp.path(), &["completions", "tcsh"], exit::USAGE).contains("invalid value"));

    let man = ok(tmp.path(), &["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH psync"), "{}", &man[..200.min(man.len())]);
    assert!(man.contains("psync\\-mount(1)") || man.contains("psync-mount"), "the page lists the subcommands");
    let pages = tmp.path().join("man");
    ok(tmp.path(), &["man", "--dir", pages.to_str().unwrap()]);
    let mount_page = std::fs::read_to_string(pages.join("psync-mount.1")).unwrap();
    assert!(mount_page.contains("debounce") && mount_page.contains("download"), "{mount_page}");
    assert!(pages.join("psync-store-restore.1").exists());
}

/// The systemd unit example's command lines are ones psync accepts.
#[test]
fn the_systemd_unit_runs_commands_psync_accepts() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd/psync-vault.service")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("Vault");
    for key in ["ExecStart=", "ExecStop="] {
        let line = unit.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
        let words: Vec<String> = line[key.len()..]
            .split_whitespace()
            .skip(1) // the binary
            .map(|w| w.replace("%h/Vault", missing.to_str().unwrap()))
            .collect();
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let out = psync(tmp.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        // Refused for the missing folder, not for its arguments (clap exits 2).
        assert_eq!(out.status.code(), Some(i32::from(exit::FAILED)), "{key}: {err}");
        assert!(err.contains(missing.to_str().unwrap()), "{key}: {err}");
    }
}

#[test]
fn an_imported_file_keeps_its_modification_time_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let (src, data) = (tmp.path().join("vault"), tmp.path().join("data"));
    std::fs::create_dir_all(src.join("Notes")).unwrap();
    let note = src.join("Notes/old.md");
    std::fs::write(&note, "# written long ago\n").unwrap();
    std::fs::set_permissions(&note, std::fs::Permissions::from_mode(0o640)).unwrap();
    let touched = std::process::Command::new("touch").args(["-d", "2020-01-02 03:04:05.25"]).arg(&note).status();
    assert!(touched.unwrap().success());
    let before = std::fs::metadata(&note).unwrap();
    ok(&data, &["store", "import", src.to_str().unwrap()]);
    let mounted = crate::mount::Mounted::with_data(data);
    let after = std::fs::metadata(mounted.path("Notes/old.md")).unwrap();
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()), "not the import's time");
    assert_eq!(after.permissions().mode() & 0o7777, 0o640);
}

#[test]
fn a_mount_that_will_not_sync_says_so_on_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mnt) = (tmp.path().join("data"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let out = psync(&data, &["mount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _mounted = crate::mount::Mounted { tmp, data, mnt, flags: Vec::new() };
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("belongs to no group, so this mount does not sync"), "{said}");
}

#[test]
fn an_existing_vault_is_adopted_in_place_and_syncs() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = crate::group::group_of_two(tmp.path());

    let vault = tmp.path().join("Vault");
    std::fs::create_dir_all(vault.join(".obsidian")).unwrap();
    std::fs::write(vault.join("Daily.md"), "# an old note\n").unwrap();
    std::fs::write(vault.join(".obsidian/app.json"), "{}").unwrap();
    let touched =
        std::process::Command::new("touch").args(["-d", "2021-03-04 05:06:07"]).arg(vault.join("Daily.md")).status();
    assert!(touched.unwrap().success());
    let mtime = std::fs::metadata(vault.join("Daily.md")).unwrap().mtime();

    let out = psync(&a, &["mount", vault.to_str().unwrap(), "--adopt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("adopted 2 files") && said.contains("Vault.before-psync"), "{said}");
    let keep = tempfile::tempdir().unwrap();
    let desktop = crate::mount::Mounted { tmp: keep, data: a.clone(), mnt: vault.clone(), flags: Vec::new() };
    assert!(desktop.is_mounted(), "mounted at the vault's own path");
    assert_eq!(std::fs::read_to_string(vault.join("Daily.md")).unwrap(), "# an old note\n");
    assert_eq!(std::fs::metadata(vault.join("Daily.md")).unwrap().mtime(), mtime);
    let original = tmp.path().join("Vault.before-psync");
    assert_eq!(std::fs::read_to_string(original.join("Daily.md")).unwrap(), "# an old note\n", "the original is kept");

    // It syncs: the laptop gets the vault.
    let laptop = crate::mount::Mounted::with_data(b);
    crate::support::eventually(crate::support::PATIENCE, "the adopted vault to reach the laptop", || {
        std::fs::read_to_string(laptop.path("Daily.md")).is_ok_and(|t| t == "# an old note\n")
    });

    // A second adoption into the same (now full) data dir is refused, and
    // leaves the folder where it is.
    desktop.unmount();
    let other = tmp.path().join("Other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("x.md"), "x").unwrap();
    let refused = psync(&a, &["mount", other.to_str().unwrap(), "--adopt"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds files"));
    assert_eq!(std::fs::read_to_string(other.join("x.md")).unwrap(), "x");
}
