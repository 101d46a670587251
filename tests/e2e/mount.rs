//! Real FUSE mounts served by the `psync` daemon, used by real programs.
//! These fail loudly (never skip) when FUSE cannot be used.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{eventually, lazy, psync, PATIENCE};

/// A data dir mounted at a mountpoint by a detached `psync mount`.
pub struct Mounted {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    /// Extra `psync mount` flags, used at every mount.
    pub flags: Vec<String>,
}

/// `len` bytes that never repeat (every 64 KiB block differs), from a
/// seed: a transfer of them moves every byte.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
pub fn is_dead(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| s.contains("zombie"))
        || !Path::new(&format!("/proc/{pid}")).exists()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Mounted {
    pub fn new() -> Mounted {
        Self::new_with_flags(&[])
    }

    /// A fresh data dir mounted with extra `psync mount` flags.
    pub fn new_with_flags(flags: &[&str]) -> Mounted {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let m = Mounted { tmp, data, mnt, flags: flags.iter().map(|f| f.to_string()).collect() };
        m.mount();
        m
    }

    /// Mounts an existing data dir (e.g. one `psync init` made).
    pub fn with_data(data: PathBuf) -> Mounted {
        Self::with_flags(data, &[])
    }

    /// Mounts an existing data dir with extra `psync mount` flags.
    pub fn with_flags(data: PathBuf, flags: &[&str]) -> Mounted {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let m = Mounted { tmp, data, mnt, flags: flags.iter().map(|f| f.to_string()).collect() };
        m.mount();
        m
    }

    pub fn mount(&self) {
        let mut args = vec!["mount", self.mnt.to_str().unwrap()];
        args.extend(self.flags.iter().map(String::as_str));
        let out = psync(&self.data, &args);
        assert!(
            out.status.success(),
            "psync mount failed (FUSE must work for these tests; as root, with fuse3 installed): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn unmount(&self) {
        let out = psync(&self.data, &["unmount", self.mnt.to_str().unwrap()]);
        assert!(out.status.success(), "psync unmount failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn daemon_pid(&self) -> i32 {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data.join("daemon.json")).expect("daemon.json")).unwrap();
        info["pid"].as_i64().expect("pid") as i32
    }

    pub fn fsck(&self) {
        let out = psync(&self.data, &["fsck"]);
        assert!(out.status.success(), "fsck: {}", String::from_utf8_lossy(&out.stdout));
    }

    pub fn is_mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(self.mnt.to_str().unwrap()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A failing test shows what the daemon said (its data dir goes with it).
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.data.join("psync.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}/psync.log:", self.data.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if self.is_mounted() {
            let _ = psync(&self.data, &["unmount", "--lazy", self.mnt.to_str().unwrap()]);
        }
    }
}

#[test]
fn everyday_posix_operations() {
    let m = Mounted::new();
    std::fs::write(m.path("a.md"), "hello").unwrap();
    std::fs::OpenOptions::new().append(true).open(m.path("a.md")).unwrap().write_all(b" world").unwrap();
    assert_eq!(std::fs::read_to_string(m.path("a.md")).unwrap(), "hello world");
    std::fs::create_dir_all(m.path("x/y/z")).unwrap();
    std::fs::rename(m.path("a.md"), m.path("x/y/z/b.md")).unwrap();
    assert!(!m.path("a.md").exists());
    std::os::unix::fs::symlink("x/y/z/b.md", m.path("link")).unwrap();
    assert_eq!(std::fs::read_to_string(m.path("link")).unwrap(), "hello world");
    std::fs::hard_link(m.path("x/y/z/b.md"), m.path("hard")).unwrap();
    assert_eq!(std::fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    std::fs::set_permissions(m.path("hard"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(m.path("x/y/z/b.md")).unwrap().permissions().mode() & 0o777, 0o600);
    let f = std::fs::OpenOptions::new().write(true).open(m.path("hard")).unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(std::fs::read_to_string(m.path("hard")).unwrap(), "hello");
    // Sparse file: write far out, the hole reads as zeros.
    let mut f = std::fs::File::create(m.path("sparse")).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(10_000_000)).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    let data = std::fs::read(m.path("sparse")).unwrap();
    assert_eq!(data.len(), 10_000_003);
    assert!(data[..10_000_000].iter().all(|&b| b == 0));
    // Names the kernel and the store refuse.
    let long = "n".repeat(256);
    assert_eq!(std::fs::write(m.path(&long), "x").unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    assert_eq!(std::fs::remove_dir(m.path("x")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    // An open, unlinked file stays readable until closed.
    let mut open = std::fs::File::open(m.path("hard")).unwrap();
    std::fs::remove_file(m.path("hard")).unwrap();
    std::fs::remove_file(m.path("x/y/z/b.md")).unwrap();
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello");
    drop(open);
    let entries: Vec<_> = std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    m.unmount();
    m.fsck();
}

#[test]
fn git_init_add_commit_and_fsck() {
    let m = Mounted::new();
    let repo = m.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(&repo),
        )
    };
    git(&["init", "-q"]);
    for i in 0..30 {
        std::fs::write(repo.join(format!("note{i}.md")), format!("# Note {i}\n{}", "text ".repeat(i * 50))).unwrap();
    }
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(repo.join("note3.md"), "changed").unwrap();
    git(&["commit", "-q", "-am", "second"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["log", "--oneline"]).lines().count(), 2);
    assert!(git(&["status", "--porcelain"]).is_empty());
}

#[test]
fn sqlite_writes_and_passes_integrity_check() {
    let m = Mounted::new();
    let db = m.path("notes.db");
    let mut sql = String::from("PRAGMA journal_mode=WAL;\nCREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);\n");
    for batch in 0..20 {
        sql.push_str("BEGIN;\n");
        for i in 0..200 {
            sql.push_str(&format!("INSERT INTO notes(body) VALUES ('note {batch}-{i} {}');\n", "x".repeat(i)));
        }
        sql.push_str("COMMIT;\n");
    }
    sql.push_str("DELETE FROM notes WHERE id % 3 = 0;\nVACUUM;\n");
    let mut child = Command::new("sqlite3").arg(&db).stdin(std::process::Stdio::piped()).spawn().expect("sqlite3");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let check = run_ok(Command::new("sqlite3").arg(&db).arg("PRAGMA integrity_check; SELECT count(*) FROM notes;"));
    assert_eq!(check.trim(), "ok\n2667");
}

#[test]
fn editor_style_atomic_saves() {
    let m = Mounted::new();
    let target = m.path("note.md");
    for version in 0..20 {
        let tmp = m.path(".note.md.swp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(format!("version {version}\n").as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::rename(&tmp, &target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), format!("version {version}\n"));
    }
    assert!(!m.path(".note.md.swp").exists());
    m.unmount();
    m.fsck();
}

#[test]
fn tar_extract_matches_source_including_mtimes() {
    let m = Mounted::new();
    let src = m.tmp.path().join("src");
    std::fs::create_dir_all(src.join("vault/daily")).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("vault/daily/{i}.md")), format!("day {i}\n").repeat(i + 1)).unwrap();
    }
    std::fs::write(src.join("vault/paper.pdf"), vec![0xABu8; 3_000_000]).unwrap();
    std::os::unix::fs::symlink("daily/1.md", src.join("vault/latest")).unwrap();
    run_ok(Command::new("touch").args(["-d", "2001-02-03 04:05:06", src.join("vault/daily/7.md").to_str().unwrap()]));
    let archive = m.tmp.path().join("vault.tar");
    run_ok(Command::new("tar").arg("-cf").arg(&archive).arg("-C").arg(&src).arg("vault"));
    run_ok(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&m.mnt));
    run_ok(Command::new("diff").arg("-r").arg("--no-dereference").arg(src.join("vault")).arg(m.path("vault")));
    for rel in ["vault/daily/7.md", "vault/daily/0.md", "vault/paper.pdf"] {
        let a = std::fs::metadata(src.join(rel)).unwrap();
        let b = std::fs::metadata(m.path(rel)).unwrap();
        assert_eq!(a.mtime(), b.mtime(), "{rel}: mtime must survive extraction");
        assert_eq!(a.permissions().mode(), b.permissions().mode(), "{rel}: mode");
    }
}

#[test]
fn reader_never_sees_enoent_while_file_is_replaced_by_rename() {
    let m = Mounted::new();
    let target = m.path("hot.md");
    std::fs::write(&target, "initial").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), m.mnt.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tmp = dir.join(format!(".hot.{n}.tmp"));
                std::fs::write(&tmp, format!("version {n}")).unwrap();
                std::fs::rename(&tmp, dir.join("hot.md")).unwrap();
                n += 1;
            }
            n
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut reads, mut enoent) = (0u64, 0u64);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&target) {
            Ok(text) => {
                assert!(text == "initial" || text.starts_with("version "), "torn read: {text:?}");
                reads += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => enoent += 1,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let replaced = writer.join().unwrap();
    eprintln!("{reads} reads during {replaced} replacements");
    assert_eq!(enoent, 0, "the reader saw ENOENT {enoent} times in {reads} reads");
    assert!(
        reads > 100 && replaced > 100,
        "too little concurrency to mean anything: {reads} reads, {replaced} renames"
    );
}

#[test]
fn mmap_reads_and_writes() {
    let m = Mounted::new();
    let file = m.path("mapped.bin");
    std::fs::write(&file, vec![b'.'; 200_000]).unwrap();
    let script = r#"
import mmap, sys
with open(sys.argv[1], "r+b") as f:
    mm = mmap.mmap(f.fileno(), 0)
    assert mm[:3] == b"...", mm[:3]
    mm[0:5] = b"HELLO"
    mm[150000:150005] = b"WORLD"
    mm.flush()
    mm.close()
"#;
    run_ok(Command::new("python3").arg("-c").arg(script).arg(&file));
    let data = std::fs::read(&file).unwrap();
    assert_eq!(&data[0..5], b"HELLO");
    assert_eq!(&data[150_000..150_005], b"WORLD");
    assert_eq!(data.len(), 200_000);
}

#[test]
fn concurrent_appenders_lose_no_line() {
    let m = Mounted::new();
    let log = m.path("log.txt");
    std::fs::write(&log, "").unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                for i in 0..200 {
                    f.write_all(format!("writer {w} line {i}\n").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 800);
    assert!(text.lines().all(|l| l.starts_with("writer ")), "interleaved writes");
}

#[test]
fn data_survives_unmount_and_remount() {
    let m = Mounted::new();
    std::fs::create_dir(m.path("dir")).unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(m.path("dir/big.bin"), &big).unwrap();
    std::fs::write(m.path("small.md"), "small").unwrap();
    let ino = std::fs::metadata(m.path("small.md")).unwrap().ino();
    m.unmount();
    assert!(std::fs::read_dir(&m.mnt).unwrap().next().is_none(), "mountpoint is empty when unmounted");
    m.fsck();
    m.mount();
    assert_eq!(std::fs::read(m.path("dir/big.bin")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(m.path("small.md")).unwrap(), "small");
    assert_eq!(std::fs::metadata(m.path("small.md")).unwrap().ino(), ino, "inode numbers are stable across remounts");
}

#[test]
fn fsynced_data_survives_sigkill_and_the_mount_recovers() {
    let m = Mounted::new();
    let mut f = std::fs::File::create(m.path("durable.md")).unwrap();
    f.write_all(b"fsynced before the crash").unwrap();
    f.sync_all().unwrap();
    // Keep it open: the daemon dies with a handle open.
    let pid = m.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Its auto-unmount helper then unmounts; until it has, the mount still
    // looks alive.
    let stale = || std::fs::metadata(&m.mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    eventually(PATIENCE, "the killed daemon and its mount to be gone (or stale)", || {
        is_dead(pid) && (!m.is_mounted() || stale())
    });
    drop(f);
    // Whether the kernel auto-unmounted it or left a stale mount, mounting again works.
    m.fsck();
    m.mount();
    assert_eq!(std::fs::read_to_string(m.path("durable.md")).unwrap(), "fsynced before the crash");
    m.unmount();
    m.fsck();
}

#[test]
fn clear_errors_when_mounting() {
    let m = Mounted::new();
    // Same data dir again: refused, naming where it is mounted.
    let other = m.tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = psync(&m.data, &["mount", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("already mounted at") && said.contains(m.mnt.to_str().unwrap()), "{said}");
    // Not empty, missing.
    std::fs::write(other.join("file"), "x").unwrap();
    let fresh = m.tmp.path().join("fresh-data");
    let out = psync(&fresh, &["mount", other.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"), "{out:?}");
    let out = psync(&fresh, &["mount", m.tmp.path().join("nope").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");
    // Already a mount point.
    let out = psync(&fresh, &["mount", m.mnt.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a mount point"), "{out:?}");
    // Unmounting something that is not a PSync mount.
    let out = psync(&fresh, &["unmount", other.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not mounted"), "{out:?}");
}

#[test]
fn a_stale_mount_left_by_a_dead_daemon_is_recovered() {
    let m = Mounted::new();
    std::fs::write(m.path("kept.md"), "kept").unwrap();
    let f = std::fs::File::open(m.path("kept.md")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Kill the auto-unmount watcher (fusermount3, the daemon's child), then
    // the daemon: nothing unmounts, and the kernel keeps a dead mount
    // ("Transport endpoint is not connected").
    let pid = m.daemon_pid();
    let children = children_of(pid);
    for child in &children {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*child), nix::sys::signal::Signal::SIGKILL);
    }
    eventually(PATIENCE, "the auto-unmount watcher to be gone", || children.iter().all(|c| is_dead(*c)));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let what = lazy(|| format!("the mount to go stale; is_mounted={}", m.is_mounted()));
    eventually(PATIENCE, what, || std::fs::metadata(&m.mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)));
    m.mount();
    assert_eq!(std::fs::read_to_string(m.path("kept.md")).unwrap(), "kept");
    m.unmount();
    m.fsck();
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().nth(1) == Some(&pid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}
