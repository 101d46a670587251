//! Before the machine sleeps (a closed lid), what offline members need goes
//! to the relay at once. logind announces `PrepareForSleep(true)` on the
//! system bus; a "delay" inhibitor held until then gives the flush up to
//! logind's `InhibitDelayMaxSec` (5 s by default). The system's own
//! `dbus-monitor` and `systemd-inhibit` do the D-Bus work; without a system
//! bus nothing happens but a line in the log. The inhibitor runs
//! `tail --pid=DAEMON` so it ends with the daemon even after a SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::FlushRequest;

/// How long the flush before sleeping may take (logind waits 5 s at most
/// by default for delay inhibitors).
pub const SLEEP_FLUSH_TIMEOUT: Duration = Duration::from_millis(4_500);
/// The signal watched for.
const MATCH_RULE: &str = "type='signal',interface='org.freedesktop.login1.Manager',member='PrepareForSleep'";

/// Reads `dbus-monitor`'s output: a `signal ... member=PrepareForSleep`
/// header line, then its argument, `boolean true` (going to sleep) or
/// `boolean false` (woken up).
#[derive(Debug, Default)]
pub struct MonitorParser {
    in_signal: bool,
}

impl MonitorParser {
    /// One line; `Some(true)`: about to sleep, `Some(false)`: resumed.
    pub fn line(&mut self, line: &str) -> Option<bool> {
        if line.starts_with("signal ") {
            self.in_signal = line.contains("member=PrepareForSleep");
            return None;
        }
        if !self.in_signal {
            return None;
        }
        let value = line.trim().strip_prefix("boolean ")?;
        self.in_signal = false;
        match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }
}

/// The running watch; its helper processes end when it is dropped.
#[derive(Debug)]
pub struct SleepWatch {
    monitor: Child,
    inhibitor: Arc<Mutex<Option<Child>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn inhibit() -> Option<Child> {
    let spawned = Command::new("systemd-inhibit")
        .args(["--what=sleep", "--mode=delay", "--who=PSync", "--why=uploading changes for offline devices"])
        .args(["tail", &format!("--pid={}", std::process::id()), "-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(child),
        Err(e) => {
            tracing::info!("relay: no sleep inhibitor (systemd-inhibit: {e}); a flush before sleep may be cut short");
            None
        }
    }
}

fn release(inhibitor: &Mutex<Option<Child>>) {
    if let Some(mut child) = lock(inhibitor).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl SleepWatch {
    /// Starts watching for sleep; `None` if `dbus-monitor` cannot run.
    pub fn start(flush: mpsc::Sender<FlushRequest>) -> Option<SleepWatch> {
        let spawned = Command::new("dbus-monitor")
            .args(["--system", MATCH_RULE])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut monitor = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::info!("relay: not watching for sleep (dbus-monitor: {e})");
                return None;
            }
        };
        let stdout = monitor.stdout.take()?;
        let inhibitor = Arc::new(Mutex::new(inhibit()));
        let held = inhibitor.clone();
        let thread = std::thread::Builder::new().name("psync-sleep-watch".into()).spawn(move || {
            let mut parser = MonitorParser::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match parser.line(&line) {
                    Some(true) => {
                        let done = super::flush_blocking(&flush, SLEEP_FLUSH_TIMEOUT);
                        tracing::info!("relay: {} before sleep", if done { "flushed" } else { "flush not finished" });
                        release(&held);
                    }
                    Some(false) => {
                        let mut slot = lock(&held);
                        if slot.is_none() {
                            *slot = inhibit();
                        }
                    }
                    None => {}
                }
            }
            tracing::info!("relay: not watching for sleep (no system bus)");
        });
        if let Err(e) = thread {
            tracing::warn!("relay: cannot watch for sleep: {e}");
        }
        Some(SleepWatch { monitor, inhibitor })
    }
}

impl Drop for SleepWatch {
    fn drop(&mut self) {
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
        release(&self.inhibitor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_and_resume_are_read_from_dbus_monitor_output() {
        let output = "signal time=1.0 sender=org.freedesktop.DBus -> destination=:1.7 serial=2 \
                      path=/org/freedesktop/DBus; interface=org.freedesktop.DBus; member=NameAcquired\n   \
                      string \":1.7\"\n\
                      signal time=2.0 sender=:1.2 -> destination=(null destination) serial=9 \
                      path=/org/freedesktop/login1; interface=org.freedesktop.login1.Manager; member=PrepareForSleep\n   \
                      boolean true\n\
                      signal time=3.0 sender=:1.3 -> destination=(null destination) serial=4 \
                      path=/x; interface=y; member=Other\n   \
                      boolean true\n\
                      signal time=9.0 sender=:1.2 -> destination=(null destination) serial=10 \
                      path=/org/freedesktop/login1; interface=org.freedesktop.login1.Manager; member=PrepareForSleep\n   \
                      boolean false\n";
        let mut parser = MonitorParser::default();
        let events: Vec<bool> = output.lines().filter_map(|l| parser.line(l)).collect();
        assert_eq!(events, vec![true, false]);
    }
}
