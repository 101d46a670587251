//! `psync tui`: set up and run PSync from one terminal screen. A thin
//! shell: the state and its keys are in [`app`] (pure), the drawing in
//! [`view`] (pure), and everything that acts runs the `psync` commands a
//! user would type, or asks the daemons' control sockets ([`jobs`]). The
//! daemons belong to no terminal: quitting leaves them running.

pub mod app;
pub mod folders;
pub mod forms;
pub mod jobs;
pub mod view;
pub mod wizard;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};

use self::app::{App, Effect};
use self::folders::Folder;
use self::jobs::{Event, Jobs};
use super::args::Global;

/// How long the screen waits for a key before looking at the jobs again.
const TICK: Duration = Duration::from_millis(100);

/// Runs the TUI until `q`.
pub fn run(global: &Global, server: Option<String>) -> Result<ExitCode> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("psync tui needs a terminal; the same actions are commands: see `psync --help`");
    }
    let first_data_dir = super::data_dir(global)?;
    let list_file = folders::list_file()?;
    let mut listed = folders::load(&list_file)?;
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let named = |dir: &std::path::Path| listed.iter().any(|f| f.data_dir == dir);
    // A device set up with the commands (or named with --data-dir) is shown even if not listed.
    let explicit = global.data_dir.is_some() && !named(&first_data_dir);
    if (listed.is_empty() || explicit) && first_data_dir.join(crate::data_dir::IDENTITY_FILE).exists() {
        // A device set up with the commands: its folder is where its daemon mounted it.
        let status = crate::control::client::status(&first_data_dir).ok();
        let mountpoint =
            status.and_then(|s| s.device.mountpoint).unwrap_or_else(|| wizard::expand_home(app::DEFAULT_FOLDER, &home));
        let name = mountpoint.file_name().map_or("PSync".into(), |n| n.to_string_lossy().into_owned());
        listed.insert(0, Folder { name, data_dir: first_data_dir.clone(), mountpoint });
    }
    let exe = std::env::current_exe().context("cannot find the psync binary")?;
    let config = global.config.clone().map(|file| (first_data_dir.clone(), file));
    let (events, inbox) = std::sync::mpsc::channel();
    let jobs = Jobs::new(events, exe, config);
    jobs.poll(&listed);
    let mut app = App::new(listed, first_data_dir, server.unwrap_or_default(), home);
    let theme = view::Theme::from_env();

    let mut terminal = ratatui::init();
    let result = run_loop(&mut terminal, &mut app, &jobs, &inbox, &list_file, theme);
    ratatui::restore();
    result?;
    println!("The daemons keep running; `psync status` shows them, `psync tui` comes back.");
    Ok(ExitCode::SUCCESS)
}

fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    jobs: &Jobs,
    inbox: &std::sync::mpsc::Receiver<Event>,
    list_file: &std::path::Path,
    theme: view::Theme,
) -> Result<()> {
    while !app.quit {
        terminal.draw(|frame| view::draw(frame, app, theme))?;
        let mut effects = Vec::new();
        if event::poll(TICK)? {
            match event::read()? {
                TermEvent::Key(key) if key.kind != KeyEventKind::Release => effects.extend(app.key(key)),
                // Drawn again at the top of the loop, at the new size.
                _ => {}
            }
        }
        while let Ok(event) = inbox.try_recv() {
            match event {
                Event::Status { generation, index, status } if generation == jobs.generation() => {
                    if let Some(folder) = app.folders.get_mut(index) {
                        match status {
                            Ok(status) => folder.update(*status, Instant::now()),
                            Err(e) => folder.error = Some(e),
                        }
                    }
                }
                Event::Status { .. } => {}
                Event::Done(job, result) => effects.extend(app.done(job, result)),
                Event::Invite(step) => app.invite_step(step),
            }
        }
        for effect in effects {
            match effect {
                Effect::SaveFolders(list) => {
                    if let Err(e) = folders::save(list_file, &list) {
                        app.note = Some((format!("{e:#}"), true));
                    }
                    jobs.poll(&list);
                }
                other => jobs.run(other),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
