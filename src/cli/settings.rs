//! `psync settings`: the debounce window and rate limits, changed in the
//! running daemon (no remount) and saved to the config file.

use anyhow::Result;

use super::args::Global;
use super::data_dir;
use crate::config_edit::{save, target_file, LimitChange};
use crate::control::schema::SettingsAnswer;

/// Applies `change` (through the daemon while mounted, else to the config
/// file only) and prints the settings.
pub fn command(global: &Global, change: LimitChange, json: bool) -> Result<()> {
    let data_dir = data_dir(global)?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let answer = match crate::control::client::settings(&data_dir, &change)? {
        Some(answer) => answer,
        None => {
            let mut settings = crate::config::saved(global.config.as_deref(), &data_dir)?;
            change.apply(&mut settings)?;
            let saved_to = if change.is_empty() {
                None
            } else {
                crate::data_dir::prepare(&data_dir)?;
                let file = target_file(&settings, &data_dir);
                save(&file, &change)?;
                Some(file)
            };
            SettingsAnswer { settings, saved_to, applied_live: false }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!("{}", describe(&answer.settings));
    match (&answer.saved_to, answer.applied_live) {
        (Some(file), true) => println!("saved to {}; in force now", file.display()),
        (Some(file), false) => println!("saved to {}; in force from the next mount (no daemon runs)", file.display()),
        (None, _) => {}
    }
    Ok(())
}

/// One line: `debounce 100 ms, upload 2.0 MiB/s, download unlimited`.
pub fn describe(settings: &crate::config::Settings) -> String {
    let rate = |r: Option<u64>| r.map_or("unlimited".to_string(), |b| format!("{}/s", super::status::bytes(b)));
    format!(
        "debounce {} ms, upload {}, download {}",
        settings.debounce_ms,
        rate(settings.upload_bytes_per_sec),
        rate(settings.download_bytes_per_sec)
    )
}
