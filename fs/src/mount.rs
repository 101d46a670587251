//! Mounting and unmounting: checks with clear messages, stale-mount
//! recovery, and the `fuser` session.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::core::FsCore;
use crate::fuse::PsyncFs;

/// The filesystem type as `mount` shows it: `fuse.psync`.
pub const SUBTYPE: &str = "psync";

/// Why a mount could not start.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint does not exist.
    #[error("mountpoint {0} does not exist; create it with `mkdir -p {0}`")]
    Missing(PathBuf),
    /// The mountpoint is a file.
    #[error("mountpoint {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The mountpoint has files in it; mounting would hide them.
    #[error("mountpoint {0} is not empty; mounting over it would hide its files (move them into the mount afterwards, or pick an empty directory)")]
    NotEmpty(PathBuf),
    /// Something is already mounted there.
    #[error("{0} is already a mount point ({1}); unmount it first")]
    AlreadyMounted(PathBuf, String),
    /// `/dev/fuse` is missing or unusable.
    #[error("cannot use /dev/fuse ({0}); install fuse3 (`apt-get install fuse3`) and load the fuse module (`modprobe fuse`)")]
    NoFuse(io::Error),
    /// The kernel or fusermount refused.
    #[error("permission denied mounting {0}: {1} (as a normal user, fusermount3 must be installed setuid root)")]
    Permission(PathBuf, io::Error),
    /// Anything else.
    #[error("cannot mount {0}: {1}")]
    Other(PathBuf, io::Error),
}

/// One line of `/proc/self/mountinfo` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type, e.g. `fuse.psync`.
    pub fstype: String,
    /// Source, for PSync the data dir.
    pub source: String,
}

/// Decodes the octal escapes (`\040` for space) of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(field.get(i + 1..i + 4).unwrap_or(""), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text (see proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// The current mounts of this process's namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount at exactly `path`, if any (the last one wins when stacked).
pub fn mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mountpoint == path))
}

/// Checks that `path` can be mounted on, recovering a stale PSync mount
/// left by a daemon that died ("Transport endpoint is not connected").
/// Returns the canonical mountpoint.
pub fn prepare_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!("{} is a stale mount of a daemon that died; detaching it", path.display());
            detach(path).map_err(|e| MountError::Other(path.to_path_buf(), e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(MountError::Missing(path.to_path_buf())),
        Err(e) => return Err(MountError::Other(path.to_path_buf(), e)),
        Ok(m) if !m.is_dir() => return Err(MountError::NotADirectory(path.to_path_buf())),
        Ok(_) => {}
    }
    let path = path.canonicalize().map_err(|e| MountError::Other(path.to_path_buf(), e))?;
    if let Ok(Some(existing)) = mount_at(&path) {
        return Err(MountError::AlreadyMounted(path, format!("{} from {}", existing.fstype, existing.source)));
    }
    let mut entries = std::fs::read_dir(&path).map_err(|e| MountError::Other(path.clone(), e))?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty(path));
    }
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(MountError::NoFuse)?;
    Ok(path)
}

/// Whether the kernel lets this process open its mounts to other users
/// (needed for `allow_other`, and for the automatic unmount): as root, or
/// if `/etc/fuse.conf` says `user_allow_other`.
pub fn may_allow_other() -> bool {
    nix::unistd::geteuid().is_root()
        || std::fs::read_to_string("/etc/fuse.conf")
            .map(|c| c.lines().any(|l| l.trim() == "user_allow_other"))
            .unwrap_or(false)
}

/// Mounts `core` at `mountpoint` (already prepared) and serves it on
/// background threads until unmounted. Only its owner (and root) may use
/// it unless `allow_other`.
pub fn mount(
    core: Arc<FsCore>,
    mountpoint: &Path,
    source: &str,
    allow_other: bool,
) -> Result<BackgroundSession, MountError> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.to_string()),
        MountOption::Subtype(SUBTYPE.to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if allow_other && !may_allow_other() {
        return Err(MountError::Other(
            mountpoint.to_path_buf(),
            io::Error::other("allow_other needs root, or user_allow_other in /etc/fuse.conf"),
        ));
    }
    if may_allow_other() {
        // The kernel unmounts if we die; that needs an ACL beyond the
        // owner: root and the owner, or everyone if asked.
        config.acl = if allow_other { SessionACL::All } else { SessionACL::RootAndOwner };
        config.mount_options.push(MountOption::AutoUnmount);
    }
    config.n_threads = Some(4);
    serve(PsyncFs::new(core), mountpoint, &config)
}

/// Mounts `fs` with `config` and serves it on background threads.
pub(crate) fn serve<FS: fuser::Filesystem + Send + Sync + 'static>(
    fs: FS,
    mountpoint: &Path,
    config: &Config,
) -> Result<BackgroundSession, MountError> {
    let session = fuser::Session::new(fs, mountpoint, config).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => MountError::Permission(mountpoint.to_path_buf(), e),
        _ => MountError::Other(mountpoint.to_path_buf(), e),
    })?;
    session.spawn().map_err(|e| MountError::Other(mountpoint.to_path_buf(), e))
}

/// Detaches a mount at once (lazy unmount): it disappears from the
/// namespace, and the kernel finishes once nothing uses it.
pub fn detach(path: &Path) -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
    } else {
        fusermount(&["-u", "-z"], path)
    }
}

/// Unmounts cleanly: fails with EBUSY while files are open in the mount.
pub fn unmount(path: &Path) -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(path, nix::mount::MntFlags::empty()).map_err(io::Error::from)
    } else {
        fusermount(&["-u"], path)
    }
}

fn fusermount(args: &[&str], path: &Path) -> io::Result<()> {
    let out = std::process::Command::new("fusermount3").args(args).arg("--").arg(path).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 / /mnt/my\\040vault rw,noatime master:1 - fuse.psync /data\\040dir rw\n\
                    25 1 8:1 / / rw - ext4 /dev/vda rw\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mountpoint, PathBuf::from("/mnt/my vault"));
        assert_eq!(mounts[0].fstype, "fuse.psync");
        assert_eq!(mounts[0].source, "/data dir");
        assert_eq!(mounts[1].fstype, "ext4");
    }

    #[test]
    fn clear_errors_for_bad_mountpoints() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(prepare_mountpoint(&missing), Err(MountError::Missing(_))));
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(prepare_mountpoint(&file), Err(MountError::NotADirectory(_))));
        assert!(matches!(prepare_mountpoint(dir.path()), Err(MountError::NotEmpty(_))));
        let err = prepare_mountpoint(&missing).unwrap_err().to_string();
        assert!(err.contains("mkdir -p"), "{err}");
    }
}
