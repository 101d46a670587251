//! The `psync` binary: sets up logging, runs the command (`psync::cli`),
//! and turns its outcome into an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use psync::cli::{self, exit, Cli};

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli::log_filter(&cli)));
    tracing_subscriber::registry()
        .with(filter)
        // Plain text when it goes to a file (the daemon's log), colours on a terminal.
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr))
        .with(psync::live::RecentErrors)
        .init();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("psync: error: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}
