//! The TUI's I/O: each [`Effect`] runs on a thread of its own, as the
//! `psync` command a user would type (this same binary), and its result
//! comes back to the screen's loop as an [`Event`]. Status is polled from
//! each folder's daemon through its control socket, as `psync status` does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::app::{Effect, InviteStep, Job};
use super::folders::Folder;
use crate::control::schema::Status;

/// How often each folder's status is asked for.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The most of a command's output kept (bytes).
const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// What comes back to the screen's loop.
#[derive(Debug)]
pub enum Event {
    /// A folder's status (by index in the list of `generation`).
    Status { generation: u64, index: usize, status: Result<Box<Status>, String> },
    /// An effect finished.
    Done(Job, Result<String, String>),
    /// The running invite moved on.
    Invite(InviteStep),
}

/// Runs effects.
#[derive(Debug)]
pub struct Jobs {
    events: Sender<Event>,
    exe: PathBuf,
    /// `--config`, for the folder whose data dir it goes with.
    config: Option<(PathBuf, PathBuf)>,
    invite: Arc<Mutex<Option<Invite>>>,
    /// The wizard's running `init` or `join`.
    identity: Arc<Mutex<Option<u32>>>,
    /// Bumped when the folder list changes: older pollers stop.
    generation: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Invite {
    stdin: std::process::ChildStdin,
    pid: u32,
    asked: Arc<AtomicBool>,
}

impl Jobs {
    /// Effects run `exe`; `config` is `--config FILE` for `DATA_DIR`.
    pub fn new(events: Sender<Event>, exe: PathBuf, config: Option<(PathBuf, PathBuf)>) -> Self {
        Self { events, exe, config, invite: Arc::default(), identity: Arc::default(), generation: Arc::default() }
    }

    fn command(&self, data_dir: &Path) -> Command {
        let mut command = Command::new(&self.exe);
        command.arg("--data-dir").arg(data_dir);
        if let Some((dir, file)) = &self.config {
            if dir == data_dir {
                command.arg("--config").arg(file);
            }
        }
        command.stdin(Stdio::null());
        command
    }

    /// Starts one effect.
    pub fn run(&self, effect: Effect) {
        let events = self.events.clone();
        match effect {
            Effect::Cli { data_dir, args, job } => {
                let command = self.command(&data_dir);
                // The wizard's init or join may be stopped: keep its pid.
                let tracked = (job == Job::Identity).then(|| self.identity.clone());
                spawn(move || {
                    let _ = events.send(Event::Done(job, run_command(command, &args, tracked)));
                });
            }
            Effect::CancelIdentity => {
                if let Some(pid) = self.identity.lock().ok().and_then(|p| *p) {
                    terminate(pid);
                }
            }
            Effect::Mount { data_dir, folder, create, adopt, job } => {
                let command = self.command(&data_dir);
                spawn(move || {
                    let result = (|| {
                        if create {
                            std::fs::create_dir_all(&folder)
                                .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
                        }
                        let mut args = vec!["mount".to_string(), folder.display().to_string()];
                        if adopt {
                            args.push("--adopt".into());
                        }
                        run_command(command, &args, None)
                    })();
                    let _ = events.send(Event::Done(job, result));
                });
            }
            Effect::Invite { data_dir, read_only } => self.start_invite(&data_dir, read_only),
            Effect::AnswerInvite(yes) => {
                if let Ok(mut invite) = self.invite.lock() {
                    if let Some(running) = invite.as_mut() {
                        if running.asked.load(Ordering::SeqCst) {
                            let _ = running.stdin.write_all(if yes { b"y\n" } else { b"n\n" });
                            let _ = running.stdin.flush();
                        } else {
                            // Cancelled before anyone asked to join: nothing to refuse.
                            terminate(running.pid);
                        }
                    }
                }
            }
            // On a thread: a mount that hangs must not hang the screen. The
            // file is in the vault, where a peer may have put a symlink: it
            // is never followed (O_NOFOLLOW), so nothing outside is read or written.
            Effect::Read { path, job } => spawn(move || {
                let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path);
                let mut text = String::new();
                let result = match opened.and_then(|f| f.take(MAX_OUTPUT_BYTES).read_to_string(&mut text)) {
                    Ok(_) => Ok(text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                    Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                };
                let _ = events.send(Event::Done(job, result));
            }),
            Effect::Write { path, text, job } => spawn(move || {
                let result = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .map(|()| String::new());
                let _ =
                    events.send(Event::Done(job, result.map_err(|e| format!("cannot write {}: {e}", path.display()))));
            }),
            Effect::SaveFolders(_) => {}
        }
    }

    fn start_invite(&self, data_dir: &Path, read_only: bool) {
        let mut command = self.command(data_dir);
        command.args(["invite", "--json"]);
        if read_only {
            command.arg("--read-only");
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let events = self.events.clone();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = events.send(Event::Invite(InviteStep::Failed(format!("cannot run psync invite: {e}"))));
                return;
            }
        };
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = events.send(Event::Invite(InviteStep::Failed("psync invite has no pipes".into())));
            return;
        };
        let asked = Arc::new(AtomicBool::new(false));
        if let Ok(mut slot) = self.invite.lock() {
            *slot = Some(Invite { stdin, pid: child.id(), asked: asked.clone() });
        }
        let slot = self.invite.clone();
        spawn(move || {
            let mut added = false;
            for line in BufReader::new(stdout.take(MAX_OUTPUT_BYTES)).lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let text = |k: &str| event[k].as_str().unwrap_or_default().to_string();
                let step = match event["event"].as_str() {
                    Some("code") => InviteStep::Code(text("code")),
                    Some("device") => {
                        asked.store(true, Ordering::SeqCst);
                        InviteStep::Device { name: text("name"), id: text("id"), fingerprint: text("fingerprint") }
                    }
                    Some("added") => {
                        added = true;
                        InviteStep::Added(text("name"))
                    }
                    _ => continue,
                };
                let _ = events.send(Event::Invite(step));
            }
            let mut errors = String::new();
            let _ = stderr.take(MAX_OUTPUT_BYTES).read_to_string(&mut errors);
            let _ = child.wait();
            if let Ok(mut slot) = slot.lock() {
                *slot = None;
            }
            if !added {
                let _ = events.send(Event::Invite(InviteStep::Failed(error_text(&errors))));
            }
        });
    }

    /// Starts polling each folder's status; pollers of an older list stop.
    pub fn poll(&self, folders: &[Folder]) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        for (index, folder) in folders.iter().enumerate() {
            let (events, current, data_dir) = (self.events.clone(), self.generation.clone(), folder.data_dir.clone());
            spawn(move || {
                while current.load(Ordering::SeqCst) == generation {
                    let status = crate::control::client::status(&data_dir).map(Box::new).map_err(|e| format!("{e:#}"));
                    if events.send(Event::Status { generation, index, status }).is_err() {
                        return;
                    }
                    std::thread::sleep(STATUS_EVERY);
                }
            });
        }
    }

    /// The generation of the latest [`Jobs::poll`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Asks a `psync` child to stop (SIGTERM).
fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
    }
}

fn spawn(work: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("psync-tui-job".into()).spawn(work) {
        tracing::error!("cannot start a thread: {e}");
    }
}

/// Runs a `psync` command: its output, or what it said went wrong. With
/// `pid`, its process id is kept there while it runs.
fn run_command(mut command: Command, args: &[String], pid: Option<Arc<Mutex<Option<u32>>>>) -> Result<String, String> {
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().map_err(|e| format!("cannot run psync: {e}"))?;
    if let Some(slot) = &pid {
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(child.id());
        }
    }
    let output = child.wait_with_output();
    if let Some(slot) = &pid {
        if let Ok(mut slot) = slot.lock() {
            *slot = None;
        }
    }
    let output = output.map_err(|e| format!("psync did not finish: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(if stdout.trim().is_empty() { stderr } else { stdout })
    } else {
        Err(error_text(&stderr))
    }
}

/// The last line that says something, without `error: `.
fn error_text(stderr: &str) -> String {
    let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("it failed without saying why");
    line.trim().trim_start_matches("psync: ").trim_start_matches("error: ").to_string()
}
