//! `psync status`: the control socket's answer, for people.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::control::schema::{Status, MAX_LISTED};
use crate::live::SignallingState;

/// `psync status [--json] [--watch]`.
pub fn command(data_dir: &Path, json: bool, watch: bool) -> Result<std::process::ExitCode> {
    let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    // The most blocks wanted since the current transfer began: the bar's 100%.
    let mut peak_wanted = 0usize;
    loop {
        let status = crate::control::client::status(&data_dir)?;
        if json {
            println!(
                "{}",
                if watch { serde_json::to_string(&status)? } else { serde_json::to_string_pretty(&status)? }
            );
        } else {
            if watch {
                // Clear the screen and go home: a live view.
                print!("\x1b[2J\x1b[H");
            }
            peak_wanted = if status.local.wanted_blocks == 0 { 0 } else { peak_wanted.max(status.local.wanted_blocks) };
            // Names and paths come from peers: the terminal is never handed their control characters.
            print!("{}", terminal_safe(&render(&status, peak_wanted)));
        }
        std::io::stdout().flush()?;
        if !watch {
            return Ok(std::process::ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `text` with every control character but the line breaks escaped
/// (`\u{1b}`): what a terminal may be given of names and paths from peers.
pub(crate) fn terminal_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A text bar for `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled as usize), "-".repeat((WIDTH - filled) as usize))
}

/// The first part of a readable device id.
fn short_id(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

/// Changes the human status lists (count; `--json` has the whole feed).
const RECENT_CHANGES_SHOWN: usize = 5;

fn render(s: &Status, peak_wanted: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let name = if s.device.name.is_empty() { "(no group)" } else { &s.device.name };
    let _ = writeln!(out, "device      {name}  {}", s.device.id);
    let _ = writeln!(out, "data dir    {}", s.device.data_dir.display());
    match (&s.daemon, &s.device.mountpoint) {
        (Some(d), Some(m)) => {
            let sync = if d.syncing { "syncing" } else { "not syncing: this device belongs to no group" };
            let _ = writeln!(out, "mounted at  {} (daemon pid {}, up {} s, {sync})", m.display(), d.pid, d.uptime_secs);
        }
        _ => {
            let _ = writeln!(
                out,
                "not running no daemon serves this data dir: nothing is mounted and nothing syncs \
                 (start with `psync mount DIR`)"
            );
        }
    }
    if let Some(sig) = &s.signalling {
        let state = match &sig.state {
            SignallingState::Connected => "connected".to_string(),
            SignallingState::Connecting => "connecting".to_string(),
            SignallingState::Lost(why) => format!("not connected ({why})"),
            SignallingState::Refused(why) => format!("REFUSED: {why}"),
        };
        let _ = writeln!(out, "signalling  {}  {state}", sig.server);
        if let Some(warning) = &sig.roster_warning {
            let _ = writeln!(out, "ROSTER      {warning}");
        }
    }
    if let Some(r) = &s.relay {
        let state = match (&r.reachable, &r.last_error) {
            (true, _) => "reachable".to_string(),
            (false, Some(why)) => format!("not reachable ({why})"),
            (false, None) => "connecting".to_string(),
        };
        let upload = if r.to_upload == 0 {
            "nothing to upload".to_string()
        } else {
            format!("{} changes to upload", r.to_upload)
        };
        if r.quota_bytes == 0 {
            // Never logged in: nothing is known of what it holds.
            let _ = writeln!(out, "relay       {state}  {upload}");
        } else {
            let _ = writeln!(
                out,
                "relay       {state}  holds {} of {} for the group ({} objects)  {upload}",
                bytes(r.held_bytes),
                bytes(r.quota_bytes),
                r.held_objects
            );
        }
        for refused in &r.refused {
            let _ = writeln!(out, "RELAY       {refused}");
        }
    }
    if let Some(h) = &s.history {
        let when = crate::clock::local_time(h.pruned_at_ms);
        match &h.error {
            Some(why) => {
                let _ = writeln!(out, "history     pruning failed at {when} (tried again later): {why}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "history     pruned at {when}: {} old versions, {} freed",
                    h.versions_removed,
                    bytes(h.bytes_freed)
                );
            }
        }
    }
    let l = &s.local;
    let _ = writeln!(out, "local       {} files, {} dirs, {}  (sequence {})", l.files, l.dirs, bytes(l.bytes), l.seq);
    if l.waiting_records > 0 || l.wanted_blocks > 0 {
        let peak = peak_wanted.max(l.wanted_blocks) as u64;
        let _ = writeln!(
            out,
            "receiving   {} {} changes waiting for {} blocks (up to {} to go)",
            bar(peak - l.wanted_blocks as u64, peak),
            l.waiting_records,
            l.wanted_blocks,
            bytes(l.wanted_blocks as u64 * psync_store::BLOCK_SIZE)
        );
    }
    if l.disk_full {
        let _ =
            writeln!(out, "DISK FULL   installs from peers are paused; they resume by themselves once there is space");
    }
    if l.held_records > 0 {
        let _ = writeln!(
            out,
            "held        {} peer versions cannot be installed now (retried; nothing is lost):",
            l.held_records
        );
        for h in &l.held {
            let _ = writeln!(out, "  {}  {} (from {}, {} s)", h.path, h.reason, short_id(&h.from), h.held_secs);
        }
        if l.held.len() < l.held_records {
            let _ = writeln!(
                out,
                "  ... and {} more (psync status --json lists {MAX_LISTED})",
                l.held_records - l.held.len()
            );
        }
    }
    if !l.local_only.is_empty() {
        let _ = writeln!(out, "local only  {} paths here do not sync:", l.local_only.len());
        for p in &l.local_only {
            let _ = writeln!(out, "  {}  {}", p.path, p.reason);
        }
    }
    if l.read_only {
        let _ = writeln!(
            out,
            "read-only   this device's changes stay here; the group does not take them ({} paths changed here{})",
            l.own_changes,
            if l.own_changes > 0 {
                "; `psync revert --all` or `psync revert PATH` takes the group's version back"
            } else {
                ""
            }
        );
        for p in &l.own_changes_listed {
            let _ = writeln!(out, "  {p}");
        }
    }
    if let Some(e) = &l.sync_error {
        let _ = writeln!(out, "sync error  {e} (sync goes on)");
    }
    if !s.peers.is_empty() {
        let _ = writeln!(out, "peers");
    }
    for p in &s.peers {
        let presence = if p.online { "online" } else { "offline" };
        let link = if p.connected { "connected (WebRTC)" } else { "not connected" };
        let sync = if p.in_sync {
            "in sync".to_string()
        } else if p.connected {
            format!("syncing: {} changes to receive, {} to send", p.incoming_records, p.outgoing_records)
        } else {
            "-".to_string()
        };
        let seen = p.last_seen_secs_ago.map(|s| format!(", heard {s} s ago")).unwrap_or_default();
        let rtt = p.rtt_ms.map(|ms| format!(", rtt {ms:.1} ms")).unwrap_or_default();
        let read_only = if p.role == "read_only" { " [read-only]" } else { "" };
        let _ = writeln!(out, "  {:<14} {}  {presence:<7} {link:<18} {sync}{seen}{rtt}{read_only}", p.name, p.id);
        if let (true, Some(path)) = (p.connected, &p.path) {
            let via = path.relay.as_ref().map(|r| format!(" via {r}")).unwrap_or_default();
            let _ = writeln!(out, "  {:<14} {}{via}: {} <-> {}", "", path.kind.word(), path.local, path.remote);
        }
    }
    if !s.recent_changes.is_empty() {
        let _ = writeln!(out, "changes     the latest (newest first; --json lists {}):", s.recent_changes.len());
        for c in s.recent_changes.iter().take(RECENT_CHANGES_SHOWN) {
            let when = crate::clock::local_time(c.mtime.max(0) as u64 * 1000);
            let _ = writeln!(out, "  {when}  {:<14} {} {}", c.who(), c.what(), c.path);
        }
    }
    if s.conflicts.is_empty() {
        let _ = writeln!(out, "conflicts   none");
    } else {
        let _ = writeln!(out, "conflicts   {} (both versions kept):", s.conflicts.len());
        for c in &s.conflicts {
            let _ = writeln!(out, "  {c}");
        }
    }
    if !s.recent_warnings.is_empty() {
        let _ = writeln!(out, "recent warnings and errors (newest last; the log file has the details):");
        for w in &s.recent_warnings {
            let _ = writeln!(out, "  {}", w.line());
        }
    } else if !s.recent_errors.is_empty() {
        let _ = writeln!(out, "recent warnings and errors (newest last):");
        for e in &s.recent_errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}
