//! Limits changed at run time (`psync settings`, the TUI): checked as the
//! config file's values are, applied to [`Settings`], and written back to
//! the config file with its comments and other settings kept.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{parse_rate, Settings, DEBOUNCE_MS_MAX};

/// What to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitChange {
    /// The debounce window (milliseconds).
    #[serde(default)]
    pub debounce_ms: Option<u64>,
    /// The upload limit as written (`"2MiB"`; `"0"`: unlimited).
    #[serde(default)]
    pub upload_limit: Option<String>,
    /// The download limit as written.
    #[serde(default)]
    pub download_limit: Option<String>,
}

impl LimitChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self == &LimitChange::default()
    }

    /// Explains what is wrong with the change (checked as the config
    /// file's values are), if anything.
    pub fn check(&self) -> Result<()> {
        if let Some(ms) = self.debounce_ms {
            if ms > DEBOUNCE_MS_MAX {
                bail!("debounce: {ms} ms is more than the maximum of {DEBOUNCE_MS_MAX} ms");
            }
        }
        for (what, rate) in [("upload limit", &self.upload_limit), ("download limit", &self.download_limit)] {
            if let Some(rate) = rate {
                parse_rate(rate).context(what)?;
            }
        }
        Ok(())
    }

    /// Applies the change to `settings`, or explains what is wrong (and
    /// changes nothing).
    pub fn apply(&self, settings: &mut Settings) -> Result<()> {
        self.check()?;
        if let Some(ms) = self.debounce_ms {
            settings.debounce_ms = ms;
        }
        if let Some(rate) = &self.upload_limit {
            settings.upload_bytes_per_sec = parse_rate(rate)?;
        }
        if let Some(rate) = &self.download_limit {
            settings.download_bytes_per_sec = parse_rate(rate)?;
        }
        Ok(())
    }

    /// The same change as `psync settings` arguments.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["settings".to_string()];
        if let Some(ms) = self.debounce_ms {
            args.extend(["--debounce-ms".into(), ms.to_string()]);
        }
        if let Some(rate) = &self.upload_limit {
            args.extend(["--upload-limit".into(), rate.clone()]);
        }
        if let Some(rate) = &self.download_limit {
            args.extend(["--download-limit".into(), rate.clone()]);
        }
        args
    }
}

/// The file a change is saved to: the one the settings came from, else
/// the data dir's own.
pub fn target_file(settings: &Settings, data_dir: &Path) -> PathBuf {
    settings.config_file.clone().unwrap_or_else(|| data_dir.join(crate::data_dir::CONFIG_FILE))
}

/// Writes the changed values into `file` (made if missing), keeping
/// everything else in it; written to a temporary file and renamed, so a
/// crash leaves the old file or the new one.
pub fn save(file: &Path, change: &LimitChange) -> Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let mut doc: toml_edit::DocumentMut =
        text.parse().with_context(|| format!("config file {} is not valid TOML", file.display()))?;
    if let Some(ms) = change.debounce_ms {
        doc["debounce_ms"] = toml_edit::value(i64::try_from(ms).context("debounce too large")?);
    }
    if let Some(rate) = &change.upload_limit {
        doc["upload_limit"] = toml_edit::value(rate.trim());
    }
    if let Some(rate) = &change.download_limit {
        doc["download_limit"] = toml_edit::value(rate.trim());
    }
    crate::data_dir::replace_file(file, doc.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, MountOptions};

    #[test]
    fn a_change_is_checked_applied_and_saved_with_the_rest_of_the_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "# my settings\ndebounce_ms = 100 # fast\n\n[history]\nkeep_days = 7\n").unwrap();
        let mut settings = load(Some(&file), &MountOptions::default()).unwrap();
        let change = LimitChange { upload_limit: Some("1MiB".into()), debounce_ms: Some(250), download_limit: None };
        change.apply(&mut settings).unwrap();
        assert_eq!((settings.debounce_ms, settings.upload_bytes_per_sec), (250, Some(1 << 20)));
        save(&file, &change).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("# my settings") && text.contains("keep_days = 7"), "{text}");
        let reread = load(Some(&file), &MountOptions::default()).unwrap();
        assert_eq!(
            (reread.debounce_ms, reread.upload_bytes_per_sec, reread.history_keep_days),
            (250, Some(1 << 20), 7)
        );

        for bad in [
            LimitChange { upload_limit: Some("fast".into()), ..Default::default() },
            LimitChange { debounce_ms: Some(DEBOUNCE_MS_MAX + 1), ..Default::default() },
            LimitChange { download_limit: Some("1KiB".into()), ..Default::default() },
        ] {
            let before = settings.clone();
            assert!(bad.apply(&mut settings).is_err(), "{bad:?}");
            assert_eq!(settings, before, "a refused change changes nothing");
        }
        // A missing file is made; "0" is unlimited.
        let fresh = dir.path().join("fresh.toml");
        save(&fresh, &LimitChange { upload_limit: Some("0".into()), ..Default::default() }).unwrap();
        assert_eq!(load(Some(&fresh), &MountOptions::default()).unwrap().upload_bytes_per_sec, None);
    }
}
