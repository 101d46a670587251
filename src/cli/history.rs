//! `psync log` and `psync restore` (and `psync store log|restore`): a
//! file's versions and deleted files, through the daemon while mounted (the
//! mount shows a restore and peers get it), else from the store itself (a
//! restore then syncs at the next mount).

use anyhow::{bail, Result};

use super::args::Global;
use super::{data_dir, open_existing, open_for_reading};
use crate::control::client;
use crate::control::history::{deleted_rows, restore_version, version_rows};
use crate::control::schema::VersionRow;

/// `psync log PATH [--json]`, or `psync log --deleted [DIR] [--json]`.
pub fn log(global: &Global, path: Option<&str>, deleted: bool, json: bool) -> Result<()> {
    let dir = data_dir(global)?;
    if deleted {
        let rows = match client::deleted(&dir, path)? {
            Some(rows) => rows,
            None => deleted_rows(&open_for_reading(global)?, path)?,
        };
        print_rows(&rows, json)?;
        if !json && !rows.is_empty() {
            println!("Bring one back with `psync restore PATH --version N` (any version of it: see `psync log`).");
        }
        return Ok(());
    }
    let Some(path) = path else { bail!("which file? `psync log PATH`, or `psync log --deleted` for deleted files") };
    match client::versions(&dir, path)? {
        Some(rows) => print_rows(&rows, json),
        None => log_offline(global, path, json),
    }
}

/// `psync store log PATH [--json]`: from the store.
pub fn log_offline(global: &Global, path: &str, json: bool) -> Result<()> {
    print_rows(&version_rows(&open_for_reading(global)?, path)?, json)
}

/// `psync restore PATH --version N`: one transaction; a deleted file comes back.
pub fn restore(global: &Global, path: &str, version: u64) -> Result<()> {
    match client::restore(&data_dir(global)?, path, version)? {
        Some(now) => {
            println!("restored {path:?} to version {version} (now version {now})");
            Ok(())
        }
        None => restore_offline(global, path, version),
    }
}

/// `psync store restore PATH --version N`: in the store.
pub fn restore_offline(global: &Global, path: &str, version: u64) -> Result<()> {
    let restored = restore_version(&open_existing(global)?, path, version)?;
    let back = if restored.undeleted.is_some() { ", brought back" } else { "" };
    println!("restored {path:?} to version {version} (now version {}{back})", restored.version);
    Ok(())
}

fn print_rows(rows: &[VersionRow], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!("{:>8}  {:>12}  {:<20}  path", "version", "size", "committed (UTC)");
    for v in rows {
        let mark = if v.current { " (current)" } else { "" };
        let path = super::status::terminal_safe(&v.path);
        println!("{:>8}  {:>12}  {:<20}  {path}{mark}", v.version, v.size, crate::clock::utc(v.committed_at));
    }
    Ok(())
}
