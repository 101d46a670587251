//! Acting on paths inside one directory without ever leaving it: a path is
//! resolved from a descriptor of the directory with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV` (no `..` out,
//! no symlink followed anywhere on the way, no other mount entered), and
//! the last component is acted on relative to its parent's descriptor with
//! the `*at` calls, which never follow it. A symlink where a directory was
//! expected is an error (`ELOOP`), never a detour.
//!
//! Everything that turns a peer's path, or a path from the store, into a
//! syscall goes through here (the replay on the mount, `psync store export`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

fn io_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// A descriptor of `dir` itself (the caller's own directory: resolved as
/// usual), for resolving paths beneath it.
pub fn open_root(dir: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(io_err)
}

/// Opens `relative` (a `/`-separated path, or empty for `root` itself)
/// beneath `root`, never through a symlink, with `flags` (`O_CLOEXEC` and
/// `O_NOFOLLOW` are added).
pub fn open_beneath(root: &OwnedFd, relative: &[u8], flags: OFlag) -> io::Result<OwnedFd> {
    let path: &OsStr = if relative.is_empty() { OsStr::new(".") } else { OsStr::from_bytes(relative) };
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).resolve(resolve_flags());
    openat2(root, path, how).map_err(io_err)
}

/// The directory `relative` beneath `root` (see [`open_beneath`]).
pub fn dir_beneath(root: &OwnedFd, relative: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(root, relative, OFlag::O_PATH | OFlag::O_DIRECTORY)
}

/// The directory `name` in `dir`, if it is one (a symlink is refused).
pub fn child_dir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    check_name(name)?;
    openat(dir, name, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io_err)
}

/// What `name` in `dir` is, without following it (`None`: nothing there).
pub fn kind_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<SFlag>> {
    check_name(name)?;
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(file_type(&stat))),
        Err(nix::Error::ENOENT) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// The type bits of a stat.
pub fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// One path component: never empty, `.`, `..` or holding `/`.
pub fn check_name(name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a file name: {name:?}")));
    }
    Ok(())
}

/// `path` split into its parent (empty at the top) and its last component.
pub fn split(path: &[u8]) -> (&[u8], &OsStr) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], OsStr::from_bytes(&path[i + 1..])),
        None => (&[], OsStr::from_bytes(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink anywhere on the way, `..`, or an absolute path: refused,
    /// whatever is outside stays untouched.
    #[test]
    fn paths_never_leave_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), "outside").unwrap();
        let inside = tempfile::tempdir().unwrap();
        std::fs::create_dir(inside.path().join("real")).unwrap();
        std::fs::write(inside.path().join("real/f"), "inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), inside.path().join("d")).unwrap();
        let root = open_root(inside.path()).unwrap();
        assert!(dir_beneath(&root, b"real").is_ok());
        for bad in [&b"d"[..], b"d/", b"../", b"real/../../", b"/tmp"] {
            let err = dir_beneath(&root, bad).unwrap_err();
            assert!(matches!(err.raw_os_error(), Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR)), "{bad:?}: {err}");
        }
        assert!(open_beneath(&root, b"d/f", OFlag::O_WRONLY).is_err());
        assert!(child_dir(&root, OsStr::new("d")).is_err(), "a symlink is not a directory here");
        assert_eq!(kind_at(&root, OsStr::new("d")).unwrap(), Some(SFlag::S_IFLNK));
        assert_eq!(std::fs::read_to_string(outside.path().join("f")).unwrap(), "outside");
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], OsStr::new("c")));
        assert_eq!(split(b"c"), (&b""[..], OsStr::new("c")));
        assert!(check_name(OsStr::new("..")).is_err());
    }
}
