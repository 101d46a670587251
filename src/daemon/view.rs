//! `psync mount --at TIME DIR`: the vault as it was then, read-only, in a
//! process of its own beside any running daemon (the store opened
//! read-only). It detaches like the daemon and serves until unmounted.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use psync_fs::mount;
use psync_fs::view::{mount_view, View};
use psync_store::{Store, Timestamp};

use super::{announce_ready, become_daemon, open_log, spawn_detached, wait_for_unmount, wait_ready, NOTIFY_ENV};

/// Parses a point in time: `2026-12-01 10:00` or `2026-12-01` (local time),
/// RFC 3339 (`2026-12-01T10:00:00Z`), or `3 hours ago` / `2 days ago`.
pub fn parse_time(text: &str) -> Result<Timestamp> {
    let text = text.trim();
    let zone = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    let at = if let Some(span) = text.strip_suffix("ago") {
        let span: jiff::Span = span.trim().parse().with_context(|| format!("{span:?} is not a duration"))?;
        jiff::Timestamp::now().to_zoned(zone).checked_sub(span)?.timestamp()
    } else if let Ok(t) = text.parse::<jiff::Timestamp>() {
        t
    } else if let Ok(t) = text.parse::<jiff::civil::DateTime>() {
        t.to_zoned(zone)?.timestamp()
    } else if let Ok(d) = text.parse::<jiff::civil::Date>() {
        d.to_zoned(zone)?.timestamp()
    } else {
        bail!("{text:?}: give a time like \"2026-12-01 10:00\", \"2026-12-01\" or \"3 hours ago\"");
    };
    if at > jiff::Timestamp::now() {
        bail!("{text:?} is in the future");
    }
    Ok(Timestamp { secs: at.as_second(), nanos: 0 })
}

/// Mounts the view at `mountpoint`; detaches unless `foreground`.
pub fn mount(data_dir: &Path, mountpoint: &Path, at_text: &str, foreground: bool) -> Result<ExitCode> {
    let at = parse_time(at_text)?;
    let mountpoint = mount::prepare_mountpoint(mountpoint)?;
    if !foreground {
        return detach_and_wait(data_dir, &mountpoint, at_text);
    }
    let notify = std::env::var_os(NOTIFY_ENV).is_some();
    let signals = become_daemon(data_dir, notify)?;
    let store =
        Arc::new(Store::open_read_only(data_dir).with_context(|| format!("cannot read {}", data_dir.display()))?);
    let files = store.tree_at(at.secs)?;
    let view = View::new(store, files, at);
    let count = view.file_count();
    let when = crate::clock::local_time(at.secs as u64 * 1000);
    let session = mount_view(view, &mountpoint, &format!("{}@{when}", data_dir.display()))?;
    tracing::info!("view of {} as of {when} ({count} files) at {}", data_dir.display(), mountpoint.display());
    announce_ready(notify, data_dir, &mountpoint)?;
    wait_for_unmount(signals, session, &mountpoint)?.context("the view's session ended with an error")?;
    Ok(ExitCode::SUCCESS)
}

fn detach_and_wait(data_dir: &Path, mountpoint: &Path, at_text: &str) -> Result<ExitCode> {
    let (log, log_path) = open_log(data_dir)?;
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--data-dir").arg(data_dir).arg("mount").arg(mountpoint).args(["--at", at_text, "--foreground"]);
    let mut child = spawn_detached(command, log).context("cannot start the view")?;
    if wait_ready(&mut child)? {
        println!(
            "{} as of {at_text}, read-only, at {} (pid {}; `psync unmount {}` when done)",
            data_dir.display(),
            mountpoint.display(),
            child.id(),
            mountpoint.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    bail!("the view exited ({status}) before it was mounted; see {}", log_path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_people_write() {
        let utc = parse_time("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(utc.secs, 1_796_119_200);
        assert!(parse_time("2026-12-01 10:00").is_ok());
        assert!(parse_time("2026-12-01").is_ok());
        let ago = parse_time("2 hours ago").unwrap();
        let now = jiff::Timestamp::now().as_second();
        assert!((now - 7200 - ago.secs).abs() < 5, "{now} {}", ago.secs);
        assert!(parse_time("yesterday-ish").is_err());
        assert!(parse_time("2999-01-01").is_err());
    }
}
