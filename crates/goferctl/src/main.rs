//! `goferctl`, Gofer's command line client.
//!
//! Its commands, flags, output and exit codes are a contract that users, docs and acceptance checks rely
//! on: one clear error line on stderr, exit 2 for usage errors and 1 for everything else, `-o json` on
//! every read verb with the proto message's fields, and aligned tables for people by default.
//!
//! This file only parses the command line, resolves the settings, hands the command to `cmd` and turns
//! the outcome into an exit code; each noun's commands live in `cmd/`.

#[macro_use]
mod output;
mod client;
mod cmd;
mod context;
mod failure;
mod json;
mod pages;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use context::Context;
use failure::Failure;

/// The command line client for Gofer, the distributed cron for container pipelines.
#[derive(Parser)]
#[command(name = "goferctl", version)]
struct Cli {
    #[command(flatten)]
    flags: client::Flags,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: output::Format,
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let cmd::Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "goferctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    output::structured_as(cli.output);
    let cli = match cmd::run_offline(cli.command, cli.output) {
        Ok(Ok(code)) => return code,
        Ok(Err(Failure(message))) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
        Err(command) => Cli { command, ..cli },
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let settings = cli.flags.resolve()?;
    let ctx = Context {
        flags: cli.flags,
        settings,
        format: cli.output,
    };
    cmd::run(cli.command, &ctx).await
}
