//! The README's first command: `scripts/demo.sh` starts two mounted devices
//! that sync, leaves them running, and `scripts/demo.sh stop` stops all of
//! it without a stale mount. Run with the binary under test (PSYNC_BIN skips
//! installing and building).

use crate::support::{eventually, lazy, PATIENCE};
use std::path::Path;
use std::process::Command;

fn demo(dir: &Path, action: &str) -> std::process::Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .arg(action)
        .env("PSYNC_BIN", env!("CARGO_BIN_EXE_psync"))
        .env("PSYNC_DEMO_DIR", dir)
        .output()
        .expect("run scripts/demo.sh")
}

fn psync_mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains("fuse.psync") && l.contains(dir.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_demo_starts_two_syncing_folders_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("psync-demo");
    let started = demo(&dir, "start");
    let out = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(started.status.success(), "{out}\n{}", String::from_utf8_lossy(&started.stderr));
    assert!(out.contains("it appeared in") && out.contains("./scripts/demo.sh stop"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("desktop/Welcome.md")).unwrap(),
        std::fs::read(dir.join("laptop/Welcome.md")).unwrap()
    );
    assert_eq!(psync_mounts_under(&dir).len(), 2);

    // Left running: an edit in either folder reaches the other.
    std::fs::write(dir.join("laptop/hello.md"), b"hello from the laptop\n").unwrap();
    eventually(PATIENCE, "the laptop's note to reach the desktop", || {
        std::fs::read(dir.join("desktop/hello.md")).ok().as_deref() == Some(b"hello from the laptop\n")
    });
    // Both devices report their peer in sync (acks may trail the file briefly).
    let status = || {
        let status = demo(&dir, "status");
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        assert!(status.status.success(), "{text}");
        text
    };
    eventually(PATIENCE, lazy(|| format!("both devices to be in sync:\n{}", status())), || {
        status().matches("in sync").count() == 2
    });

    // Starting again restarts it; stopping leaves nothing mounted or running.
    let restarted = demo(&dir, "start");
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    let server_pid: i32 = std::fs::read_to_string(dir.join(".psync/server.pid")).unwrap().trim().parse().unwrap();
    let stopped = demo(&dir, "stop");
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("nothing is mounted"));
    assert!(psync_mounts_under(&dir).is_empty(), "{:?}", psync_mounts_under(&dir));
    eventually(PATIENCE, "the signalling server to stop", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server_pid), None).is_err()
    });
}
