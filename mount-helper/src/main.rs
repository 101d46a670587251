//! `mount.psync`: lets `mount -t fuse.psync` and `/etc/fstab` start a PSync mount.
//! Not built yet: the FUSE issue fills this in.

fn main() -> std::process::ExitCode {
    eprintln!("mount.psync: mounting is not implemented yet in this build");
    std::process::ExitCode::FAILURE
}
