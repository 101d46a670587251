//! Safe in real life: what a peer's changes can never do on this device,
//! and how one path that cannot sync leaves the others syncing.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::group::{group_of_two, unmount_and_fsck, wait_for_content};
use crate::mount::Mounted;
use crate::support::{eventually, lazy, psync, PATIENCE};
use crate::three::{group_of_three, status};

/// Situation 1: on the laptop, within one debounce window, `rm d/f; rmdir
/// d; ln -s OUTSIDE d`. The desktop shows the change, and nothing outside
/// its mount is touched: the replay never follows the peer's symlink (it
/// once unlinked OUTSIDE/f, following it).
#[test]
fn a_peers_symlink_never_makes_the_replay_act_outside_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    const ROUNDS: usize = 5;
    for i in 0..ROUNDS {
        std::fs::write(outside.join(format!("f{i}")), b"outside the mount").unwrap();
        let d = format!("d{i}");
        std::fs::create_dir(mb.path(&d)).unwrap();
        std::fs::write(mb.path(&format!("{d}/f{i}")), b"inside").unwrap();
        std::fs::write(mb.path(&format!("{d}/keep{i}.md")), b"inside").unwrap();
        wait_for_content(&ma, &format!("{d}/f{i}"), b"inside");
        wait_for_content(&ma, &format!("{d}/keep{i}.md"), b"inside");
        // As in real life, the desktop's kernel no longer has `d` cached
        // when the change comes (so it looks `d` up again on the way).
        forget_cached_names();
        // The whole change inside one debounce window.
        std::fs::remove_file(mb.path(&format!("{d}/f{i}"))).unwrap();
        std::fs::remove_file(mb.path(&format!("{d}/keep{i}.md"))).unwrap();
        std::fs::remove_dir(mb.path(&d)).unwrap();
        std::os::unix::fs::symlink(&outside, mb.path(&d)).unwrap();
        // Waiting on another file: looking at `d` here would cache it again.
        std::fs::write(mb.path(&format!("after{i}.md")), b"after").unwrap();
        wait_for_content(&ma, &format!("after{i}.md"), b"after");
        assert!(std::fs::symlink_metadata(ma.path(&d)).unwrap().file_type().is_symlink(), "{d} is a symlink");
    }
    // The desktop's store holds the symlink as data, pointing where the laptop said.
    assert_eq!(std::fs::read_link(ma.path("d0")).unwrap(), outside);
    for i in 0..ROUNDS {
        assert_eq!(
            std::fs::read(outside.join(format!("f{i}"))).ok().as_deref(),
            Some(&b"outside the mount"[..]),
            "a file outside the mount was deleted or changed (round {i})"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), ROUNDS, "nothing was created outside the mount either: {names:?}");
    unmount_and_fsck(&[&ma, &mb]);
}

/// Makes the kernel drop the names it caches (dentries) that nothing uses.
fn forget_cached_names() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop the kernel's name cache (needs root)");
}

/// Situation 2: the laptop deletes a folder that, on the desktop, still
/// holds a FIFO (which does not sync). The desktop keeps the folder with
/// the FIFO, lists it as held with the reason, and everything else keeps
/// syncing; once the FIFO is gone the delete goes through. A local name in
/// NFD form stays local, listed, and does not stop anything either.
#[test]
fn a_folder_holding_local_files_is_kept_and_sync_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::create_dir(mb.path("drafts")).unwrap();
    std::fs::write(mb.path("drafts/a.md"), b"draft").unwrap();
    wait_for_content(&ma, "drafts/a.md", b"draft");
    nix::unistd::mkfifo(&ma.path("drafts/pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let nfd = "re\u{301}sume\u{301}.md";
    std::fs::write(ma.path(nfd), b"a name macOS would write").unwrap();

    std::fs::remove_file(mb.path("drafts/a.md")).unwrap();
    std::fs::remove_dir(mb.path("drafts")).unwrap();
    eventually(PATIENCE, "drafts/a.md to go on the desktop", || !ma.path("drafts/a.md").exists());
    let held = |s: &serde_json::Value| -> Option<String> {
        s["local"]["held"]
            .as_array()?
            .iter()
            .find(|h| h["path"] == "drafts")
            .map(|h| h["reason"].as_str().unwrap_or_default().to_string())
    };
    eventually(PATIENCE, "the desktop's status to hold drafts", || held(&status(&a)).is_some());
    let s = status(&a);
    let reason = held(&s).unwrap();
    assert!(reason.contains("pipe"), "the reason names what stays: {reason}");
    let local_only = s["local"]["local_only"].as_array().unwrap();
    assert!(local_only.iter().any(|l| l["path"] == nfd && l["reason"].as_str().unwrap().contains("NFC")), "{s:#}");
    assert!(ma.path("drafts/pipe").exists(), "the FIFO stays");
    let text = String::from_utf8_lossy(&psync(&a, &["status"]).stdout).into_owned();
    assert!(text.contains("drafts") && text.contains("pipe"), "{text}");

    // Everything else keeps syncing, both ways.
    std::fs::write(mb.path("later.md"), b"after the delete").unwrap();
    std::fs::write(ma.path("reply.md"), b"from the desktop").unwrap();
    wait_for_content(&ma, "later.md", b"after the delete");
    wait_for_content(&mb, "reply.md", b"from the desktop");
    assert!(!mb.path(nfd).exists(), "the NFD name stayed local");

    // Once the FIFO is gone, the delete goes through.
    std::fs::remove_file(ma.path("drafts/pipe")).unwrap();
    std::fs::write(ma.path("nudge.md"), b"a local change").unwrap();
    eventually(PATIENCE, "drafts to go on the desktop", || !ma.path("drafts").exists());
    eventually(PATIENCE, "nothing held", || held(&status(&a)).is_none());
    unmount_and_fsck(&[&ma, &mb]);
}

/// Situation 3: `psync remove` of a device with a live link cuts it at
/// once: its new writes are not applied, it receives nothing new, and the
/// others keep syncing.
#[test]
fn a_removed_device_stops_syncing_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, dirs) = group_of_three(tmp.path());
    let mounts: Vec<Mounted> = dirs.iter().map(|d| Mounted::with_data(d.clone())).collect();
    let [a, b, c] = [&mounts[0], &mounts[1], &mounts[2]];
    std::fs::write(c.path("before.md"), b"from the tablet, before").unwrap();
    wait_for_content(a, "before.md", b"from the tablet, before");
    wait_for_content(b, "before.md", b"from the tablet, before");

    let out = psync(&a.data, &["remove", "tablet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let connected_to_tablet = |data: &Path| {
        status(data)["peers"].as_array().unwrap().iter().any(|p| p["name"] == "tablet" && p["connected"] == true)
    };
    eventually(PATIENCE, "the desktop and laptop to drop the tablet", || {
        !connected_to_tablet(&a.data) && !connected_to_tablet(&b.data)
    });
    std::fs::write(c.path("after.md"), b"from the removed tablet").unwrap();
    std::fs::write(a.path("secret.md"), b"not for the tablet").unwrap();
    std::fs::write(b.path("canary.md"), b"the group still syncs").unwrap();
    wait_for_content(a, "canary.md", b"the group still syncs");
    wait_for_content(b, "secret.md", b"not for the tablet");
    assert!(!a.path("after.md").exists() && !b.path("after.md").exists(), "the removed device's write arrived");
    assert!(!c.path("secret.md").exists(), "the removed device received a new change");
    for m in &mounts {
        m.unmount();
        m.fsck();
    }
}

/// Situation 5: a vault of 20,000 notes reaches a device mounted for the
/// first time, completely, and the sending device answers `psync status`
/// all along (its sync loop once spent minutes in full scans per message).
#[test]
fn a_20000_note_vault_reaches_a_new_device() {
    const NOTES: usize = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let vault = tmp.path().join("vault");
    let note =
        |i: usize| format!("# Note {i}\n\nLinks to [[note{}]] and [[note{}]].\n", (i * 7) % NOTES, (i * 13) % NOTES);
    for i in 0..NOTES {
        let dir = vault.join(format!("folder{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("note{i}.md")), note(i)).unwrap();
    }
    let imported = psync(&a, &["store", "import", vault.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let ma = Mounted::with_data(a.clone());
    let started = Instant::now();
    let mb = Mounted::with_data(b.clone());
    eventually(PATIENCE, "all notes on the laptop", || {
        // The desktop answers status while it serves the laptop.
        let desktop = status(&a);
        assert!(desktop["daemon"]["pid"].as_u64().is_some(), "{desktop:#}");
        let laptop = status(&b);
        laptop["local"]["files"].as_u64() == Some(NOTES as u64)
            && laptop["peers"].as_array().unwrap().iter().any(|p| p["name"] == "desktop" && p["in_sync"] == true)
    });
    eprintln!("{NOTES} notes reached the new device in {:.1} s", started.elapsed().as_secs_f64());
    for i in (0..NOTES).step_by(997) {
        let rel = format!("folder{:03}/note{i}.md", i / 100);
        assert_eq!(std::fs::read_to_string(mb.path(&rel)).unwrap(), note(i), "{rel}");
    }
    unmount_and_fsck(&[&ma, &mb]);
}

/// Local hygiene: the data dir and what the daemon writes in it are its
/// owner's alone, the mount serves only its owner (and root) unless asked,
/// and the log file is plain text.
#[test]
fn the_data_dir_is_private_and_the_mount_its_owners() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&m.data), 0o700, "the data dir is private");
    for entry in walk(&m.data.join("db")) {
        assert_eq!(mode(&entry) & 0o077, 0, "{} is readable by others", entry.display());
    }
    std::fs::write(m.path("note.md"), b"mine").unwrap();
    let log = std::fs::read_to_string(m.data.join("psync.log")).unwrap();
    assert!(!log.contains('\u{1b}'), "terminal colour codes in the log file:\n{log}");
    // Another user (the test suite's `tests` user) cannot use the mount.
    let as_other =
        |path: &Path| Command::new("runuser").args(["-u", "tests", "--", "ls"]).arg(path).output().expect("runuser");
    std::fs::set_permissions(&m.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(m.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_other(&m.mnt);
    assert!(!out.status.success(), "another user listed the mount: {}", String::from_utf8_lossy(&out.stdout));
    m.unmount();
    let shared = Mounted::with_flags(m.data.clone(), &["--allow-other"]);
    std::fs::set_permissions(shared.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_other(&shared.mnt);
    assert!(out.status.success(), "with --allow-other: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("note.md"));
    shared.unmount();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// An 8 GiB file (131,072 blocks: its block list alone is larger than a
/// frame) syncs, and changes after it keep flowing. Its blocks repeat, so
/// the stores hold little; what is tested is the record's size on the wire.
#[test]
fn an_8_gib_file_syncs_and_changes_after_it_keep_flowing() {
    use std::io::{Read, Seek, SeekFrom, Write};
    const SIZE: u64 = 8 << 30;
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b) = group_of_two(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let block = crate::mount::noise(65_536, 8);
    let started = Instant::now();
    {
        let mut f = std::fs::File::create(ma.path("disk.img")).unwrap();
        let chunk = block.repeat(32); // 2 MiB per write
        for _ in 0..SIZE / chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    eprintln!("8 GiB written through the mount in {:.1} s", started.elapsed().as_secs_f64());
    std::fs::write(ma.path("after.md"), b"written after the big file").unwrap();
    wait_for_content(&mb, "after.md", b"written after the big file");
    eventually(PATIENCE, "disk.img on the laptop", || {
        std::fs::metadata(mb.path("disk.img")).is_ok_and(|m| m.len() == SIZE)
    });
    let read_block = |m: &Mounted, offset: u64| {
        let mut f = std::fs::File::open(m.path("disk.img")).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; 65_536];
        f.read_exact(&mut buf).unwrap();
        buf
    };
    for offset in [0, SIZE / 2, SIZE - 65_536] {
        assert_eq!(read_block(&mb, offset), block, "block at {offset}");
    }
    // An edit in the middle of it, then another note: both arrive.
    let patch = crate::mount::noise(65_536, 9);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(ma.path("disk.img")).unwrap();
        f.seek(SeekFrom::Start(SIZE / 2)).unwrap();
        f.write_all(&patch).unwrap();
    }
    std::fs::write(ma.path("later.md"), b"and later still").unwrap();
    wait_for_content(&mb, "later.md", b"and later still");
    eventually(PATIENCE, "the edit inside disk.img on the laptop", || read_block(&mb, SIZE / 2) == patch);
    assert_eq!(read_block(&mb, SIZE / 2 + 65_536), block);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A read-only device: its own edits stay on it, `psync status` says so
/// and lists them, the group's changes still reach it, and `psync revert`
/// takes the group's version back.
#[test]
fn a_read_only_devices_edits_stay_local_and_can_be_reverted() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = crate::group::start_server(&tmp.path().join("server"));
    let (a, b) = (tmp.path().join("desktop"), tmp.path().join("phone"));
    assert!(psync(&a, &["init", "--name", "desktop", "--server", &url]).status.success());
    let mut inviter = crate::support::psync_command()
        .arg("--data-dir")
        .arg(&a)
        .args(["invite", "--yes", "--read-only"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut code = String::new();
    std::io::BufReader::new(inviter.stdout.take().unwrap()).read_line(&mut code).unwrap();
    assert!(psync(&b, &["join", code.trim(), "--name", "phone", "--server", &url]).status.success());
    assert!(inviter.wait().unwrap().success());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::write(ma.path("shared.md"), b"the group's text").unwrap();
    wait_for_content(&mb, "shared.md", b"the group's text");

    std::fs::write(mb.path("shared.md"), b"edited on the phone").unwrap();
    std::fs::write(mb.path("phone-only.md"), b"made on the phone").unwrap();
    eventually(PATIENCE, "the phone's status to list its own changes", || {
        let s = status(&b);
        s["local"]["read_only"] == true && s["local"]["own_changes"] == 2
    });
    let text = String::from_utf8_lossy(&psync(&b, &["status"]).stdout).into_owned();
    assert!(text.contains("read-only") && text.contains("psync revert"), "{text}");
    // The group goes on, and takes nothing from the phone.
    std::fs::write(ma.path("canary.md"), b"from the desktop").unwrap();
    wait_for_content(&mb, "canary.md", b"from the desktop");
    assert_eq!(std::fs::read(ma.path("shared.md")).unwrap(), b"the group's text");
    assert!(!ma.path("phone-only.md").exists());

    let out = psync(&b, &["revert", "--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for_content(&mb, "shared.md", b"the group's text");
    eventually(PATIENCE, "phone-only.md to go", || !mb.path("phone-only.md").exists());
    eventually(PATIENCE, "no own changes left", || status(&b)["local"]["own_changes"] == 0);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A full disk on the receiving device: installs pause (status says so),
/// nothing is lost, and once there is space again sync resumes by itself.
#[test]
fn a_full_disk_pauses_sync_and_it_resumes_by_itself() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    struct Tmpfs(std::path::PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    assert!(nix::unistd::Uid::effective().is_root(), "needs root to mount a small tmpfs (CI runs as root)");
    let tmp = tempfile::tempdir().unwrap();
    let laptop = tmp.path().join("laptop");
    std::fs::create_dir(&laptop).unwrap();
    // Room for the file several times over once the filler goes: RocksDB
    // needs space beyond the data (log, flush, compaction), and after a
    // failed flush it resumes writing only once more than its largest
    // write buffer (32 MiB, the blocks') is free again. On a smaller disk the daemon stays
    // paused, saying so, until that much is free; this test is about
    // resuming, not about that threshold.
    mount(Some("tmpfs"), &laptop, Some("tmpfs"), MsFlags::empty(), Some("size=512m")).expect("mount tmpfs");
    let _tmpfs = Tmpfs(laptop.clone());
    let (_server, a, b) = group_of_two(tmp.path());
    assert_eq!(b, laptop);
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    std::fs::write(ma.path("before.md"), b"fits").unwrap();
    wait_for_content(&mb, "before.md", b"fits");
    // Fill the laptop's disk, leaving too little for what comes next.
    let free = nix::sys::statvfs::statvfs(&laptop).unwrap();
    let available = free.blocks_available() as u64 * free.fragment_size() as u64;
    let filler = laptop.join("filler");
    // (RocksDB has space preallocated for its log beyond this.)
    std::fs::write(&filler, vec![1u8; available.saturating_sub(1 << 20) as usize]).unwrap();
    let big = crate::mount::noise(96 << 20, 12);
    std::fs::write(ma.path("big.bin"), &big).unwrap();
    std::fs::write(ma.path("small.md"), b"waits with it").unwrap();
    eventually(PATIENCE, "the laptop to say its disk is full", || status(&b)["local"]["disk_full"] == true);
    assert!(!mb.path("big.bin").exists());
    std::fs::remove_file(&filler).unwrap();
    wait_for_content(&mb, "small.md", b"waits with it");
    let what = lazy(|| format!("big.bin on the laptop; its status: {:#}", status(&b)["local"]));
    eventually(PATIENCE, what, || std::fs::read(mb.path("big.bin")).is_ok_and(|got| got == big));
    eventually(PATIENCE, "the laptop to say all is well", || status(&b)["local"]["disk_full"] == false);
    unmount_and_fsck(&[&ma, &mb]);
}
