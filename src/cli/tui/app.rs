//! The TUI's state and what keys and finished jobs do to it. Everything
//! that acts (a daemon, the network, a file in a mount) is an [`Effect`]
//! that `jobs` carries out, and its result comes back as [`App::done`];
//! the only I/O here is looking: the folder the wizard describes, and a
//! folder's config file when no daemon says what is in force.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::folders::{Folder, MAX_FOLDERS};
use super::forms::{prompt_key, yes_no, Field, HistoryView, IgnoreEditor, Outcome, SettingsForm};
use super::wizard::{Choice, Step, Wizard, WizardAction};
use crate::control::schema::{PeerStatus, Status, VersionRow};

/// Something for the I/O side to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Run `psync --data-dir DIR ARGS...`; its result comes back for `job`.
    Cli { data_dir: PathBuf, args: Vec<String>, job: Job },
    /// Create the folder (if asked), then `psync mount [--adopt] FOLDER`.
    Mount { data_dir: PathBuf, folder: PathBuf, create: bool, adopt: bool, job: Job },
    /// Run `psync invite --json`; its steps come back as [`InviteStep`]s.
    Invite { data_dir: PathBuf, read_only: bool },
    /// Answer the running invite's question.
    AnswerInvite(bool),
    /// Stop the wizard's running `init` or `join` (it keeps nothing: its
    /// identity file is written last).
    CancelIdentity,
    /// Read a file (`.psyncignore`) for `job`.
    Read { path: PathBuf, job: Job },
    /// Write a file through the mount (`.psyncignore`) for `job`.
    Write { path: PathBuf, text: String, job: Job },
    /// Save the folder list.
    SaveFolders(Vec<Folder>),
}

/// What a finished effect was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// The wizard's `init` or `join`.
    Identity,
    /// The wizard's mount.
    WizardMount,
    /// Mount or unmount from the dashboard.
    Mount,
    /// Anything whose output is simply shown (remove, role, restore).
    Show,
    /// `psync settings`.
    Settings,
    /// `psync log PATH --json`.
    Log(String),
    /// Reading `.psyncignore`.
    LoadIgnore,
    /// Writing `.psyncignore`.
    SaveIgnore,
}

/// A step of a running invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteStep {
    /// The code to type on the new device.
    Code(String),
    /// The new device introduced itself: name, id, certificate fingerprint.
    Device { name: String, id: String, fingerprint: String },
    /// It was added.
    Added(String),
    /// The invite ended without adding anyone (the reason).
    Failed(String),
}

/// One folder as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct FolderState {
    /// The folder.
    pub folder: Folder,
    /// The latest status (from the daemon, or the data dir alone).
    pub status: Option<Status>,
    /// Why the latest status could not be read.
    pub error: Option<String>,
    /// Per peer id: bytes sent and received at the previous status, and when.
    samples: HashMap<String, (u64, u64, Instant)>,
    /// Per peer id: upload and download rates (bytes per second).
    pub rates: HashMap<String, (f64, f64)>,
    /// Per peer id: the most records pending each way since it was last in sync (the bars' 100%).
    pub peaks: HashMap<String, (u64, u64)>,
}

impl FolderState {
    /// A folder not yet asked about.
    pub fn new(folder: Folder) -> Self {
        Self {
            folder,
            status: None,
            error: None,
            samples: HashMap::new(),
            rates: HashMap::new(),
            peaks: HashMap::new(),
        }
    }

    /// A new status, at `now`: rates and bar peaks follow.
    pub fn update(&mut self, status: Status, now: Instant) {
        for peer in &status.peers {
            let (sent, received) = (peer.bytes_sent.unwrap_or(0), peer.bytes_received.unwrap_or(0));
            if let Some((s0, r0, t0)) = self.samples.get(&peer.id) {
                let secs = now.duration_since(*t0).as_secs_f64();
                if secs > 0.0 && sent >= *s0 && received >= *r0 {
                    self.rates.insert(peer.id.clone(), ((sent - s0) as f64 / secs, (received - r0) as f64 / secs));
                }
            }
            self.samples.insert(peer.id.clone(), (sent, received, now));
            let peak = self.peaks.entry(peer.id.clone()).or_default();
            *peak = if peer.in_sync {
                (0, 0)
            } else {
                (peak.0.max(peer.outgoing_records), peak.1.max(peer.incoming_records))
            };
        }
        self.status = Some(status);
        self.error = None;
    }

    /// Mounted (a daemon answers for it).
    pub fn mounted(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.daemon.is_some())
    }

    /// The peers shown.
    pub fn peers(&self) -> &[PeerStatus] {
        self.status.as_ref().map_or(&[], |s| s.peers.as_slice())
    }
}

/// A question before something that cannot be taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// The question.
    pub question: String,
    /// What `y` does.
    pub then: Effect,
}

/// The running invite, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteView {
    /// Read-only device.
    pub read_only: bool,
    /// The latest step (none while the code is being made).
    pub step: Option<InviteStep>,
    /// The question was answered.
    pub answered: bool,
}

/// What the screen shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Folders, peers, changes.
    Dashboard,
    /// Setting a folder up.
    Wizard(Box<Wizard>),
    /// Adding a device.
    Invite(InviteView),
    /// A yes/no question.
    Confirm(Confirm),
    /// Changing limits.
    Settings(SettingsForm),
    /// Editing `.psyncignore`.
    Ignore(IgnoreEditor),
    /// Which file's history.
    HistoryPath(Field),
    /// A file's versions.
    History(HistoryView),
}

/// The whole TUI.
#[derive(Debug)]
pub struct App {
    /// Every folder of the user's list.
    pub folders: Vec<FolderState>,
    /// The folder shown.
    pub current: usize,
    /// The selected peer of that folder.
    pub peer: usize,
    /// What the screen shows.
    pub mode: Mode,
    /// The latest outcome, and whether it is an error.
    pub note: Option<(String, bool)>,
    /// A command running, in words.
    pub busy: Option<String>,
    /// The server the wizard offers.
    pub server: String,
    /// The first folder's data dir (further ones go beside it).
    pub first_data_dir: PathBuf,
    /// The home directory.
    pub home: PathBuf,
    /// `q` was pressed.
    pub quit: bool,
    /// The running invite was given up (its end is not reported).
    invite_cancelled: bool,
    /// The wizard's `init`/`join` was asked to stop.
    identity_cancelled: bool,
}

/// Where a first folder goes by default.
pub const DEFAULT_FOLDER: &str = "~/PSync";

impl App {
    /// The TUI over `folders`; with none, the wizard starts.
    pub fn new(folders: Vec<Folder>, first_data_dir: PathBuf, server: String, home: PathBuf) -> Self {
        let mode = if folders.is_empty() {
            Mode::Wizard(Box::new(Wizard::new(first_data_dir.clone(), &server, home.clone(), DEFAULT_FOLDER, false)))
        } else {
            Mode::Dashboard
        };
        Self {
            folders: folders.into_iter().map(FolderState::new).collect(),
            current: 0,
            peer: 0,
            mode,
            note: None,
            busy: None,
            server,
            first_data_dir,
            home,
            quit: false,
            invite_cancelled: false,
            identity_cancelled: false,
        }
    }

    /// The folder shown, if any.
    pub fn folder(&self) -> Option<&FolderState> {
        self.folders.get(self.current)
    }

    fn selected_peer(&self) -> Option<&PeerStatus> {
        self.folder().and_then(|f| f.peers().get(self.peer))
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        self.note = Some((text.into(), error));
    }

    /// One key; returns what to do.
    pub fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return Vec::new();
        }
        match std::mem::replace(&mut self.mode, Mode::Dashboard) {
            Mode::Dashboard => self.dashboard_key(key),
            Mode::Wizard(mut wizard) => {
                let action = wizard.key(&key);
                self.mode = Mode::Wizard(wizard);
                match action {
                    WizardAction::None => {
                        if key.code == KeyCode::Char('q')
                            && matches!(&self.mode, Mode::Wizard(w) if w.step == Step::Choose)
                        {
                            self.quit = true;
                        }
                        Vec::new()
                    }
                    WizardAction::Cancel => {
                        self.mode = Mode::Dashboard;
                        Vec::new()
                    }
                    WizardAction::Start => self.wizard_start(),
                    WizardAction::CancelWork => {
                        if let Mode::Wizard(wizard) = &mut self.mode {
                            wizard.step = Step::Working("stopping".into());
                        }
                        self.identity_cancelled = true;
                        vec![Effect::CancelIdentity]
                    }
                }
            }
            Mode::Invite(view) => self.invite_key(view, key),
            Mode::Confirm(confirm) => match yes_no(&key) {
                Some(true) => vec![confirm.then],
                Some(false) => Vec::new(),
                None => {
                    self.mode = Mode::Confirm(confirm);
                    Vec::new()
                }
            },
            Mode::Settings(mut form) => match form.key(&key) {
                Outcome::Stay => {
                    self.mode = Mode::Settings(form);
                    Vec::new()
                }
                Outcome::Cancel => Vec::new(),
                Outcome::Submit => self.submit_settings(form),
            },
            Mode::Ignore(mut editor) => match editor.key(&key) {
                Outcome::Stay => {
                    self.mode = Mode::Ignore(editor);
                    Vec::new()
                }
                Outcome::Cancel => Vec::new(),
                Outcome::Submit => match self.folder() {
                    Some(f) => {
                        let path = f.folder.mountpoint.join(psync_sync::ignore::IGNORE_FILE);
                        vec![Effect::Write { path, text: editor.text(), job: Job::SaveIgnore }]
                    }
                    None => Vec::new(),
                },
            },
            Mode::HistoryPath(mut field) => match prompt_key(&mut field, &key) {
                Outcome::Stay => {
                    self.mode = Mode::HistoryPath(field);
                    Vec::new()
                }
                Outcome::Cancel => Vec::new(),
                Outcome::Submit => {
                    let path = field.text().trim_matches('/').to_string();
                    let Some(f) = self.folder() else { return Vec::new() };
                    // No path: the deleted files, to bring one back.
                    let args = if path.is_empty() {
                        vec!["log".into(), "--deleted".into(), "--json".into()]
                    } else {
                        vec!["log".into(), path.clone(), "--json".into()]
                    };
                    vec![Effect::Cli { data_dir: f.folder.data_dir.clone(), args, job: Job::Log(path) }]
                }
            },
            Mode::History(mut view) => match view.key(&key) {
                Outcome::Stay => {
                    self.mode = Mode::History(view);
                    Vec::new()
                }
                Outcome::Cancel => Vec::new(),
                Outcome::Submit => {
                    let (Some(row), Some(f)) = (view.chosen().cloned(), self.folder()) else { return Vec::new() };
                    let path = if view.path.is_empty() { row.path.clone() } else { view.path.clone() };
                    let question = if view.path.is_empty() {
                        format!("Bring the deleted {path} back as version {} ({} bytes)?", row.version, row.size)
                    } else {
                        format!(
                            "Restore {path} to version {} ({} bytes)? It becomes a new version; the current one stays in the history.",
                            row.version, row.size
                        )
                    };
                    let args = vec!["restore".into(), path, "--version".into(), row.version.to_string()];
                    let then = Effect::Cli { data_dir: f.folder.data_dir.clone(), args, job: Job::Show };
                    self.mode = Mode::Confirm(Confirm { question, then });
                    Vec::new()
                }
            },
        }
    }

    fn dashboard_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Tab | KeyCode::Right if !self.folders.is_empty() => {
                self.current = (self.current + 1) % self.folders.len();
                self.peer = 0;
            }
            KeyCode::BackTab | KeyCode::Left if !self.folders.is_empty() => {
                self.current = (self.current + self.folders.len() - 1) % self.folders.len();
                self.peer = 0;
            }
            KeyCode::Up | KeyCode::Char('k') => self.peer = self.peer.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                let peers = self.folder().map_or(0, |f| f.peers().len());
                self.peer = (self.peer + 1).min(peers.saturating_sub(1));
            }
            KeyCode::Char('a') => {
                if self.folders.len() >= MAX_FOLDERS {
                    self.say(format!("at most {MAX_FOLDERS} folders"), true);
                } else {
                    let name = format!("folder{}", self.folders.len() + 1);
                    let data_dir = super::folders::data_dir_for(&self.first_data_dir, &name);
                    let folder = format!("~/PSync-{}", self.folders.len() + 1);
                    // The server of the folder shown, unless one was given.
                    let shown =
                        self.folder().and_then(|f| f.status.as_ref()?.signalling.as_ref()).map(|s| s.server.clone());
                    let server = if self.server.is_empty() { shown.unwrap_or_default() } else { self.server.clone() };
                    self.mode =
                        Mode::Wizard(Box::new(Wizard::new(data_dir, &server, self.home.clone(), &folder, true)));
                }
            }
            _ => return self.folder_key(key.code),
        }
        Vec::new()
    }

    /// Keys that act on the folder shown.
    fn folder_key(&mut self, code: KeyCode) -> Vec<Effect> {
        let Some(f) = self.folder() else { return Vec::new() };
        let data_dir = f.folder.data_dir.clone();
        let mountpoint = f.folder.mountpoint.clone();
        let mounted = f.mounted();
        let in_force = f.status.as_ref().and_then(|s| s.daemon.as_ref()).map(|d| d.settings.clone());
        match code {
            KeyCode::Char('m') if self.busy.is_some() => {
                let busy = self.busy.clone().unwrap_or_default();
                self.say(format!("wait: {busy}"), true);
            }
            KeyCode::Char('m') if mounted => {
                self.busy = Some(format!("unmounting {}", mountpoint.display()));
                let args = vec!["unmount".into(), mountpoint.display().to_string()];
                return vec![Effect::Cli { data_dir, args, job: Job::Mount }];
            }
            KeyCode::Char('m') => {
                self.busy = Some(format!("mounting {}", mountpoint.display()));
                return vec![Effect::Mount {
                    data_dir,
                    folder: mountpoint,
                    create: false,
                    adopt: false,
                    job: Job::Mount,
                }];
            }
            KeyCode::Char('i') | KeyCode::Char('I') => {
                let read_only = code == KeyCode::Char('I');
                self.mode = Mode::Invite(InviteView { read_only, step: None, answered: false });
                self.invite_cancelled = false;
                return vec![Effect::Invite { data_dir, read_only }];
            }
            KeyCode::Char('x') | KeyCode::Char('o') => {
                let Some(peer) = self.selected_peer().cloned() else {
                    self.say("no device selected (↑↓ pick one)", true);
                    return Vec::new();
                };
                let (question, args) = if code == KeyCode::Char('x') {
                    (
                        format!("Remove {} ({})? It is cut off at once and can never sync again.", peer.name, peer.id),
                        vec!["remove".to_string(), peer.id.clone()],
                    )
                } else if peer.role == "full" {
                    (
                        format!("Make {} read-only? It keeps receiving; its changes stay on it.", peer.name),
                        vec!["role".to_string(), peer.id.clone(), "--read-only".to_string()],
                    )
                } else {
                    (
                        format!("Make {} full? Its changes reach the group again.", peer.name),
                        vec!["role".to_string(), peer.id.clone(), "--full".to_string()],
                    )
                };
                self.mode = Mode::Confirm(Confirm { question, then: Effect::Cli { data_dir, args, job: Job::Show } });
            }
            KeyCode::Char('h') => {
                self.mode = Mode::HistoryPath(Field::new("File", "", "relative to the folder; empty: deleted files"))
            }
            // What the daemon runs with, else what the next mount would read.
            KeyCode::Char('s') => match in_force.map_or_else(|| crate::config::saved(None, &data_dir), Ok) {
                Ok(settings) => self.mode = Mode::Settings(SettingsForm::new(&settings)),
                Err(e) => self.say(format!("{e:#}"), true),
            },
            KeyCode::Char('g') if mounted => {
                let path = mountpoint.join(psync_sync::ignore::IGNORE_FILE);
                return vec![Effect::Read { path, job: Job::LoadIgnore }];
            }
            KeyCode::Char('g') => self.say("mount the folder first: .psyncignore is a file in it", true),
            _ => {}
        }
        Vec::new()
    }

    fn submit_settings(&mut self, mut form: SettingsForm) -> Vec<Effect> {
        let Some(f) = self.folder() else { return Vec::new() };
        let data_dir = f.folder.data_dir.clone();
        match form.change() {
            Ok(change) => {
                self.busy = Some("changing settings".into());
                vec![Effect::Cli { data_dir, args: change.to_args(), job: Job::Settings }]
            }
            Err(e) => {
                form.error = Some(e);
                self.mode = Mode::Settings(form);
                Vec::new()
            }
        }
    }

    fn invite_key(&mut self, view: InviteView, key: KeyEvent) -> Vec<Effect> {
        let asking = matches!(view.step, Some(InviteStep::Device { .. })) && !view.answered;
        let finished = matches!(view.step, Some(InviteStep::Added(_)) | Some(InviteStep::Failed(_)));
        if asking {
            if let Some(yes) = yes_no(&key) {
                self.mode = Mode::Invite(InviteView { answered: true, ..view });
                return vec![Effect::AnswerInvite(yes)];
            }
        } else if finished || key.code == KeyCode::Esc {
            // Esc while waiting: the invite is given up (the process is told no).
            if !finished {
                self.say("invite cancelled", false);
                self.invite_cancelled = true;
                return vec![Effect::AnswerInvite(false)];
            }
            return Vec::new();
        }
        self.mode = Mode::Invite(view);
        Vec::new()
    }

    fn wizard_start(&mut self) -> Vec<Effect> {
        let Mode::Wizard(wizard) = &mut self.mode else { return Vec::new() };
        let Step::Confirm(plan) = wizard.step.clone() else { return Vec::new() };
        wizard.confirmed = Some(plan.clone());
        let data_dir = wizard.data_dir.clone();
        if wizard.has_identity {
            wizard.step = Step::Working(format!("mounting {}", plan.folder.display()));
            return vec![Effect::Mount {
                data_dir,
                folder: plan.folder,
                create: plan.create,
                adopt: plan.adopt,
                job: Job::WizardMount,
            }];
        }
        let (server, name) = (wizard.server.text().to_string(), wizard.name.text().to_string());
        let args = match wizard.choice {
            Choice::Found => {
                wizard.step = Step::Working(format!("founding the group on {server}"));
                vec!["init".to_string(), "--name".into(), name, "--server".into(), server]
            }
            Choice::Join => {
                wizard.step = Step::Working(
                    "joining: waiting for the inviting device to confirm this device (it shows its name)".into(),
                );
                let code = wizard.code.text().to_string();
                vec!["join".to_string(), code, "--name".into(), name, "--server".into(), server]
            }
        };
        vec![Effect::Cli { data_dir, args, job: Job::Identity }]
    }

    /// An invite's step arrived.
    pub fn invite_step(&mut self, step: InviteStep) {
        match &mut self.mode {
            Mode::Invite(view) => view.step = Some(step),
            _ => match step {
                InviteStep::Added(name) => self.say(format!("added {name} to the group"), false),
                // The end of an invite given up here is no news.
                InviteStep::Failed(_) if self.invite_cancelled => self.invite_cancelled = false,
                InviteStep::Failed(why) => self.say(why, true),
                _ => {}
            },
        }
    }

    /// A job finished: `Ok` with its output, or `Err` with why it failed.
    pub fn done(&mut self, job: Job, result: Result<String, String>) -> Vec<Effect> {
        self.busy = None;
        let last_line = |text: &str| text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("done").to_string();
        match (job, result) {
            (Job::Identity, Ok(_)) => {
                // Finished before it could be stopped: it is set up, so go on.
                self.identity_cancelled = false;
                let Mode::Wizard(wizard) = &mut self.mode else { return Vec::new() };
                wizard.has_identity = true;
                let Some(plan) = wizard.confirmed.clone() else { return Vec::new() };
                // Straight on to the mount the user confirmed.
                let (folder, create, adopt) = (plan.folder, plan.create, plan.adopt);
                wizard.step = Step::Working(format!("mounting {}", folder.display()));
                vec![Effect::Mount { data_dir: wizard.data_dir.clone(), folder, create, adopt, job: Job::WizardMount }]
            }
            (Job::Identity, Err(e)) => {
                let cancelled = std::mem::take(&mut self.identity_cancelled);
                if let Mode::Wizard(wizard) = &mut self.mode {
                    let at = if wizard.choice == Choice::Join { Step::Code } else { Step::Server };
                    wizard.failed(if cancelled { "stopped; this device is not set up".into() } else { e }, at);
                }
                Vec::new()
            }
            (Job::WizardMount, Ok(_)) => {
                let Mode::Wizard(wizard) = &self.mode else { return Vec::new() };
                let mountpoint = wizard.confirmed.as_ref().map_or_else(|| wizard.folder_path(), |p| p.folder.clone());
                let name = mountpoint.file_name().map_or("folder".into(), |n| n.to_string_lossy().into_owned());
                let folder = Folder { name, data_dir: wizard.data_dir.clone(), mountpoint: mountpoint.clone() };
                self.folders.push(FolderState::new(folder));
                self.current = self.folders.len() - 1;
                self.mode = Mode::Dashboard;
                self.say(format!("{} is mounted and syncs; [i] adds another device", mountpoint.display()), false);
                vec![Effect::SaveFolders(self.folders.iter().map(|f| f.folder.clone()).collect())]
            }
            (Job::WizardMount, Err(e)) => {
                if let Mode::Wizard(wizard) = &mut self.mode {
                    wizard.failed(e, Step::Folder);
                }
                Vec::new()
            }
            (Job::Log(path), Ok(text)) => match serde_json::from_str::<Vec<VersionRow>>(&text) {
                Ok(rows) if rows.is_empty() => {
                    self.say(
                        if path.is_empty() { "no deleted files".into() } else { format!("{path} has no versions") },
                        true,
                    );
                    Vec::new()
                }
                Ok(rows) => {
                    self.mode = Mode::History(HistoryView::new(path, rows));
                    Vec::new()
                }
                Err(e) => {
                    self.say(format!("unexpected answer from psync log: {e}"), true);
                    Vec::new()
                }
            },
            (Job::LoadIgnore, Ok(text)) => {
                self.mode = Mode::Ignore(IgnoreEditor::new(&text));
                Vec::new()
            }
            (Job::SaveIgnore, Ok(_)) => {
                self.say(".psyncignore saved: it applies at once and syncs to the group", false);
                Vec::new()
            }
            (_, Ok(text)) => {
                self.say(last_line(&text), false);
                Vec::new()
            }
            (_, Err(e)) => {
                self.say(e, true);
                Vec::new()
            }
        }
    }
}
