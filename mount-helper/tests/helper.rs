//! `mount -t fuse.psync` through the real mount(8), with this helper
//! installed where mount(8) looks for it. Needs root (CI runs as root).

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn mount_t_fuse_psync_works() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs /sbin/mount.fuse.psync and needs root (CI runs as root)"
    );
    let helper = Path::new(env!("CARGO_BIN_EXE_mount-psync"));
    let psync = helper.with_file_name("psync");
    assert!(psync.exists(), "{} is missing: run the suite with `cargo test --workspace`", psync.display());
    let installed = Path::new("/sbin/mount.fuse.psync");
    let ours = !installed.exists();
    if ours {
        std::os::unix::fs::symlink(helper, installed).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, mnt) = (tmp.path().join("data"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "fuse.psync", "-o", "defaults,_netdev"])
        .arg(&data)
        .arg(&mnt)
        .env("PSYNC_BIN", &psync)
        .output()
        .unwrap();
    let mounted = out.status.success();
    if mounted {
        std::fs::write(mnt.join("via-mount.md"), "hello").unwrap();
        assert_eq!(std::fs::read_to_string(mnt.join("via-mount.md")).unwrap(), "hello");
        let fstype = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(fstype.contains(" fuse.psync "), "mountinfo shows no fuse.psync mount");
        let un = Command::new(&psync).arg("unmount").arg(&mnt).output().unwrap();
        assert!(un.status.success(), "{}", String::from_utf8_lossy(&un.stderr));
    }
    if ours {
        std::fs::remove_file(installed).unwrap();
    }
    assert!(
        mounted,
        "mount -t fuse.psync failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
