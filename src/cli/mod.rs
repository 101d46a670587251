//! The `psync` commands, thin over the library: each parses nothing (clap
//! did), calls the daemon, the store or the group code, and prints.

pub mod adopt;
pub mod args;
pub mod exit;
pub mod group;
pub mod history;
pub mod ignore;
pub mod settings;
pub mod status;
pub mod store;
pub mod tui;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use psync_store::Store;

pub use args::{Cli, Command, Global, StoreCommand};

use crate::{config, daemon};

/// The log filter when `RUST_LOG` is not set: the flag, the config file's
/// (a broken file is reported by the commands that read it), or a default.
pub fn log_filter(cli: &Cli) -> String {
    if let Some(level) = &cli.global.log_level {
        return level.clone();
    }
    if matches!(cli.command, Command::Tui { .. }) {
        // Anything written to the terminal would tear the screen; the
        // commands it runs keep their own stderr.
        return "off".into();
    }
    let from_file = data_dir(&cli.global)
        .ok()
        .and_then(|dir| config::saved(cli.global.config.as_deref(), &dir).ok())
        .and_then(|settings| settings.log_level);
    from_file.unwrap_or_else(|| if matches!(cli.command, Command::Mount { .. }) { "info" } else { "warn" }.into())
}

/// The data dir: the flag, `PSYNC_DATA_DIR`, or the XDG default.
pub fn data_dir(global: &Global) -> Result<PathBuf> {
    if let Some(dir) = &global.data_dir {
        return Ok(dir.clone());
    }
    let base = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").context("neither --data-dir, PSYNC_DATA_DIR nor HOME is set")?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("psync"))
}

/// Opens the store for a command that changes it.
pub(crate) fn open_existing(global: &Global) -> Result<Store> {
    let dir = data_dir(global)?;
    Ok(Store::open(&dir)?)
}

/// For commands that only look: a read-only snapshot when a daemon has the
/// store open.
pub(crate) fn open_for_reading(global: &Global) -> Result<Store> {
    let dir = data_dir(global)?;
    match Store::open(&dir) {
        Err(psync_store::StoreError::Locked(_)) => {
            eprintln!("(the store is in use by a running daemon: showing a read-only snapshot)");
            Ok(Store::open_read_only(&dir)?)
        }
        other => Ok(other?),
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Fsck { json } => store::fsck(&cli.global, json),
        Command::Gc { keep_versions, keep_days, json } => store::gc(&cli.global, keep_versions, keep_days, json),
        Command::Stats { json } => store::stats(&cli.global, json),
        Command::Signal {
            listen,
            tls_cert,
            tls_key,
            stun,
            turn,
            turn_secret_file,
            turn_ttl,
            relay,
            relay_quota_mib,
        } => {
            let ice = group::ice_policy(stun, turn, turn_secret_file.as_deref(), turn_ttl)?;
            let relay = relay.map(|dir| {
                let limits = psync_signal::relay::policy::RelayLimits {
                    group_bytes: relay_quota_mib << 20,
                    ..Default::default()
                };
                (psync_signal::relay::service::RelayLocation::parse(&dir), limits)
            });
            group::signal(&data_dir(&cli.global)?, &listen, tls_cert.as_deref().zip(tls_key.as_deref()), ice, relay)
        }
        Command::Init { name, server, group_name } => group::init(&data_dir(&cli.global)?, &name, &server, &group_name),
        Command::Devices { json } => group::devices(&data_dir(&cli.global)?, json),
        Command::Invite { yes, read_only, json } => group::invite(&data_dir(&cli.global)?, yes, read_only, json),
        Command::Remove { device } => group::remove(&data_dir(&cli.global)?, &device),
        Command::Join { code, name, server } => group::join(&data_dir(&cli.global)?, &code, &name, &server),
        Command::Mount { mountpoint, foreground, adopt, at: Some(at), options: _ } if !adopt => {
            daemon::view::mount(&data_dir(&cli.global)?, &mountpoint, &at, foreground)
        }
        Command::Mount { mountpoint, foreground, adopt, at: _, options } => {
            let args = daemon::DaemonArgs {
                config: cli.global.config.clone(),
                log_level: cli.global.log_level.clone(),
                options,
            };
            let data_dir = data_dir(&cli.global)?;
            if !adopt {
                return daemon::mount(&data_dir, &mountpoint, foreground, &args);
            }
            let adopted = adopt::prepare(&data_dir, &mountpoint)?;
            eprintln!(
                "adopted {} files from {}; the original is kept at {} (delete it once you are happy)",
                adopted.files,
                adopted.folder.display(),
                adopted.kept.display()
            );
            daemon::mount(&data_dir, &adopted.folder, foreground, &args).inspect_err(|_| {
                adopt::undo(&adopted);
                eprintln!("the mount failed: {} is back where it was", adopted.folder.display());
            })
        }
        Command::Unmount { mountpoint, lazy } => daemon::unmount(&mountpoint, lazy),
        Command::Status { json, watch } => status::command(&data_dir(&cli.global)?, json, watch),
        Command::Revert { paths, all } => crate::control::client::revert_command(&data_dir(&cli.global)?, paths, all),
        Command::Settings { debounce_ms, upload_limit, download_limit, json } => {
            let change = crate::config_edit::LimitChange { debounce_ms, upload_limit, download_limit };
            settings::command(&cli.global, change, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Role { device, read_only, full: _ } => group::set_role(&data_dir(&cli.global)?, &device, read_only),
        Command::Tui { server } => tui::run(&cli.global, server),
        Command::Ignore { list: _, json } => ignore::list(&cli.global, json).map(|()| ExitCode::SUCCESS),
        Command::Log { path, deleted, json } => {
            history::log(&cli.global, path.as_deref(), deleted, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Restore { path, version } => history::restore(&cli.global, &path, version).map(|()| ExitCode::SUCCESS),
        Command::Store(cmd) => store::run(&cli.global, cmd).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "psync", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("wrote man pages into {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
