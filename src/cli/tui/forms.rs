//! The TUI's small interactive pieces: a text field, the settings form,
//! the ignore-rule editor, a file's versions, and yes/no questions. Each
//! takes keys and says what happened; none does I/O.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::config::Settings;
use crate::config_edit::LimitChange;
use crate::control::schema::VersionRow;

/// The longest text a field takes (characters): names, URLs, paths.
pub const MAX_FIELD_CHARS: usize = 1024;

/// What a key did to a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Taken (edited, moved).
    Stay,
    /// Enter on the last part: done.
    Submit,
    /// Esc: leave without doing anything.
    Cancel,
}

/// A one-line text field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Field {
    /// What it asks for.
    pub label: &'static str,
    /// What is typed.
    pub value: String,
    /// Shown beside it: an example, or what an empty value means.
    pub hint: &'static str,
}

impl Field {
    /// A field with a starting value.
    pub fn new(label: &'static str, value: impl Into<String>, hint: &'static str) -> Self {
        Self { label, value: value.into(), hint }
    }

    /// Edits on a typed character, Backspace or Ctrl-U; false for other keys.
    pub fn edit(&mut self, key: &KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('u') if ctrl => self.value.clear(),
            KeyCode::Char(c) if !ctrl && self.value.chars().count() < MAX_FIELD_CHARS => self.value.push(c),
            KeyCode::Backspace => {
                self.value.pop();
            }
            _ => return false,
        }
        true
    }

    /// The value without surrounding blanks.
    pub fn text(&self) -> &str {
        self.value.trim()
    }
}

/// Keys of a one-field prompt.
pub fn prompt_key(field: &mut Field, key: &KeyEvent) -> Outcome {
    match key.code {
        KeyCode::Enter => Outcome::Submit,
        KeyCode::Esc => Outcome::Cancel,
        _ => {
            field.edit(key);
            Outcome::Stay
        }
    }
}

/// Debounce and rate limits, as text fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsForm {
    /// Debounce, upload limit, download limit.
    pub fields: [Field; 3],
    /// The field being edited.
    pub focus: usize,
    /// Why the last attempt was refused.
    pub error: Option<String>,
}

impl SettingsForm {
    /// Filled with the settings in force.
    pub fn new(settings: &Settings) -> Self {
        let rate = |r: Option<u64>| match r {
            None => "0".to_string(),
            Some(b) if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
            Some(b) if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
            Some(b) => b.to_string(),
        };
        Self {
            fields: [
                Field::new("Debounce (ms)", settings.debounce_ms.to_string(), "changes within it go out together"),
                Field::new("Upload limit", rate(settings.upload_bytes_per_sec), "per second: 500KiB, 2MiB; 0 none"),
                Field::new("Download limit", rate(settings.download_bytes_per_sec), "per second; 0 none"),
            ],
            focus: 0,
            error: None,
        }
    }

    /// Tab/arrows move, Enter on the last field submits.
    pub fn key(&mut self, key: &KeyEvent) -> Outcome {
        let last = self.fields.len() - 1;
        match key.code {
            KeyCode::Esc => return Outcome::Cancel,
            KeyCode::Enter if self.focus == last => return Outcome::Submit,
            KeyCode::Enter | KeyCode::Tab | KeyCode::Down => self.focus = (self.focus + 1).min(last),
            KeyCode::BackTab | KeyCode::Up => self.focus = self.focus.saturating_sub(1),
            _ => {
                self.fields[self.focus].edit(key);
            }
        }
        Outcome::Stay
    }

    /// The change the form asks for, checked as `psync settings` checks it.
    pub fn change(&self) -> Result<LimitChange, String> {
        let debounce = self.fields[0].text();
        let debounce_ms =
            debounce.parse::<u64>().map_err(|_| format!("debounce {debounce:?} is not a number of milliseconds"))?;
        let change = LimitChange {
            debounce_ms: Some(debounce_ms),
            upload_limit: Some(self.fields[1].text().to_string()),
            download_limit: Some(self.fields[2].text().to_string()),
        };
        change.check().map_err(|e| format!("{e:#}"))?;
        Ok(change)
    }
}

/// `.psyncignore`'s lines, edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreEditor {
    /// The lines.
    pub lines: Vec<String>,
    /// The selected line.
    pub selected: usize,
    /// A line being added.
    pub adding: Option<Field>,
}

impl IgnoreEditor {
    /// From the file's text.
    pub fn new(text: &str) -> Self {
        Self { lines: text.lines().map(str::to_string).collect(), selected: 0, adding: None }
    }

    /// `a` adds a line, `d` deletes the selected one, `w` saves, Esc leaves.
    pub fn key(&mut self, key: &KeyEvent) -> Outcome {
        if let Some(field) = &mut self.adding {
            match prompt_key(field, key) {
                Outcome::Submit => {
                    let line = field.text().to_string();
                    self.adding = None;
                    if !line.is_empty() {
                        self.lines.push(line);
                        self.selected = self.lines.len() - 1;
                    }
                }
                Outcome::Cancel => self.adding = None,
                Outcome::Stay => {}
            }
            return Outcome::Stay;
        }
        match key.code {
            KeyCode::Esc => return Outcome::Cancel,
            KeyCode::Char('w') | KeyCode::Enter => return Outcome::Submit,
            KeyCode::Char('a') => {
                self.adding = Some(Field::new("New rule", "", "gitignore syntax: *.tmp, build/, !keep.md"))
            }
            KeyCode::Char('d') | KeyCode::Delete if self.selected < self.lines.len() => {
                self.lines.remove(self.selected);
                self.selected = self.selected.min(self.lines.len().saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.lines.len().saturating_sub(1));
            }
            _ => {}
        }
        Outcome::Stay
    }

    /// The file's new text.
    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }
}

/// A file's versions; Enter picks one to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryView {
    /// The file (relative to the folder).
    pub path: String,
    /// Oldest first, as `psync log --json` lists them.
    pub rows: Vec<VersionRow>,
    /// The selected row.
    pub selected: usize,
}

impl HistoryView {
    /// Starts on the newest version.
    pub fn new(path: String, rows: Vec<VersionRow>) -> Self {
        let selected = rows.len().saturating_sub(1);
        Self { path, rows, selected }
    }

    /// Arrows move, Enter submits the selected version.
    pub fn key(&mut self, key: &KeyEvent) -> Outcome {
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') => return Outcome::Cancel,
            KeyCode::Enter | KeyCode::Char('r') if !self.rows.is_empty() => return Outcome::Submit,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.rows.len().saturating_sub(1))
            }
            _ => {}
        }
        Outcome::Stay
    }

    /// The selected version.
    pub fn chosen(&self) -> Option<&VersionRow> {
        self.rows.get(self.selected)
    }
}

/// Keys of a yes/no question: `y` yes, `n` or Esc no.
pub fn yes_no(key: &KeyEvent) -> Option<bool> {
    match key.code {
        KeyCode::Char('y') | KeyCode::Char('Y') => Some(true),
        KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(form: &mut SettingsForm, text: &str) {
        for c in text.chars() {
            form.key(&key(KeyCode::Char(c)));
        }
    }

    #[test]
    fn the_settings_form_edits_checks_and_submits() {
        let settings = crate::config::load(None, &crate::config::MountOptions::default()).unwrap();
        let mut form = SettingsForm::new(&settings);
        assert_eq!(form.fields[0].value, "100");
        form.key(&key(KeyCode::Tab));
        form.key(&KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        typed(&mut form, "2MiB");
        assert_eq!(form.key(&key(KeyCode::Enter)), Outcome::Stay, "Enter moves on before the last field");
        assert_eq!(form.key(&key(KeyCode::Enter)), Outcome::Submit);
        let change = form.change().unwrap();
        assert_eq!(change.upload_limit.as_deref(), Some("2MiB"));
        assert_eq!(change.debounce_ms, Some(100));
        form.fields[2].value = "1KiB".into();
        assert!(form.change().unwrap_err().contains("minimum"));
        form.fields[0].value = "soon".into();
        assert!(form.change().unwrap_err().contains("debounce"));
        assert_eq!(form.key(&key(KeyCode::Esc)), Outcome::Cancel);
    }

    #[test]
    fn the_ignore_editor_adds_and_deletes_lines() {
        let mut editor = IgnoreEditor::new("*.tmp\nbuild/\n");
        editor.key(&key(KeyCode::Char('a')));
        for c in "drafts/".chars() {
            editor.key(&key(KeyCode::Char(c)));
        }
        editor.key(&key(KeyCode::Enter));
        assert_eq!(editor.lines, ["*.tmp", "build/", "drafts/"]);
        editor.key(&key(KeyCode::Up));
        editor.key(&key(KeyCode::Char('d')));
        assert_eq!(editor.text(), "*.tmp\ndrafts/\n");
        assert_eq!(editor.key(&key(KeyCode::Char('w'))), Outcome::Submit);
    }
}
