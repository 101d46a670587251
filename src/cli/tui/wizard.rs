//! The first-run wizard: found a group or join one with a code, name this
//! device, pick the folder (with a confirmation that says what will happen
//! to it), mount. The steps that change anything run the same commands a
//! user would type (`psync init`, `psync join`, `psync mount [--adopt]`).

use std::path::{Path, PathBuf};

use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::forms::{prompt_key, Field, Outcome};

/// Found a new group, or join one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// `psync init`.
    Found,
    /// `psync join CODE`.
    Join,
}

/// Where the wizard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Found or join?
    Choose,
    /// The signalling server.
    Server,
    /// This device's name.
    Name,
    /// The invite code (joining).
    Code,
    /// The folder to sync.
    Folder,
    /// What will happen, to confirm.
    Confirm(Plan),
    /// A command runs; what it does, in words.
    Working(String),
}

/// What confirming does to the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The folder, `~` expanded.
    pub folder: PathBuf,
    /// Create it first.
    pub create: bool,
    /// Take its files in (`psync mount --adopt`).
    pub adopt: bool,
    /// The lines shown.
    pub lines: Vec<String>,
}

/// What the wizard asks the TUI to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WizardAction {
    /// Nothing (yet).
    None,
    /// Leave the wizard (only when there is a dashboard to go back to).
    Cancel,
    /// Run `psync init` or `psync join`, then mount.
    Start,
    /// Esc while `init` or `join` runs: stop it.
    CancelWork,
}

/// The wizard's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wizard {
    /// The step shown.
    pub step: Step,
    /// Found or join.
    pub choice: Choice,
    /// The signalling server's URL.
    pub server: Field,
    /// This device's name.
    pub name: Field,
    /// The invite code.
    pub code: Field,
    /// The folder.
    pub folder: Field,
    /// The data dir this folder's device lives in.
    pub data_dir: PathBuf,
    /// The data dir already holds a device (a wizard cut short): skip to the folder.
    pub has_identity: bool,
    /// The last failure, shown until the next step.
    pub error: Option<String>,
    /// Whether Esc on the first step may leave (a dashboard exists).
    pub cancellable: bool,
    /// The home directory, for `~`.
    pub home: PathBuf,
    /// The plan confirmed, carried out once the identity is made.
    pub confirmed: Option<Plan>,
}

impl Wizard {
    /// A wizard for a new device in `data_dir`.
    pub fn new(data_dir: PathBuf, server: &str, home: PathBuf, default_folder: &str, cancellable: bool) -> Self {
        // The identity file is written last: without it, `init`/`join` sets leftovers aside.
        let has_identity = data_dir.join(crate::data_dir::IDENTITY_FILE).exists();
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Self {
            step: if has_identity { Step::Folder } else { Step::Choose },
            choice: Choice::Found,
            server: Field::new("Signalling server", server, "ws://host:7700 or wss://..."),
            name: Field::new("This device's name", host, "shown to your other devices"),
            code: Field::new("Invite code", "", "from `psync invite` or the TUI's [i] on a member device"),
            folder: Field::new("Folder to sync", default_folder, "a new folder, or an existing vault"),
            data_dir,
            has_identity,
            error: None,
            cancellable,
            home,
            confirmed: None,
        }
    }

    /// The field of the current step, if it has one.
    pub fn field(&self) -> Option<&Field> {
        match self.step {
            Step::Server => Some(&self.server),
            Step::Name => Some(&self.name),
            Step::Code => Some(&self.code),
            Step::Folder => Some(&self.folder),
            _ => None,
        }
    }

    fn field_mut(&mut self) -> Option<&mut Field> {
        match self.step {
            Step::Server => Some(&mut self.server),
            Step::Name => Some(&mut self.name),
            Step::Code => Some(&mut self.code),
            Step::Folder => Some(&mut self.folder),
            _ => None,
        }
    }

    /// One key.
    pub fn key(&mut self, key: &KeyEvent) -> WizardAction {
        match self.step.clone() {
            Step::Choose => match key.code {
                KeyCode::Char('f') | KeyCode::Char('F') => self.chose(Choice::Found),
                KeyCode::Char('j') | KeyCode::Char('J') => self.chose(Choice::Join),
                KeyCode::Esc if self.cancellable => return WizardAction::Cancel,
                _ => {}
            },
            Step::Confirm(_) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => return WizardAction::Start,
                KeyCode::Esc | KeyCode::Char('n') | KeyCode::Char('b') => self.step = Step::Folder,
                _ => {}
            },
            Step::Working(_) if key.code == KeyCode::Esc && !self.has_identity => return WizardAction::CancelWork,
            Step::Working(_) => {}
            step => {
                let Some(field) = self.field_mut() else { return WizardAction::None };
                match prompt_key(field, key) {
                    Outcome::Stay => {}
                    Outcome::Cancel => self.back(&step),
                    Outcome::Submit => self.next(&step),
                }
            }
        }
        WizardAction::None
    }

    fn chose(&mut self, choice: Choice) {
        self.choice = choice;
        self.error = None;
        self.step = Step::Server;
    }

    fn back(&mut self, from: &Step) {
        self.error = None;
        self.step = match from {
            Step::Server => Step::Choose,
            Step::Name => Step::Server,
            Step::Code => Step::Name,
            Step::Folder if self.has_identity => Step::Folder,
            Step::Folder if self.choice == Choice::Join => Step::Code,
            Step::Folder => Step::Name,
            other => other.clone(),
        };
    }

    fn next(&mut self, from: &Step) {
        let empty = self.field().is_some_and(|f| f.text().is_empty());
        if empty {
            self.error = Some("type a value first".into());
            return;
        }
        self.error = None;
        self.step = match from {
            Step::Server if !self.server.text().starts_with("ws://") && !self.server.text().starts_with("wss://") => {
                self.error = Some("the server's URL starts with ws:// or wss://".into());
                Step::Server
            }
            Step::Server => Step::Name,
            Step::Name if self.choice == Choice::Join => Step::Code,
            Step::Name | Step::Code => Step::Folder,
            Step::Folder => match plan(self) {
                Ok(plan) => Step::Confirm(plan),
                Err(e) => {
                    self.error = Some(e);
                    Step::Folder
                }
            },
            other => other.clone(),
        };
    }

    /// The folder's path, `~` expanded.
    pub fn folder_path(&self) -> PathBuf {
        expand_home(self.folder.text(), &self.home)
    }

    /// A command failed: show why, at the step that can fix it.
    pub fn failed(&mut self, error: String, at: Step) {
        self.error = Some(error);
        self.step = at;
    }
}

/// `~/x` as `$HOME/x`.
pub fn expand_home(text: &str, home: &Path) -> PathBuf {
    match text.strip_prefix("~") {
        Some("") => home.to_path_buf(),
        Some(rest) if rest.starts_with('/') => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(text),
    }
}

/// Files counted at most when describing a folder to adopt (count).
const MAX_FILES_COUNTED: usize = 100_000;

/// Looks at the chosen folder and says what confirming will do to it.
fn plan(wizard: &Wizard) -> Result<Plan, String> {
    let folder = wizard.folder_path();
    if !folder.is_absolute() {
        return Err(format!("{} is not a full path (like ~/PSync or /home/me/Vault)", folder.display()));
    }
    if folder.starts_with(&wizard.data_dir) {
        return Err(format!("{} is inside this device's data dir; pick another folder", folder.display()));
    }
    let mut lines = match wizard.choice {
        _ if wizard.has_identity => vec!["This device already belongs to its group.".to_string()],
        Choice::Found => vec![format!(
            "A new group is founded on {}, with this device as {:?}.",
            wizard.server.text(),
            wizard.name.text()
        )],
        Choice::Join => vec![format!(
            "This device joins as {:?} with code {}; the inviting device must confirm it.",
            wizard.name.text(),
            wizard.code.text()
        )],
    };
    let (create, adopt) = match std::fs::symlink_metadata(&folder) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            lines.push(format!("{} does not exist: it is created, and PSync mounted on it.", folder.display()));
            (true, false)
        }
        Err(e) => return Err(format!("cannot look at {}: {e}", folder.display())),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(format!("{} is a symbolic link; give the folder it points to", folder.display()))
        }
        Ok(meta) if !meta.is_dir() => return Err(format!("{} is not a folder", folder.display())),
        Ok(_) => match count_files(&folder) {
            Err(e) => return Err(format!("cannot read {}: {e}", folder.display())),
            Ok((0, _)) => {
                lines.push(format!("{} is empty: PSync is mounted on it.", folder.display()));
                (false, false)
            }
            Ok((files, bytes)) => {
                let more = if files >= MAX_FILES_COUNTED { "at least " } else { "" };
                lines.push(format!(
                    "{} holds {more}{files} files ({}). They are taken into PSync (times and modes kept),",
                    folder.display(),
                    super::super::status::bytes(bytes)
                ));
                lines.push(format!(
                    "the original is kept beside it as {}.before-psync, and PSync is mounted at the same path.",
                    folder.display()
                ));
                if wizard.choice == Choice::Join && !wizard.has_identity {
                    lines.push(
                        "The group's files join them; a file changed on both sides keeps both versions.".to_string(),
                    );
                }
                (false, true)
            }
        },
    };
    lines.push("Nothing outside this folder and the data dir is touched.".to_string());
    Ok(Plan { folder, create, adopt, lines })
}

/// Files and bytes below `dir` (not following symlinks), up to [`MAX_FILES_COUNTED`].
fn count_files(dir: &Path) -> std::io::Result<(usize, u64)> {
    let (mut files, mut bytes, mut entries) = (0usize, 0u64, 0usize);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            entries += 1;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
            if files >= MAX_FILES_COUNTED {
                return Ok((files, bytes));
            }
        }
    }
    // Empty folders only: nothing to take in, but not empty either.
    Ok((if files == 0 && entries > 0 { entries } else { files }, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyModifiers;

    fn press(w: &mut Wizard, code: KeyCode) -> WizardAction {
        w.key(&KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(w: &mut Wizard, text: &str) {
        w.key(&KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        for c in text.chars() {
            press(w, KeyCode::Char(c));
        }
        press(w, KeyCode::Enter);
    }

    #[test]
    fn joining_asks_for_server_name_code_and_folder_then_says_what_happens() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_path_buf();
        let mut w = Wizard::new(home.join("data"), "", home.clone(), "~/PSync", false);
        assert_eq!(press(&mut w, KeyCode::Esc), WizardAction::None, "nothing to go back to on first run");
        press(&mut w, KeyCode::Char('j'));
        typed(&mut w, "http://x");
        assert!(w.error.as_deref().unwrap().contains("ws://"));
        typed(&mut w, "ws://127.0.0.1:7700");
        typed(&mut w, "laptop");
        assert_eq!(w.step, Step::Code);
        typed(&mut w, "1234-apple-river");
        assert_eq!(w.step, Step::Folder);
        press(&mut w, KeyCode::Enter);
        let Step::Confirm(plan) = w.step.clone() else { panic!("{:?}", w.step) };
        assert!(plan.create && !plan.adopt);
        assert_eq!(plan.folder, home.join("PSync"));
        assert!(plan.lines[0].contains("1234-apple-river"), "{plan:?}");
        assert_eq!(press(&mut w, KeyCode::Char('y')), WizardAction::Start);

        // An existing vault is adopted, and the confirmation says so.
        std::fs::create_dir_all(home.join("Vault/notes")).unwrap();
        std::fs::write(home.join("Vault/notes/a.md"), "hello").unwrap();
        w.step = Step::Folder;
        typed(&mut w, "~/Vault");
        let Step::Confirm(plan) = w.step.clone() else { panic!("{:?}", w.step) };
        assert!(plan.adopt && !plan.create);
        assert!(plan.lines.iter().any(|l| l.contains("holds 1 files")), "{plan:?}");
        assert!(plan.lines.iter().any(|l| l.contains("Vault.before-psync")), "{plan:?}");
        press(&mut w, KeyCode::Esc);
        assert_eq!(w.step, Step::Folder, "Esc goes back from the confirmation");
        typed(&mut w, "relative/path");
        assert!(w.error.as_deref().unwrap().contains("full path"));
        std::fs::write(home.join("file"), "x").unwrap();
        typed(&mut w, "~/file");
        assert!(w.error.as_deref().unwrap().contains("not a folder"));
    }
}
