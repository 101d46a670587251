//! Relay storage with real processes and mounts: the laptop and the
//! desktop are never online together, and the notes still arrive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::group::{finish_invite, group_of_two_with, start_invite};
use crate::mount::{noise, Mounted};
use crate::support::{eventually, lazy, psync, PATIENCE};
use crate::three::status;

/// Files under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Objects the relay holds (its ledgers aside).
fn relay_objects(relay: &Path) -> Vec<PathBuf> {
    // The directory's `GROUP/objects/...`, a bucket's `PREFIX/GROUP/o/...`.
    files(relay)
        .into_iter()
        .filter(|p| ["/objects/", "/o/"].iter().any(|dir| p.to_string_lossy().contains(dir)))
        .collect()
}

fn pair(tmp: &Path, relay: Option<&Path>) -> (crate::group::Server, String, PathBuf, PathBuf) {
    let relay_args: Vec<String> = relay.map(|r| vec!["--relay".into(), r.display().to_string()]).unwrap_or_default();
    pair_with(tmp, &relay_args, &[])
}

/// A signalling server run with `relay_args` and `env`, and two devices.
fn pair_with(
    tmp: &Path,
    relay_args: &[String],
    env: &[(&str, String)],
) -> (crate::group::Server, String, PathBuf, PathBuf) {
    let args: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    group_of_two_with(tmp, &args, env)
}

fn relay_status(data: &Path) -> serde_json::Value {
    status(data)["relay"].clone()
}

#[test]
fn closed_lid_notes_reach_the_other_device_through_the_relay_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = tmp.path().join("relay");
    let (_server, _url, a, b) = pair(tmp.path(), Some(&relay));
    closed_lid(a, b, &relay);
}

/// An S3-compatible server (s3s-fs, installed by `scripts/test.sh`) on
/// loopback, storing under `root`; stopped on drop.
struct S3Server(std::process::Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn closed_lid_works_the_same_on_an_s3_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s3");
    std::fs::create_dir_all(root.join("psync-relay")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (access, secret) = ("relay-test", "relay-test-secret-key");
    let child = std::process::Command::new(crate::conformance::tool("s3s-fs"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", access, "--secret-key", secret])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let _s3 = S3Server(child);
    eventually(PATIENCE, "the S3 server to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let env = [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", access.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let (_server, _url, a, b) = pair_with(tmp.path(), &["--relay".into(), "s3://psync-relay/vault".into()], &env);
    closed_lid(a, b, &root.join("psync-relay"));
}

/// The desktop writes, uploads and dies; the laptop, never online with it,
/// mounts and gets identical bytes; the relay's storage (`stored`) never
/// holds a name, note text or plaintext hash, and holds nothing once the
/// laptop took it.
fn closed_lid(a: PathBuf, b: PathBuf, relay: &Path) {
    let relay = relay.to_path_buf();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(b.join("group.key")).unwrap().permissions()) & 0o777,
        0o600,
        "the joined device got the content key, private"
    );

    // The desktop writes while the laptop has never been mounted.
    let desktop = Mounted::with_data(a.clone());
    let note = b"# Standup\nmarker-7f3a: the launch moves to Friday\n".to_vec();
    let pdf = noise(3 << 20, 11);
    std::fs::create_dir_all(desktop.path("Notes/Daily")).unwrap();
    std::fs::write(desktop.path("Notes/Daily/2026-12-06.md"), &note).unwrap();
    std::fs::write(desktop.path("paper-for-review.pdf"), &pdf).unwrap();
    std::fs::write(desktop.path("scratch.md"), b"gone soon").unwrap();
    std::fs::remove_file(desktop.path("scratch.md")).unwrap();
    std::fs::write(desktop.path("draft.md"), b"a draft, renamed").unwrap();
    std::fs::rename(desktop.path("draft.md"), desktop.path("Notes/final.md")).unwrap();

    // Its upload reports done; then it dies without a clean unmount.
    let uploaded = |s: &serde_json::Value| {
        s["reachable"] == true && s["to_upload"] == 0 && s["uploaded"].as_u64().unwrap_or(0) > 0
    };
    let what = lazy(|| format!("the desktop's upload to finish: {:#}", relay_status(&a)));
    eventually(PATIENCE, what, || {
        let local_seq = status(&a)["local"]["seq"].as_u64().unwrap_or(0);
        let r = relay_status(&a);
        // Everything committed so far is in (the rename is the last change).
        uploaded(&r) && local_seq > 0 && desktop.path("Notes/final.md").exists()
    });
    // Give the 2 s upload check one more round over the final sequence.
    let seq_then = status(&a)["local"]["seq"].as_u64().unwrap();
    let what = lazy(|| format!("an upload round after sequence {seq_then}: {:#}", relay_status(&a)));
    let flushed_then = relay_status(&a)["flushed_at_ms"].as_u64().unwrap_or(0);
    eventually(PATIENCE, what, || {
        let r = relay_status(&a);
        uploaded(&r) && r["flushed_at_ms"].as_u64().unwrap_or(0) > flushed_then
    });
    let pid = desktop.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually(PATIENCE, "the desktop's daemon to die", || crate::mount::is_dead(pid));

    // The relay holds only sealed bytes: no note text, no names, no
    // plaintext block hashes.
    let stored = relay_objects(&relay);
    assert!(!stored.is_empty(), "the desktop left objects at the relay");
    let first_block_hash = *blake3::hash(&pdf[..64 << 10]).as_bytes();
    for file in files(&relay) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [b"marker-7f3a".as_slice(), b"2026-12-06.md", b"final.md", b"Daily", &first_block_hash] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} holds {needle:?}", file.display());
        }
    }

    // The laptop mounts for the first time, the desktop never online again.
    let laptop = Mounted::with_data(b.clone());
    let what = lazy(|| format!("the laptop to get the desktop's notes: {:#}", status(&b)));
    eventually(PATIENCE, what, || {
        std::fs::read(laptop.path("Notes/Daily/2026-12-06.md")).is_ok_and(|d| d == note)
            && std::fs::read(laptop.path("paper-for-review.pdf")).is_ok_and(|d| d == pdf)
            && std::fs::read(laptop.path("Notes/final.md")).is_ok_and(|d| d == b"a draft, renamed")
    });
    assert!(!laptop.path("scratch.md").exists(), "the delete arrived too");
    assert!(!laptop.path("draft.md").exists(), "and the rename");
    let desktop_peer = status(&b)["peers"].as_array().unwrap().iter().any(|p| p["online"] == true);
    assert!(!desktop_peer, "the desktop was never online with the laptop");

    // Once the laptop acknowledged, the relay holds none of it.
    let what = lazy(|| format!("the relay to be empty: {:?}", relay_objects(&relay)));
    eventually(PATIENCE, what, || relay_objects(&relay).is_empty());
    let r = relay_status(&b);
    assert_eq!(r["refused"].as_array().map_or(0, Vec::len), 0, "{r:#}");
}

#[test]
fn a_flipped_byte_at_the_relay_is_refused_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = tmp.path().join("relay");
    let (_server, _url, a, b) = pair(tmp.path(), Some(&relay));
    let desktop = Mounted::with_data(a.clone());
    std::fs::write(desktop.path("tampered.md"), b"this object will be changed at the relay").unwrap();
    desktop.unmount();
    let stored = relay_objects(&relay);
    assert_eq!(stored.len(), 1, "the unmount flushed one object: {stored:?}");
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&stored[0], bytes).unwrap();

    let laptop = Mounted::with_data(b.clone());
    let what = lazy(|| format!("the laptop to refuse the object: {:#}", relay_status(&b)));
    eventually(PATIENCE, what, || {
        relay_status(&b)["refused"].as_array().is_some_and(|r| r.iter().any(|w| w.to_string().contains("refused")))
    });
    assert!(!laptop.path("tampered.md").exists(), "nothing of it was installed");
}

#[test]
fn without_a_relay_peers_still_sync_and_status_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, _url, a, b) = pair(tmp.path(), None);
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    std::fs::write(desktop.path("direct.md"), b"peer to peer").unwrap();
    eventually(PATIENCE, "the note to arrive directly", || {
        std::fs::read(laptop.path("direct.md")).is_ok_and(|d| d == b"peer to peer")
    });
    let what = lazy(|| format!("the status to explain the relay: {:#}", relay_status(&a)));
    eventually(Duration::from_secs(60), what, || {
        let r = relay_status(&a);
        r["reachable"] == false && r["last_error"].as_str().is_some_and(|e| e.contains("runs no relay"))
    });
}

#[test]
fn a_removal_re_keys_and_the_remaining_device_picks_up_the_new_key_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = tmp.path().join("relay");
    let (_server, url, a, b) = pair(tmp.path(), Some(&relay));
    let c = tmp.path().join("tablet");
    let (inviter, code) = start_invite(&a);
    let joined = psync(&c, &["join", &code, "--name", "tablet", "--server", &url]);
    assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
    finish_invite(inviter);
    let key_entries = |dir: &Path| std::fs::read(dir.join("group.key")).unwrap().len() / 36;
    assert_eq!((key_entries(&a), key_entries(&b), key_entries(&c)), (1, 1, 1));

    // The desktop removes the tablet: a new key, wrapped for the laptop.
    let removed = psync(&a, &["remove", "tablet"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(said.contains("epoch 2") && said.contains("left at the relay"), "{said}");
    assert_eq!(key_entries(&a), 2);

    let desktop = Mounted::with_data(a.clone());
    std::fs::write(desktop.path("after-removal.md"), b"only for the remaining devices").unwrap();
    desktop.unmount();

    // The laptop, never online with the desktop, takes the key and the note.
    let laptop = Mounted::with_data(b.clone());
    let what = lazy(|| format!("the laptop to get the note: {:#}", relay_status(&b)));
    eventually(PATIENCE, what, || {
        std::fs::read(laptop.path("after-removal.md")).is_ok_and(|d| d == b"only for the remaining devices")
    });
    assert_eq!(key_entries(&b), 2, "the laptop holds the new key");
    // The removed tablet has neither the key nor access.
    assert_eq!(key_entries(&c), 1);
    let tablet = Mounted::with_data(c.clone());
    let what = lazy(|| format!("the tablet to be refused by the relay: {:#}", relay_status(&c)));
    eventually(PATIENCE, what, || relay_status(&c)["reachable"] == false);
    assert!(!tablet.path("after-removal.md").exists());
}

#[test]
fn with_every_member_online_nothing_goes_to_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = tmp.path().join("relay");
    let (_server, _url, a, b) = pair(tmp.path(), Some(&relay));
    // Room for a loaded machine: the laptop takes the note and says so well
    // within 30 s; a device that ignored its acknowledgement would still
    // upload after that and fail the check below.
    std::fs::write(a.join("config.toml"), "[relay]\nupload_delay_ms = 30000\n").unwrap();
    let desktop = Mounted::with_data(a.clone());
    let laptop = Mounted::with_data(b.clone());
    crate::three::wait_for_status(&a, &[("laptop", true, true)]);
    std::fs::write(desktop.path("both-online.md"), b"taken directly").unwrap();
    eventually(PATIENCE, "the note to arrive directly", || {
        std::fs::read(laptop.path("both-online.md")).is_ok_and(|d| d == b"taken directly")
    });
    crate::three::wait_for_status(&a, &[("laptop", true, true)]);
    // An upload check after the laptop took everything: nothing to send.
    let after = relay_status(&a)["flushed_at_ms"].as_u64().unwrap_or(0);
    let what = lazy(|| format!("an upload check with nothing to upload: {:#}", relay_status(&a)));
    eventually(PATIENCE, what, || {
        let r = relay_status(&a);
        r["flushed_at_ms"].as_u64().unwrap_or(0) > after && r["to_upload"] == 0
    });
    let r = relay_status(&a);
    assert_eq!(r["uploaded"], 0, "{r:#}");
    assert!(relay_objects(&relay).is_empty(), "{:?}", relay_objects(&relay));
}

/// A private D-Bus daemon standing in for the system bus (logind is not
/// running here: the test sends logind's signal itself); stopped on drop.
struct Bus(std::process::Child, PathBuf);

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bus(dir: &Path) -> Bus {
    let socket = dir.join("system_bus_socket");
    let config = dir.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="signal"/>
    <allow receive_type="signal"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
            socket.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .arg("--nofork")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dbus-daemon (package dbus-daemon, installed by scripts/install-deps.sh)");
    eventually(PATIENCE, "the private system bus to listen", || socket.exists());
    Bus(child, socket)
}

#[test]
fn a_machine_about_to_sleep_leaves_its_changes_at_the_relay_first() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = tmp.path().join("relay");
    let (_server, _url, a, b) = pair(tmp.path(), Some(&relay));
    // Only a flush may upload: the usual wait is an hour here.
    std::fs::write(a.join("config.toml"), "[relay]\nupload_delay_ms = 3600000\n").unwrap();
    let bus = start_bus(tmp.path());
    let bus_address = format!("unix:path={}", bus.1.display());

    let mnt_dir = tempfile::tempdir().unwrap();
    let mnt = mnt_dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = crate::support::psync_command()
        .arg("--data-dir")
        .arg(&a)
        .args(["mount", mnt.to_str().unwrap()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let desktop = Mounted { tmp: mnt_dir, data: a.clone(), mnt, flags: Vec::new() };
    eventually(PATIENCE, "the relay to be reachable", || relay_status(&a)["reachable"] == true);
    std::fs::write(desktop.path("before-sleep.md"), b"written just before the lid closed").unwrap();
    let what = lazy(|| format!("the desktop to know it has something to upload: {:#}", relay_status(&a)));
    eventually(PATIENCE, what, || relay_status(&a)["to_upload"].as_u64().unwrap_or(0) > 0);
    assert_eq!(relay_status(&a)["uploaded"], 0, "nothing went before the sleep");

    // logind: "about to sleep" (sent again until the daemon's watch has
    // subscribed: a signal before that is missed, as on a real bus).
    let what = lazy(|| format!("the flush before sleep: {:#}", relay_status(&a)));
    eventually(PATIENCE, what, || {
        let sent = std::process::Command::new("dbus-send")
            .arg(format!("--bus={bus_address}"))
            .args(["--type=signal", "/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForSleep"])
            .arg("boolean:true")
            .status()
            .expect("dbus-send (package dbus-bin)");
        assert!(sent.success());
        let r = relay_status(&a);
        r["uploaded"].as_u64().unwrap_or(0) > 0 && r["to_upload"] == 0
    });
    let log = std::fs::read_to_string(a.join("psync.log")).unwrap();
    assert!(log.contains("flushed before sleep"), "the daemon says why it uploaded");
    // The desktop never wakes; the laptop gets the note from the relay.
    let pid = desktop.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually(PATIENCE, "the desktop's daemon to die", || crate::mount::is_dead(pid));
    let laptop = Mounted::with_data(b.clone());
    eventually(PATIENCE, "the note to reach the laptop", || {
        std::fs::read(laptop.path("before-sleep.md")).is_ok_and(|d| d == b"written just before the lid closed")
    });
}
