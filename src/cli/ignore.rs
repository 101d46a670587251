//! `psync ignore --list`: the rules in force, from the daemon while
//! mounted, else from the store.

use std::sync::Arc;

use anyhow::Result;

use super::args::Global;
use super::{data_dir, open_for_reading};
use crate::control::schema::IgnoreList;

/// Prints the rules (and any lines left out).
pub fn list(global: &Global, json: bool) -> Result<()> {
    let list = match crate::control::client::ignore_list(&data_dir(global)?)? {
        Some(list) => list,
        None => crate::control::report::ignore_list(&Arc::new(open_for_reading(global)?))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    print_human(&list);
    Ok(())
}

fn print_human(list: &IgnoreList) {
    let width = list.rules.iter().map(|r| r.pattern.len()).max().unwrap_or(0).max(7);
    println!("{:<width$}  from", "pattern");
    for rule in &list.rules {
        let why = rule.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
        println!("{:<width$}  {}{why}", rule.pattern, rule.from);
    }
    for problem in &list.problems {
        println!("warning: {problem}");
    }
    println!("Ignored paths stay on this device. Edit .psyncignore at the vault's root (gitignore syntax; a later rule wins, !pattern takes one back).");
}
