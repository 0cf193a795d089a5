//! opampctl: the operator CLI for opampd.
//!
//! Layout:
//! - `cli`: the clap definition, the one source of `--help`, man pages and completions.
//! - `context`: global options + config-file contexts → [`context::Settings`].
//! - `client`: REST over reqwest; failures become exit statuses (3 = unreachable).
//! - `output`: tables, JSON/YAML, colour, a quiet exit on a closed pipe.
//! - `files`: files opampctl writes (owner-only, never through a symlink,
//!   temporaries in private directories).
//! - `localdb`: SQLite files on this host (online backup, integrity and schema checks).
//! - `procfs`: /proc and process limits (CPU, RSS, open files, ports, listeners).
//! - `prompt`: confirmations and questions on a terminal (--yes and --password-stdin otherwise).
//! - `docs`: man page and completion generation.
//! - `cmd/`: one file per subcommand.
//!
//! Invariant: opampctl never writes to a database opampd holds open; it only
//! reads one through SQLite's online backup API or read-only connections.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod context;
pub mod docs;
pub mod error;
pub mod files;
pub mod localdb;
pub mod output;
pub mod package_archive;
pub mod procfs;
pub mod prompt;

use clap::Parser;
use error::{CtlError, Exit};
use std::process::ExitCode;

/// Runs opampctl with the process arguments; returns the exit status.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors exit 2.
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            if let Err(io) = e.print() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    output::broken_pipe();
                }
            }
            return ExitCode::from(code as u8);
        }
    };
    let result = run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("opampctl: error: {}", e.message);
            }
            ExitCode::from(e.exit as u8)
        }
    }
}

fn run(cli: cli::Cli) -> error::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(cmd::dispatch(cli))
}
