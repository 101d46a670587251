//! `psync tui` as a user drives it: the real TUI in a real terminal
//! (tmux, 80x24), keys sent with `send-keys`, the screen read with
//! `capture-pane`; real daemons, mounts and a signalling server behind it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::group::start_server;
use crate::support::{eventually, json, lazy, psync, LogsOnFailure, PATIENCE};

/// A private tmux server; every session it runs ends with it.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "tmux is needed for the TUI tests (scripts/install-deps.sh installs it): {found:?}"
        );
        Tmux { socket: dir.join("tmux.sock") }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `psync --data-dir DATA tui` for a user whose home is `home`, in an 80x24 terminal.
    fn start(&self, session: &str, home: &Path, data: &Path) {
        // The shell stays after the TUI, so what it printed last and its
        // exit code can be read.
        let command = format!(
            "env HOME='{home}' XDG_CONFIG_HOME='{home}/.config' PSYNC_ICE_BIND=loopback TERM=xterm-256color \
             '{exe}' --data-dir '{data}' tui; echo \"psync tui exited with $?\"; exec sleep 3600",
            home = home.display(),
            exe = env!("CARGO_BIN_EXE_psync"),
            data = data.display()
        );
        self.tmux(&["new-session", "-d", "-s", session, "-x", "80", "-y", "24", &command]);
    }

    fn keys(&self, session: &str, keys: &[&str]) {
        for key in keys {
            self.tmux(&["send-keys", "-t", session, key]);
        }
    }

    fn type_text(&self, session: &str, text: &str) {
        self.tmux(&["send-keys", "-t", session, "-l", text]);
    }

    fn screen(&self, session: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", session])
    }

    /// Waits until every one of `texts` is on the screen; returns it.
    fn wait_for(&self, session: &str, texts: &[&str]) -> String {
        eventually(PATIENCE, lazy(|| format!("{texts:?} on {session}'s screen:\n{}", self.screen(session))), || {
            let screen = flat(&self.screen(session));
            texts.iter().all(|t| screen.contains(&flat(t)))
        });
        self.screen(session)
    }
}

/// The screen's words in one line: text the TUI wrapped (inside a box) is
/// found whole.
fn flat(screen: &str) -> String {
    screen.replace(['│', '┌', '┐', '└', '┘'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
    }
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

/// Unmounts what a failed test left mounted.
struct Unmount(Vec<(PathBuf, PathBuf)>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for (data, mnt) in &self.0 {
            if is_mounted(mnt) {
                let _ = psync(data, &["unmount", "--lazy", mnt.to_str().unwrap()]);
            }
        }
    }
}

/// Goes through the wizard: found (no code) or join (with one), the
/// default folder (~/PSync) or another one, confirmed after the
/// confirmation says `expect`.
fn wizard(
    tmux: &Tmux,
    session: &str,
    url: &str,
    name: &str,
    code: Option<&str>,
    folder: Option<&str>,
    expect: &str,
) -> String {
    tmux.wait_for(session, &["found a new group", "join a group"]);
    tmux.keys(session, &[if code.is_some() { "j" } else { "f" }]);
    tmux.wait_for(session, &["Signalling server"]);
    tmux.type_text(session, url);
    tmux.keys(session, &["Enter"]);
    tmux.wait_for(session, &["This device's name"]);
    tmux.keys(session, &["C-u"]);
    tmux.type_text(session, name);
    tmux.keys(session, &["Enter"]);
    if let Some(code) = code {
        tmux.wait_for(session, &["Invite code"]);
        tmux.type_text(session, code);
        tmux.keys(session, &["Enter"]);
    }
    tmux.wait_for(session, &["Folder to sync", "~/PSync"]);
    if let Some(folder) = folder {
        tmux.keys(session, &["C-u"]);
        tmux.type_text(session, folder);
    }
    tmux.keys(session, &["Enter"]);
    let confirm = tmux.wait_for(session, &["This is what happens", expect]);
    let said = if code.is_some() { "joins as \"" } else { "A new group is founded" };
    assert!(flat(&confirm).contains(said), "{confirm}");
    tmux.keys(session, &["y"]);
    flat(&confirm)
}

#[test]
fn a_new_user_sets_up_two_synced_folders_with_only_the_tui() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&tmp.path().join("server"));
    let tmux = Tmux::new(tmp.path());
    let (home_a, home_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (data_a, data_b) = (home_a.join("data"), home_b.join("data"));
    // The laptop already has a vault: the wizard takes it in.
    let (mnt_a, mnt_b) = (home_a.join("PSync"), home_b.join("Vault"));
    std::fs::create_dir_all(&home_a).unwrap();
    std::fs::create_dir_all(mnt_b.join("notes")).unwrap();
    std::fs::write(mnt_b.join("notes/old.md"), "written before PSync\n").unwrap();
    let _logs = LogsOnFailure(vec![data_a.clone(), data_b.clone()]);
    let _unmount = Unmount(vec![(data_a.clone(), mnt_a.clone()), (data_b.clone(), mnt_b.clone())]);

    // The first device: the wizard founds the group and mounts ~/PSync.
    tmux.start("desktop", &home_a, &data_a);
    wizard(&tmux, "desktop", &url, "desktop", None, None, "does not exist: it is created");
    tmux.wait_for("desktop", &["mounted, syncing", "no other devices yet"]);
    assert!(is_mounted(&mnt_a));

    // It invites; the second device's wizard joins with the code typed in.
    tmux.keys("desktop", &["i"]);
    let screen = tmux.wait_for("desktop", &["Invite code: "]);
    let code = screen
        .split("Invite code: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|c| c.trim_end_matches('│').to_string())
        .unwrap();
    tmux.start("laptop", &home_b, &data_b);
    let confirm = wizard(&tmux, "laptop", &url, "laptop", Some(&code), Some("~/Vault"), "holds 1 files");
    assert!(confirm.contains(&format!("kept beside it as {}.before-psync", mnt_b.display())), "{confirm}");
    tmux.wait_for("laptop", &["waiting for the inviting device"]);
    // The first device shows who asks, and asks before signing it in.
    tmux.wait_for("desktop", &["A new device asks to join", "laptop", "fingerprint", "add it to the group"]);
    assert!(!data_b.join("roster.bin").exists(), "not in the group before the answer");
    tmux.keys("desktop", &["y"]);
    tmux.wait_for("desktop", &["Added laptop to the group."]);
    tmux.keys("desktop", &["Space"]);
    tmux.wait_for("laptop", &["mounted, syncing", "desktop", "in sync"]);
    tmux.wait_for("desktop", &["laptop", "in sync"]);
    assert!(is_mounted(&mnt_b));

    // The vault the laptop had reaches the desktop; the original is kept beside it.
    eventually(PATIENCE, "the laptop's vault on the desktop", || {
        std::fs::read_to_string(mnt_a.join("notes/old.md")).is_ok_and(|t| t == "written before PSync\n")
    });
    assert!(home_b.join("Vault.before-psync/notes/old.md").exists());
    tmux.wait_for("desktop", &["laptop changed notes/old.md"]);

    // A file written on one mount: in the other's change feed, from that device, and in sync.
    std::fs::write(mnt_a.join("hello.md"), "hello from the desktop\n").unwrap();
    tmux.wait_for("laptop", &["desktop changed hello.md", "in sync"]);
    assert_eq!(std::fs::read_to_string(mnt_b.join("hello.md")).unwrap(), "hello from the desktop\n");

    // The numbers on the dashboard are status's.
    let status = json(&psync(&data_b, &["status", "--json"]));
    let files = status["local"]["files"].as_u64().unwrap();
    let peer = &status["peers"][0];
    assert_eq!((peer["name"].as_str(), peer["in_sync"].as_bool()), (Some("desktop"), Some(true)), "{status}");
    tmux.wait_for(
        "laptop",
        &[
            &format!("{files} files"),
            &format!("seq {}", status["local"]["seq"]),
            &format!("↑ {} ", peer["outgoing_records"]),
            &format!("↓ {} ", peer["incoming_records"]),
            &format!(
                "full online connected {}",
                peer["path"]["kind"].as_str().map_or("", |k| if k == "lan" { "LAN" } else { k })
            ),
        ],
    );

    // The upload limit, changed in the TUI, reaches the running daemon and its config file.
    tmux.keys("desktop", &["s"]);
    tmux.wait_for("desktop", &["Upload limit"]);
    tmux.keys("desktop", &["Tab", "C-u"]);
    tmux.type_text("desktop", "1MiB");
    tmux.keys("desktop", &["Tab", "Enter"]);
    tmux.wait_for("desktop", &["in force now", "upload 1.0 MiB/s"]);
    let status = json(&psync(&data_a, &["status", "--json"]));
    assert_eq!(status["daemon"]["settings"]["upload_bytes_per_sec"], 1 << 20, "{status}");
    let config = std::fs::read_to_string(data_a.join("config.toml")).unwrap();
    assert!(config.contains("upload_limit = \"1MiB\""), "{config}");

    // q quits the TUI, not the daemon; the next start shows the dashboard.
    tmux.keys("laptop", &["q"]);
    tmux.wait_for("laptop", &["The daemons keep running", "psync tui exited with 0"]);
    assert!(is_mounted(&mnt_b), "quitting the TUI leaves the folder mounted");
    tmux.tmux(&["kill-session", "-t", "laptop"]);
    tmux.start("laptop", &home_b, &data_b);
    tmux.wait_for("laptop", &["mounted, syncing", "hello.md"]);

    // Unmount from the TUI on both: nothing is left mounted.
    tmux.keys("laptop", &["m"]);
    tmux.wait_for("laptop", &["unmounted", "not mounted"]);
    tmux.keys("desktop", &["m"]);
    tmux.wait_for("desktop", &["unmounted", "not mounted"]);
    assert!(!is_mounted(&mnt_a) && !is_mounted(&mnt_b), "nothing is left mounted");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(tmp.path().to_str().unwrap()), "{mounts}");
}

/// The commands the TUI runs, as scripts use them: `psync settings`
/// changes a running daemon's limits (and its config file), or only the
/// file when nothing is mounted; `psync role` makes a device read-only and
/// full again; `psync status` names who changed what.
#[test]
fn settings_and_roles_change_running_daemons() {
    use crate::group::{group_of_two, unmount_and_fsck, wait_for_content};
    use crate::mount::Mounted;
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let _logs = LogsOnFailure(vec![a.clone(), b.clone()]);
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));

    let out = json(&psync(&a, &["settings", "--upload-limit", "512KiB", "--debounce-ms", "50", "--json"]));
    assert_eq!(out["applied_live"], true, "{out}");
    let settings = &json(&psync(&a, &["status", "--json"]))["daemon"]["settings"];
    assert_eq!(
        (settings["upload_bytes_per_sec"].as_u64(), settings["debounce_ms"].as_u64()),
        (Some(512 << 10), Some(50))
    );
    let config = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(config.contains("upload_limit = \"512KiB\"") && config.contains("debounce_ms = 50"), "{config}");
    // Sync goes on under the new limit (a 1 MiB file takes about two seconds).
    let big = crate::mount::noise(1 << 20, 7);
    std::fs::write(ma.path("big.bin"), &big).unwrap();
    wait_for_content(&mb, "big.bin", &big);
    let bad = psync(&a, &["settings", "--debounce-ms", "99999999"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("maximum"), "{bad:?}");

    // Read-only: the laptop's edits stay on it; full again: they go out.
    let out = psync(&a, &["role", "laptop", "--read-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(PATIENCE, "the laptop to learn it is read-only", || {
        json(&psync(&b, &["status", "--json"]))["local"]["read_only"] == true
    });
    std::fs::write(mb.path("while-read-only.md"), b"stays here").unwrap();
    std::fs::write(ma.path("canary.md"), b"from the desktop").unwrap();
    wait_for_content(&mb, "canary.md", b"from the desktop");
    assert!(!ma.path("while-read-only.md").exists(), "a read-only device's change stays on it");
    let out = psync(&a, &["role", "laptop", "--full"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(PATIENCE, "the laptop to be full again", || {
        json(&psync(&b, &["status", "--json"]))["local"]["read_only"] == false
    });
    std::fs::write(mb.path("from-laptop.md"), b"full again").unwrap();
    wait_for_content(&ma, "from-laptop.md", b"full again");
    // What it changed while read-only goes out too, as a receive-only
    // folder's local changes do in Syncthing once it sends again.
    wait_for_content(&ma, "while-read-only.md", b"stays here");
    let devices = json(&psync(&a, &["devices", "--json"]));
    assert!(devices["devices"].as_array().unwrap().iter().all(|d| d["role"] == "Full"), "{devices}");

    // The change feed says who changed what.
    let status = json(&psync(&a, &["status", "--json"]));
    let feed = status["recent_changes"].as_array().unwrap();
    let row = feed.iter().find(|c| c["path"] == "from-laptop.md").unwrap_or_else(|| panic!("{status}"));
    assert_eq!((row["device"].as_str(), row["this_device"].as_bool()), (Some("laptop"), Some(false)));
    let seqs: Vec<u64> = feed.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {feed:?}");
    assert!(feed.iter().any(|c| c["path"] == "canary.md" && c["this_device"] == true), "{feed:?}");
    let text = String::from_utf8_lossy(&psync(&a, &["status"]).stdout).into_owned();
    assert!(text.contains("laptop         changed from-laptop.md"), "{text}");

    // Nothing mounted: the change is saved for the next mount.
    ma.unmount();
    let out = psync(&a, &["settings", "--download-limit", "2MiB"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the next mount"), "{out:?}");
    ma.mount();
    let settings = &json(&psync(&a, &["status", "--json"]))["daemon"]["settings"];
    assert_eq!(settings["download_bytes_per_sec"].as_u64(), Some(2 << 20));
    assert_eq!(settings["upload_bytes_per_sec"].as_u64(), Some(512 << 10), "kept from before");
    unmount_and_fsck(&[&ma, &mb]);
}
