//! Which paths stay on this device: built-in defaults a vault needs, then
//! the lines of `.psyncignore` at the vault's root (gitignore syntax,
//! matched by the `ignore` crate; a later line wins, so `!pattern` in the
//! file takes a default back). An ignored path lives in the mount and the
//! store like any other but is never announced, and no peer's record is
//! installed over it.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

use psync_base::ContentHash;

use crate::path::SyncPath;
use crate::record::{Blocks, RecordKind};
use crate::storage::{listed_content, StorageError, SyncStorage};

/// The rules file, at the vault's root. It syncs like any file (one set
/// of rules for the group); a line `.psyncignore` in it keeps it per device.
pub const IGNORE_FILE: &str = ".psyncignore";

/// Bytes of `.psyncignore` read; a larger file is not read at all (the
/// defaults stay) and says so.
pub const MAX_IGNORE_FILE_BYTES: u64 = 64 * 1024;

/// Lines of `.psyncignore` taken; the rest are reported and left out.
pub const MAX_IGNORE_LINES: usize = 2_000;

/// The built-in rules, each with why.
pub const DEFAULT_RULES: &[(&str, &str)] = &[
    (".obsidian/workspace.json", "Obsidian: open panes and files, per device"),
    (".obsidian/workspace-mobile.json", "Obsidian mobile: open panes and files, per device"),
    ("*.swp", "vim swap file"),
    ("*.swo", "vim swap file"),
    ("*.swx", "vim swap file"),
    ("4913", "vim's probe that a folder is writable"),
    ("*~", "editor backup"),
    (".#*", "emacs lock"),
    ("#*#", "emacs auto-save"),
    (".~lock.*#", "LibreOffice lock"),
    (".DS_Store", "macOS folder settings"),
    ("._*", "macOS resource fork"),
    (".Spotlight-V100", "macOS index"),
    (".Trashes", "macOS trash"),
    ("Thumbs.db", "Windows thumbnails"),
    ("desktop.ini", "Windows folder settings"),
    (".Trash-*", "Linux trash"),
    (".directory", "KDE folder settings"),
];

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// Built in, with why.
    Default(&'static str),
    /// `.psyncignore`, this line (from 1).
    File(usize),
}

/// One rule in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The pattern as written.
    pub pattern: String,
    /// Where it came from.
    pub source: RuleSource,
}

/// The rules in force on this device.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    matcher: Gitignore,
    rules: Vec<Rule>,
    problems: Vec<String>,
}

impl Default for IgnoreRules {
    fn default() -> Self {
        Self::parse(None)
    }
}

impl IgnoreRules {
    /// The defaults, then the lines of `.psyncignore` (`None`: no file).
    /// A line that is not a valid pattern is left out and reported in
    /// [`IgnoreRules::problems`]; the others still count.
    pub fn parse(file: Option<&str>) -> IgnoreRules {
        let mut builder = GitignoreBuilder::new("");
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (pattern, why) in DEFAULT_RULES {
            if builder.add_line(None, pattern).is_ok() {
                rules.push(Rule { pattern: (*pattern).to_string(), source: RuleSource::Default(why) });
            }
        }
        for (index, line) in file.unwrap_or_default().lines().enumerate() {
            if index >= MAX_IGNORE_LINES {
                problems.push(format!("{IGNORE_FILE}: only the first {MAX_IGNORE_LINES} lines are read"));
                break;
            }
            let trimmed = line.trim_end_matches('\r');
            if trimmed.trim().is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match builder.add_line(None, trimmed) {
                Ok(_) => rules.push(Rule { pattern: trimmed.to_string(), source: RuleSource::File(index + 1) }),
                Err(e) => problems.push(format!("{IGNORE_FILE} line {}: {e}", index + 1)),
            }
        }
        let matcher = builder.build().unwrap_or_else(|e| {
            problems.push(format!("{IGNORE_FILE}: {e}; only the defaults apply"));
            Gitignore::empty()
        });
        IgnoreRules { matcher, rules, problems }
    }

    /// The rules when `.psyncignore` could not be read, with why.
    pub fn unreadable(why: String) -> IgnoreRules {
        let mut rules = Self::parse(None);
        rules.problems.push(why);
        rules
    }

    /// Whether `path` (a folder if `is_dir`) stays on this device: it or
    /// a folder above it matches a rule and no later `!` rule takes it back.
    pub fn is_ignored(&self, path: &SyncPath, is_dir: bool) -> bool {
        // A `SyncPath` is relative, as the matcher requires.
        matches!(self.matcher.matched_path_or_any_parents(Path::new(path.as_str()), is_dir), Match::Ignore(_))
    }

    /// The rules in force, defaults first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Lines that were left out, with why.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// The rules the store holds now, and the digest of the `.psyncignore`
/// record they were read from (`None`: no such file). A file that cannot
/// be read as rules leaves the defaults, with why.
pub fn rules_in<S: SyncStorage + ?Sized>(storage: &S) -> Result<(IgnoreRules, Option<ContentHash>), StorageError> {
    let Ok(path) = SyncPath::new(IGNORE_FILE) else { return Ok((IgnoreRules::default(), None)) };
    let Some(record) = storage.record(&path)?.filter(|r| !r.deleted && r.kind == RecordKind::File) else {
        return Ok((IgnoreRules::default(), None));
    };
    let digest = Some(record.digest());
    let unreadable =
        |why: &str| Ok((IgnoreRules::unreadable(format!("{IGNORE_FILE}: {why}; only the defaults apply")), digest));
    if record.size > MAX_IGNORE_FILE_BYTES {
        return unreadable(&format!("over {MAX_IGNORE_FILE_BYTES} bytes"));
    }
    let Blocks::Listed(list) = &record.blocks else { return unreadable("not a small file") };
    let Some(bytes) = listed_content(storage, record.size, list)? else {
        return unreadable("its content is not here yet");
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok((IgnoreRules::parse(Some(&text)), digest)),
        Err(_) => unreadable("not UTF-8 text"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(rules: &IgnoreRules, path: &str) -> bool {
        rules.is_ignored(&SyncPath::new(path).unwrap(), false)
    }

    #[test]
    fn the_defaults_keep_per_device_state_and_editor_files_local() {
        let rules = IgnoreRules::default();
        for path in [
            ".obsidian/workspace.json",
            ".obsidian/workspace-mobile.json",
            "notes/.note.md.swp",
            "notes/note.md~",
            "notes/4913",
            "notes/.#note.md",
            ".DS_Store",
            "sub/.DS_Store",
        ] {
            assert!(ignored(&rules, path), "{path}");
        }
        for path in [".obsidian/app.json", "note.md", "notes/workspace.json", ".psyncignore"] {
            assert!(!ignored(&rules, path), "{path}");
        }
    }

    #[test]
    fn file_lines_add_rules_and_take_defaults_back() {
        let rules = IgnoreRules::parse(Some("# comment\nprivate/\n*.pdf\n!.obsidian/workspace.json\n"));
        assert!(ignored(&rules, "private/diary.md"), "below an ignored folder");
        assert!(rules.is_ignored(&SyncPath::new("private").unwrap(), true));
        assert!(ignored(&rules, "papers/a.pdf"));
        assert!(!ignored(&rules, ".obsidian/workspace.json"), "a later ! line wins");
        assert!(!ignored(&rules, "privately.md"));
        assert_eq!(rules.rules().last().map(|r| r.source.clone()), Some(RuleSource::File(4)));
        assert!(rules.problems().is_empty());
    }

    #[test]
    fn a_bad_line_is_reported_and_the_others_still_count() {
        let rules = IgnoreRules::parse(Some("a{b\n*.log\n"));
        assert!(ignored(&rules, "x.log"));
        assert_eq!(rules.problems().len(), 1, "{:?}", rules.problems());
    }
}
