//! `mount.fuse.psync`: the mount(8) helper for PSync.
//!
//! `mount -t fuse.psync DATA_DIR MOUNTPOINT [-o OPTIONS]` (and an
//! `/etc/fstab` line with type `fuse.psync`) runs
//! `/sbin/mount.fuse.psync DATA_DIR MOUNTPOINT [-sfnv] [-o OPTIONS]`, which
//! starts `psync --data-dir DATA_DIR mount MOUNTPOINT` and returns once the
//! mount is ready. Built as `mount-psync` (Cargo forbids dots in binary
//! names); `scripts/install.sh` installs it under the name mount(8) looks for.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// Options mount(8) and fstab pass that concern mount(8), not PSync.
const IGNORED: &[&str] = &[
    "defaults", "rw", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev", "owner", "group", "dev",
    "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
];

#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    data_dir: String,
    mountpoint: String,
    options: Vec<String>,
    fake: bool,
}

fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-o" => {
                let value = it.next().ok_or("-o needs a value")?;
                options.extend(value.split(',').filter(|o| !o.is_empty()).map(str::to_string));
            }
            "-t" | "-N" => {
                it.next();
            }
            "-n" | "-s" | "-v" | "-f" => fake |= arg == "-f",
            other if other.starts_with('-') && other.len() > 1 => {
                // Grouped short flags such as -nv.
                fake |= other.contains('f');
            }
            other => positional.push(other.to_string()),
        }
    }
    match positional.as_slice() {
        [data_dir, mountpoint] => {
            Ok(Invocation { data_dir: data_dir.clone(), mountpoint: mountpoint.clone(), options, fake })
        }
        _ => Err("usage: mount.fuse.psync DATA_DIR MOUNTPOINT [-o OPTIONS]".to_string()),
    }
}

/// The `psync` binary: `$PSYNC_BIN`, else beside this helper, else on PATH.
fn psync_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PSYNC_BIN") {
        return PathBuf::from(bin);
    }
    if let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) {
        let sibling = me.with_file_name("psync");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("psync")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inv = match parse(&args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("mount.fuse.psync: {e}");
            return ExitCode::from(1);
        }
    };
    for option in &inv.options {
        if option == "ro" {
            eprintln!("mount.fuse.psync: read-only mounts are not supported yet");
            return ExitCode::from(1);
        }
        if !IGNORED.contains(&option.as_str()) && !option.starts_with("x-") && !option.starts_with("comment=") {
            eprintln!("mount.fuse.psync: ignoring unknown option {option:?}");
        }
    }
    if inv.fake {
        return ExitCode::SUCCESS;
    }
    let psync = psync_binary();
    match Command::new(&psync).arg("--data-dir").arg(&inv.data_dir).arg("mount").arg(&inv.mountpoint).status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        // mount(8) treats 32 as "mount failure".
        Ok(_) => ExitCode::from(32),
        Err(e) => {
            eprintln!("mount.fuse.psync: cannot run {}: {e}", psync.display());
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_what_mount_passes() {
        let inv = parse(&args("/data /mnt -o rw,noauto,x-systemd.automount")).unwrap();
        assert_eq!(inv.data_dir, "/data");
        assert_eq!(inv.mountpoint, "/mnt");
        assert_eq!(inv.options, vec!["rw", "noauto", "x-systemd.automount"]);
        assert!(!inv.fake);
        assert!(parse(&args("/data /mnt -f")).unwrap().fake);
        assert!(parse(&args("-nv /data /mnt -t fuse.psync")).is_ok());
        assert!(parse(&args("/data")).is_err());
        assert!(parse(&args("/data /mnt -o")).is_err());
    }
}
