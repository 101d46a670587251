//! `psync signal`, `psync init` and `psync devices` as processes.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::mount::Mounted;
use crate::support::{eventually, json, lazy, psync, LogsOnFailure, PATIENCE};

pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_server(data: &Path) -> (Server, String) {
    start_server_env(data, &[], &[])
}

/// [`start_server`] with more `psync signal` flags (e.g. `--relay DIR`) and
/// environment variables (e.g. S3 credentials).
pub fn start_server_env(data: &Path, flags: &[&str], env: &[(&str, String)]) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = crate::support::psync_command()
        .arg("--data-dir")
        .arg(data)
        .args(["signal", "--listen", &format!("127.0.0.1:{port}")])
        .args(flags)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start psync signal");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on ws://127.0.0.1:"), "{line}");
    (Server(child), format!("ws://127.0.0.1:{port}"))
}

#[test]
fn init_founds_a_group_and_devices_lists_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, url) = start_server(&tmp.path().join("server"));
    let dev = tmp.path().join("desktop");
    let out = psync(&dev, &["init", "--name", "desktop", "--server", &url, "--group-name", "notes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dev.join("device.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let listed = json(&psync(&dev, &["devices", "--json"]));
    assert_eq!(listed["source"], "server");
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["name"], "desktop");
    assert_eq!(devices[0]["role"], "Full");
    // A second identity in the same data dir is refused.
    let again = psync(&dev, &["init", "--name", "other", "--server", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a device identity"));
    // With the server gone, the verified local copy answers.
    drop(server);
    let listed = json(&psync(&dev, &["devices", "--json"]));
    assert_eq!(listed["source"], "local copy (server unreachable)");
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn clear_errors_for_signal_and_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let out = psync(tmp.path(), &["signal", "--listen", "0.0.0.0:7700"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only for loopback"), "{out:?}");
    let out = psync(tmp.path(), &["signal", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read certificates"), "{out:?}");
    let out = psync(tmp.path(), &["devices"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `psync init`"), "{out:?}");
    let out = psync(&tmp.path().join("named"), &["init", "--name", "desk\u{1b}[2J", "--server", "ws://127.0.0.1:9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("control characters"), "{out:?}");
    // What an init or join stopped halfway left (keys, no identity file)
    // is moved aside, not in the way and not deleted.
    let (_server, url) = start_server(&tmp.path().join("server"));
    let halfway = tmp.path().join("halfway");
    std::fs::create_dir_all(&halfway).unwrap();
    std::fs::write(halfway.join("device.key"), "left by a killed join").unwrap();
    std::fs::write(halfway.join("dtls.pem"), "left by a killed join").unwrap();
    let out = psync(&halfway, &["init", "--name", "desktop", "--server", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not finish"), "{out:?}");
    let aside: Vec<_> = std::fs::read_dir(&halfway)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("unfinished-identity-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read_to_string(aside[0].path().join("device.key")).unwrap(), "left by a killed join");
    assert!(json(&psync(&halfway, &["devices", "--json"]))["devices"].as_array().unwrap().len() == 1);
    // No server at that address: init fails and leaves no half identity behind.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dev = tmp.path().join("dev");
    let out = psync(&dev, &["init", "--name", "x", "--server", &format!("ws://127.0.0.1:{port}")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot register the group"), "{out:?}");
    assert!(!dev.join("device.key").exists());
}

/// Starts `psync invite --yes` and returns it with the code from its first line.
pub fn start_invite(dev: &Path) -> (Child, String) {
    let mut child = crate::support::psync_command()
        .arg("--data-dir")
        .arg(dev)
        .args(["invite", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psync invite");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().to_string())
}

/// Waits for `psync invite` to finish, and fails with what it said if it did
/// not succeed.
pub fn finish_invite(inviter: Child) {
    let out = inviter.wait_with_output().unwrap();
    assert!(out.status.success(), "psync invite failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[test]
fn invite_and_join_add_a_confirmed_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&tmp.path().join("server"));
    let (a, b) = (tmp.path().join("desktop"), tmp.path().join("laptop"));
    assert!(psync(&a, &["init", "--name", "desktop", "--server", &url]).status.success());
    let (inviter, code) = start_invite(&a);
    assert!(regex_like_code(&code), "the first line is the code alone: {code:?}");
    let joined = psync(&b, &["join", &code, "--name", "laptop", "--server", &url]);
    assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
    let invited = inviter.wait_with_output().unwrap();
    assert!(invited.status.success(), "{}", String::from_utf8_lossy(&invited.stderr));
    for dev in [&a, &b] {
        let listed = json(&psync(dev, &["devices", "--json"]));
        let names: Vec<&str> =
            listed["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"desktop") && names.contains(&"laptop"));
        // Each device's saved DTLS certificate is pinned in the roster.
        let me = listed["devices"].as_array().unwrap().iter().find(|d| d["this_device"] == true).unwrap().clone();
        let saved = psync_signal::dtls::DtlsCertificate::load(dev).unwrap();
        assert_eq!(me["dtls_fingerprint"], saved.fingerprint());
    }
    // A code works once.
    let again = psync(&tmp.path().join("third"), &["join", &code, "--name", "x", "--server", &url]);
    assert!(!again.status.success());
}

#[test]
fn a_wrong_code_burns_the_invite() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&tmp.path().join("server"));
    let a = tmp.path().join("desktop");
    assert!(psync(&a, &["init", "--name", "desktop", "--server", &url]).status.success());
    let (inviter, code) = start_invite(&a);
    let (mailbox, words) = code.split_once('-').unwrap();
    let wrong_word = if words.starts_with("apple") { "acid" } else { "apple" };
    let wrong = format!("{mailbox}-{wrong_word}-{wrong_word}");
    let attacker = psync(&tmp.path().join("evil"), &["join", &wrong, "--name", "evil", "--server", &url]);
    assert!(!attacker.status.success());
    assert!(!tmp.path().join("evil/device.key").exists(), "no identity from a failed join");
    let invited = inviter.wait_with_output().unwrap();
    assert!(!invited.status.success());
    assert!(
        String::from_utf8_lossy(&invited.stderr).contains("burned"),
        "{}",
        String::from_utf8_lossy(&invited.stderr)
    );
    // The right code no longer works either: one guess per code.
    let late = psync(&tmp.path().join("laptop"), &["join", &code, "--name", "laptop", "--server", &url]);
    assert!(!late.status.success());
    let listed = json(&psync(&a, &["devices", "--json"]));
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1, "nobody was added");
}

fn regex_like_code(code: &str) -> bool {
    let parts: Vec<&str> = code.split('-').collect();
    parts.len() == 3 && parts[0].len() == 4 && parts[0].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn a_removed_device_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&tmp.path().join("server"));
    let (a, b) = (tmp.path().join("desktop"), tmp.path().join("phone"));
    assert!(psync(&a, &["init", "--name", "desktop", "--server", &url]).status.success());
    let mut inviter = crate::support::psync_command()
        .arg("--data-dir")
        .arg(&a)
        .args(["invite", "--yes", "--read-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut code = String::new();
    std::io::BufReader::new(inviter.stdout.take().unwrap()).read_line(&mut code).unwrap();
    assert!(psync(&b, &["join", code.trim(), "--name", "phone", "--server", &url]).status.success());
    assert!(inviter.wait().unwrap().success());
    let listed = json(&psync(&a, &["devices", "--json"]));
    let phone = listed["devices"].as_array().unwrap().iter().find(|d| d["name"] == "phone").unwrap().clone();
    assert_eq!(phone["role"], "ReadOnly");
    // A read-only device may not change the roster.
    let out = psync(&b, &["remove", "desktop"]);
    assert!(!out.status.success(), "a read-only device cannot remove others");
    let out = psync(&a, &["remove", "phone"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = json(&psync(&a, &["devices", "--json"]));
    let phone = listed["devices"].as_array().unwrap().iter().find(|d| d["name"] == "phone").unwrap().clone();
    assert_eq!(phone["removed"], true);
    // The server refuses the revoked device: it falls back to its local copy.
    let listed = json(&psync(&b, &["devices", "--json"]));
    assert_eq!(listed["source"], "local copy (server unreachable)");
    let out = psync(&a, &["remove", "desktop"]);
    assert!(!out.status.success(), "the last full device cannot be removed");
}

/// Two devices of one group, each mounted: files written through one mount
/// appear through the other, over the signalling server and WebRTC on
/// loopback, both ways.
#[test]
fn files_written_on_one_mount_appear_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());

    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let pdf = crate::mount::noise(3_000_000, 2);
    std::fs::create_dir(ma.path("notes")).unwrap();
    std::fs::write(ma.path("notes/today.md"), b"# Today\n- sync works\n").unwrap();
    std::fs::write(ma.path("paper.pdf"), &pdf).unwrap();
    std::fs::write(mb.path("from-laptop.md"), b"written on the laptop").unwrap();

    let _logs = LogsOnFailure(vec![a.clone(), b.clone()]);
    let arrived = |m: &Mounted, rel: &str, want: &[u8]| std::fs::read(m.path(rel)).is_ok_and(|got| got == want);
    eventually(PATIENCE, "the mounts to converge", || {
        arrived(&mb, "notes/today.md", b"# Today\n- sync works\n")
            && arrived(&mb, "paper.pdf", &pdf)
            && arrived(&ma, "from-laptop.md", b"written on the laptop")
    });
    // An edit of a file the other mount has read (and the kernel cached,
    // and keeps across opens) shows there too: longer, shorter, and the
    // same size, where only the content tells.
    for edit in [&b"# Today\n- sync works\n- edited on the laptop, a longer line\n"[..], b"# short", b"# SHORT"] {
        std::fs::write(mb.path("notes/today.md"), edit).unwrap();
        wait_for_content(&ma, "notes/today.md", edit);
    }
    let mut edited = pdf.clone();
    edited[1_500_000] ^= 0xFF;
    assert_eq!(std::fs::read(mb.path("paper.pdf")).unwrap(), pdf, "read (and cached) on b before the edit");
    std::fs::write(ma.path("paper.pdf"), &edited).unwrap();
    wait_for_content(&mb, "paper.pdf", &edited);
    for dev in [&a, &b] {
        let log = std::fs::read_to_string(dev.join("psync.log")).unwrap();
        assert!(log.contains("connected"), "the daemon logs its peer connection:\n{log}");
    }
    unmount_and_fsck(&[&ma, &mb]);
}

/// A signalling server and two devices of one group (not mounted).
pub fn group_of_two(tmp: &Path) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    let (server, _url, a, b) = group_of_two_with(tmp, &[], &[]);
    (server, a, b)
}

/// [`group_of_two`] with a server run with more flags and environment
/// variables; also its URL.
pub fn group_of_two_with(
    tmp: &Path,
    flags: &[&str],
    env: &[(&str, String)],
) -> (Server, String, std::path::PathBuf, std::path::PathBuf) {
    let (server, url) = start_server_env(&tmp.join("server"), flags, env);
    let (a, b) = (tmp.join("desktop"), tmp.join("laptop"));
    assert!(psync(&a, &["init", "--name", "desktop", "--server", &url]).status.success());
    let (inviter, code) = start_invite(&a);
    let joined = psync(&b, &["join", &code, "--name", "laptop", "--server", &url]);
    assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
    finish_invite(inviter);
    (server, url, a, b)
}

/// Unmounts every device, then checks every store is consistent.
pub fn unmount_and_fsck(mounts: &[&Mounted]) {
    for m in mounts {
        m.unmount();
    }
    for m in mounts {
        m.fsck();
    }
}

pub fn wait_for_content(m: &Mounted, rel: &str, want: &[u8]) {
    eventually(PATIENCE, format!("{rel} to arrive in {}", m.mnt.display()), || {
        std::fs::read(m.path(rel)).ok().as_deref() == Some(want)
    });
}

/// Unmount = offline: changes made elsewhere meanwhile arrive when the
/// device mounts again, and its own offline changes go out.
#[test]
fn an_unmounted_device_catches_up_when_mounted_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::write(ma.path("first.md"), b"before").unwrap();
    wait_for_content(&mb, "first.md", b"before");

    mb.unmount();
    std::fs::write(ma.path("first.md"), b"changed while the laptop was away").unwrap();
    std::fs::write(ma.path("new.md"), b"created while the laptop was away").unwrap();
    std::fs::remove_file(ma.path("first.md")).unwrap();
    std::fs::write(ma.path("first.md"), b"recreated").unwrap();
    ma.unmount();
    // Both offline now; the laptop changes something of its own.
    mb.mount();
    std::fs::write(mb.path("offline.md"), b"written offline on the laptop").unwrap();
    ma.mount();

    wait_for_content(&mb, "new.md", b"created while the laptop was away");
    wait_for_content(&mb, "first.md", b"recreated");
    wait_for_content(&ma, "offline.md", b"written offline on the laptop");
    unmount_and_fsck(&[&ma, &mb]);
}

/// Both devices edit the same note while apart: after they meet, both
/// mounts show the same winner and the same conflict copy, and neither
/// edit is lost.
#[test]
fn concurrent_edits_keep_both_versions_identically_on_both_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::write(ma.path("plan.md"), b"shared start").unwrap();
    wait_for_content(&mb, "plan.md", b"shared start");

    mb.unmount();
    std::fs::write(ma.path("plan.md"), b"edited on the desktop").unwrap();
    ma.unmount();
    mb.mount();
    std::fs::write(mb.path("plan.md"), b"edited on the laptop").unwrap();
    ma.mount();

    let listing = |m: &Mounted| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&m.mnt)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        files.sort();
        files
    };
    let what = lazy(|| format!("agreement:\n{:?}\n{:?}", listing(&ma), listing(&mb)));
    eventually(PATIENCE, what, || {
        let (la, lb) = (listing(&ma), listing(&mb));
        la == lb && la.len() == 2
    });
    let la = listing(&ma);
    let contents: Vec<&[u8]> = la.iter().map(|(_, c)| c.as_slice()).collect();
    assert!(contents.contains(&&b"edited on the desktop"[..]), "{la:?}");
    assert!(contents.contains(&&b"edited on the laptop"[..]), "{la:?}");
    assert!(la.iter().any(|(n, _)| n == "plan.md"), "{la:?}");
    assert!(la.iter().any(|(n, _)| n.starts_with("plan.sync-conflict-") && n.ends_with(".md")), "{la:?}");
    unmount_and_fsck(&[&ma, &mb]);
}

/// The receiving daemon is SIGKILLed in the middle of a transfer: after a
/// restart it converges and its store is consistent.
#[test]
fn a_receiver_killed_mid_transfer_converges_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::write(ma.path("ready.md"), b"connected").unwrap();
    wait_for_content(&mb, "ready.md", b"connected");

    let big = crate::mount::noise(144_000_000, 3);
    std::fs::write(ma.path("video.bin"), &big).unwrap();
    // Kill as soon as the receiver is fetching (a fixed sleep raced faster transfers).
    eventually(PATIENCE, "the transfer to start", || {
        json(&psync(&b, &["status", "--json"]))["local"]["wanted_blocks"].as_u64().unwrap_or(0) > 0
    });
    // Files appear only when complete, so this means: not yet transferred.
    assert!(std::fs::metadata(mb.path("video.bin")).is_err(), "the transfer must still be running when killed");
    let pid = mb.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Its auto-unmount helper then unmounts; until it has, the mount still
    // looks alive. A stale mount (ENOTCONN) is one `psync mount` recovers.
    let stale = || std::fs::metadata(&mb.mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    eventually(PATIENCE, "the killed daemon and its mount to be gone (or stale)", || {
        crate::mount::is_dead(pid) && (!mb.is_mounted() || stale())
    });
    mb.mount(); // recovers the dead daemon's mount first
    wait_for_content(&mb, "video.bin", &big);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A 256 MiB file crosses and verifies (correctness only; no timing is
/// asserted).
#[test]
fn a_256_mib_file_transfers_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let big = crate::mount::noise(256 << 20, 4);
    std::fs::write(ma.path("archive.bin"), &big).unwrap();
    eventually(PATIENCE * 5, "256 MiB to arrive", || {
        std::fs::metadata(mb.path("archive.bin")).map(|m| m.len()).ok() == Some(big.len() as u64)
    });
    let got = std::fs::read(mb.path("archive.bin")).unwrap();
    assert!(got == big, "the received file differs");
    ma.unmount();
    mb.unmount();
    mb.fsck();
}

/// `psync invite` on a device whose daemon is running: both hold a
/// signalling connection; the invite completes and the new device syncs.
#[test]
fn invite_works_while_the_inviter_is_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&tmp.path().join("server"));
    let (a, b) = (tmp.path().join("desktop"), tmp.path().join("laptop"));
    assert!(psync(&a, &["init", "--name", "desktop", "--server", &url]).status.success());
    let ma = Mounted::with_data(a.clone());
    std::fs::write(ma.path("welcome.md"), b"hello new device").unwrap();
    let (inviter, code) = start_invite(&a);
    // The invite runs beside the daemon's own signalling connection.
    eventually(PATIENCE, "the mounted desktop to be logged in", || {
        json(&psync(&a, &["status", "--json"]))["signalling"]["connected"] == true
    });
    let joined = psync(&b, &["join", &code, "--name", "laptop", "--server", &url]);
    assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
    finish_invite(inviter);
    let mb = Mounted::with_data(b.clone());
    // The desktop's daemon learns of the new member from the roster and connects.
    wait_for_content(&mb, "welcome.md", b"hello new device");
    ma.unmount();
    mb.unmount();
}

/// A data dir whose store predates the identity cannot sync (the store's
/// device id is not the key's): init refuses it with a way forward.
#[test]
fn init_refuses_a_data_dir_with_an_older_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(&tmp.path().join("server"));
    let m = Mounted::new();
    m.unmount();
    let out = psync(&m.data, &["init", "--name", "desktop", "--server", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fresh --data-dir"), "{err}");
    assert!(!m.data.join("identity.json").exists(), "nothing half-made");
}

/// Applications watching the receiving mount (Obsidian, editors: inotify)
/// hear of a peer's creates, edits, deletes and renames as if a local
/// program had made them, and the replay that raises the events is not
/// synced back as a change of the receiving device.
#[test]
fn inotify_events_fire_on_the_receiving_mount_for_remote_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::create_dir(ma.path("dir")).unwrap();
    std::fs::write(ma.path("dir/inner.md"), b"inner").unwrap();
    std::fs::write(ma.path("edit.md"), b"first").unwrap();
    std::fs::write(ma.path("gone.md"), b"to be deleted").unwrap();
    wait_for_content(&mb, "dir/inner.md", b"inner");
    wait_for_content(&mb, "edit.md", b"first");
    wait_for_content(&mb, "gone.md", b"to be deleted");

    let mut watch = Command::new("inotifywait")
        .args(["-m", "-r", "--format", "%e %w%f"])
        .arg(&mb.mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inotifywait (Debian package inotify-tools, installed by scripts/install-deps.sh)");
    let mut ready = String::new();
    let mut stderr = std::io::BufReader::new(watch.stderr.take().unwrap());
    while !ready.contains("Watches established") {
        assert!(stderr.read_line(&mut ready).unwrap() > 0, "inotifywait failed: {ready}");
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    std::fs::write(ma.path("new.md"), b"created on the desktop").unwrap();
    std::fs::write(ma.path("edit.md"), b"edited on the desktop").unwrap();
    std::fs::remove_file(ma.path("gone.md")).unwrap();
    std::fs::create_dir(ma.path("made")).unwrap();
    std::fs::rename(ma.path("dir/inner.md"), ma.path("dir/renamed.md")).unwrap();

    let m = mb.mnt.display().to_string();
    let mut want: Vec<(String, String)> = vec![
        ("CREATE".into(), format!("{m}/new.md")),
        ("MODIFY".into(), format!("{m}/edit.md")),
        ("CLOSE_WRITE".into(), format!("{m}/edit.md")),
        ("DELETE".into(), format!("{m}/gone.md")),
        ("CREATE,ISDIR".into(), format!("{m}/made")),
        ("DELETE".into(), format!("{m}/dir/inner.md")),
        ("CREATE".into(), format!("{m}/dir/renamed.md")),
    ];
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !want.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no inotify events for {want:?}; saw {seen:#?}"));
        if let Some((events, path)) = line.split_once(' ') {
            let events: Vec<&str> = events.split(',').collect();
            want.retain(|(e, p)| !(p == path && e.split(',').all(|one| events.contains(&one))));
        }
        seen.push(line);
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // What the events announced is what the mount shows.
    assert_eq!(std::fs::read(mb.path("new.md")).unwrap(), b"created on the desktop");
    assert_eq!(std::fs::read(mb.path("edit.md")).unwrap(), b"edited on the desktop");
    assert_eq!(std::fs::read(mb.path("dir/renamed.md")).unwrap(), b"inner");
    assert!(!mb.path("gone.md").exists() && !mb.path("dir/inner.md").exists() && mb.path("made").is_dir());

    // The replay is not a change of the laptop's: both sides hold the same
    // history for the edited file, and it has exactly the desktop's two versions.
    // Once each side has applied all the other announced, a replay mistaken
    // for a local change would show as a third version.
    for dir in [&a, &b] {
        eventually(PATIENCE, "the devices to be in sync", || {
            json(&psync(dir, &["status", "--json"]))["peers"][0]["in_sync"] == true
        });
    }
    let log = |dir: &Path| json(&psync(dir, &["store", "log", "edit.md", "--json"]));
    let (log_a, log_b) = (log(&a), log(&b));
    let sizes =
        |log: &serde_json::Value| log.as_array().unwrap().iter().map(|v| v["size"].as_u64()).collect::<Vec<_>>();
    assert_eq!(sizes(&log_a), vec![Some(5), Some(21)], "{log_a:#}");
    assert_eq!(sizes(&log_b), sizes(&log_a), "{log_b:#}");
    unmount_and_fsck(&[&ma, &mb]);
}

/// A file open for writing on one mount is not replaced by a peer's edit
/// while it is open (the edit is held, and status says so); when it is
/// closed, both contents survive on both mounts (winner and conflict copy).
#[test]
fn a_file_open_for_writing_keeps_its_content_when_a_peer_edits_it() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::write(ma.path("draft.md"), b"shared start\n").unwrap();
    wait_for_content(&mb, "draft.md", b"shared start\n");

    let mut open = std::fs::OpenOptions::new().write(true).truncate(true).open(mb.path("draft.md")).unwrap();
    open.write_all(b"laptop, still typing\n").unwrap();
    open.sync_data().unwrap();
    std::fs::write(ma.path("draft.md"), b"desktop's edit\n").unwrap();
    // Time for the edit to reach the laptop (it shows as held in status).
    eventually(PATIENCE, "the desktop's edit to be held on the laptop", || {
        json(&psync(&b, &["status", "--json"]))["local"]["held_records"].as_u64() == Some(1)
    });
    open.write_all(b"and done\n").unwrap();
    drop(open);

    let contents = |m: &Mounted| {
        let mut all: Vec<Vec<u8>> = std::fs::read_dir(&m.mnt)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("draft"))
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        all.sort();
        all
    };
    // Both final texts, identically on both mounts. (If the laptop's fsync'd
    // first text reached the desktop after its edit, that was a conflict
    // too, and it is kept as well.)
    let done = |c: &Vec<Vec<u8>>| {
        c.contains(&b"desktop's edit\n".to_vec()) && c.contains(&b"laptop, still typing\nand done\n".to_vec())
    };
    let history =
        |m: &Mounted| String::from_utf8_lossy(&psync(&m.data, &["store", "log", "draft.md"]).stdout).into_owned();
    let names = |m: &Mounted| std::fs::read_dir(&m.mnt).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>();
    let what = lazy(|| {
        format!(
            "both versions to survive on both: {:?} {:?}\ndesktop {:?}:\n{}\nlaptop {:?}:\n{}",
            contents(&ma),
            contents(&mb),
            names(&ma),
            history(&ma),
            names(&mb),
            history(&mb)
        )
    });
    eventually(PATIENCE, what, || done(&contents(&ma)) && contents(&ma) == contents(&mb));
    unmount_and_fsck(&[&ma, &mb]);
}

/// The config file and `psync mount`'s flags reach the daemon (status
/// reports the settings it runs with, flags over the file); a mistake in
/// the file stops the mount with an error naming the file and the key.
#[test]
fn the_config_file_and_mount_flags_reach_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    std::fs::write(b.join("config.toml"), "debounce = 5\n").unwrap();
    let mnt = tmp.path().join("laptop-mnt");
    std::fs::create_dir(&mnt).unwrap();
    let refused = psync(&b, &["mount", mnt.to_str().unwrap()]);
    let says = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(says.contains("unknown field `debounce`") && says.contains("config.toml"), "{says}");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(mnt.to_str().unwrap()),
        "nothing is mounted after a refused config"
    );
    let bad_flag = psync(&b, &["mount", mnt.to_str().unwrap(), "--upload-limit", "lots"]);
    assert!(!bad_flag.status.success() && String::from_utf8_lossy(&bad_flag.stderr).contains("--upload-limit"));

    std::fs::write(
        a.join("config.toml"),
        "debounce_ms = 40\nupload_limit = \"8MiB\"\n[ice]\nbind = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    std::fs::write(b.join("config.toml"), "download_limit = \"4MiB\"\n").unwrap();
    let ma = Mounted::with_flags(a.clone(), &["--debounce-ms", "0"]);
    let mb = Mounted::with_data(b.clone());
    let settings = |data: &Path| json(&psync(data, &["status", "--json"]))["daemon"]["settings"].clone();
    let sa = settings(&a);
    assert_eq!(sa["debounce_ms"], 0, "the flag wins over the file: {sa:#}");
    assert_eq!(sa["upload_bytes_per_sec"], 8 << 20);
    assert!(sa["download_bytes_per_sec"].is_null());
    assert_eq!(sa["config_file"], a.join("config.toml").canonicalize().unwrap().to_str().unwrap());
    let sb = settings(&b);
    assert_eq!((sb["debounce_ms"].clone(), sb["download_bytes_per_sec"].clone()), (100.into(), (4 << 20).into()));
    assert_eq!(sb["ice_bind"], serde_json::json!({"addrs": ["127.0.0.1:0"]}));

    // And they sync with them.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(ma.path("limited.bin"), &data).unwrap();
    wait_for_content(&mb, "limited.bin", &data);
    ma.unmount();
    mb.unmount();
}

/// Regression: with the kernel's writeback cache the kernel keeps file
/// sizes itself, so a peer's edit that changes a cached file's length by a
/// byte used to read back cut to the old size. A reader polls the file the
/// whole time (as the latency benchmark does), keeping it in B's cache.
#[test]
fn edits_of_a_file_a_reader_keeps_cached_show_in_full() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    for i in 0..12usize {
        // Lengths go up and down by a byte or two.
        let text = format!("# trial {i}\n{}\n", "7".repeat(10 + (i * 7) % 5));
        std::fs::write(ma.path("hot.md"), &text).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let seen = std::fs::read(mb.path("hot.md")).unwrap_or_default();
            if seen == text.as_bytes() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "edit {i} never showed in full: {:?} instead of {text:?}",
                String::from_utf8_lossy(&seen)
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    ma.unmount();
    mb.unmount();
}
