//! The commands, one module per noun, each owning its subcommands and their handler: `namespace`,
//! `pipeline`, `run`, `task`, `extension`, `subscription`, `cluster`, `event`, `token` (with `whoami`), `secret`, `object`, and `cron` (`cron explain`, which needs no server). This module only names
//! the nouns and hands each command to its module; what the nouns share lives outside them (`client`,
//! `context`, `output`, `json`) or in `setting`, and no noun module uses another.

use std::process::ExitCode;

use clap::Subcommand;

use crate::context::Context;
use crate::failure::Failure;

mod cluster;
mod cron;
mod event;
mod extension;
mod namespace;
mod object;
mod pipeline;
mod run;
mod secret;
mod setting;
mod subscription;
mod task;
mod token;

#[derive(Subcommand)]
pub enum Command {
    /// Manage namespaces
    #[command(subcommand)]
    Namespace(namespace::Command),
    /// Register and inspect pipelines
    #[command(subcommand)]
    Pipeline(pipeline::Command),
    /// Start, inspect and cancel runs
    #[command(subcommand)]
    Run(run::Command),
    /// Inspect a run's task executions and their logs
    #[command(subcommand)]
    Task(task::Command),
    /// Install and inspect extensions (triggers); interval, cron and webhook are built in
    #[command(subcommand)]
    Extension(extension::Command),
    /// Link pipelines to extensions, such as a cron schedule or a webhook
    #[command(subcommand)]
    Subscription(subscription::Command),
    /// Show and change the state nodes of the cluster
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Read the event stream: run and task state changes and trigger decisions
    #[command(subcommand)]
    Event(event::Command),
    /// Make and manage API tokens with a role (admin, operator, viewer) and namespaces
    #[command(subcommand)]
    Token(token::Command),
    /// Show which token this goferctl presents, its role and namespaces
    Whoami,
    /// Store, list and delete secrets (pipeline and global), and rotate the key that seals them
    #[command(subcommand)]
    Secret(secret::Command),
    /// Store, read, list and delete objects: a pipeline's cache, or with --run a run's
    #[command(subcommand)]
    Object(object::Command),
    /// Explain a cron expression: its next instants in its zone and in UTC (needs no server)
    #[command(subcommand)]
    Cron(cron::Command),
    /// Print a shell completion script: `goferctl completion bash > /etc/bash_completion.d/goferctl`
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// Runs a command that needs no server or setting (`cron explain`), or `None` if it needs them.
pub fn run_offline(command: Command, format: crate::output::Format) -> Result<Result<ExitCode, Failure>, Command> {
    match command {
        Command::Cron(command) => Ok(cron::run(command, format)),
        other => Err(other),
    }
}

/// Runs one command; the exit code is 0 unless the command says otherwise (`run start --wait` on a run
/// that failed).
pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    match command {
        Command::Namespace(command) => namespace::run(command, ctx).await,
        Command::Pipeline(command) => pipeline::run(command, ctx).await,
        Command::Run(command) => run::run(command, ctx).await,
        Command::Task(command) => task::run(command, ctx).await,
        Command::Extension(command) => extension::run(command, ctx).await,
        Command::Subscription(command) => subscription::run(command, ctx).await,
        Command::Cluster(command) => cluster::run(command, ctx).await,
        Command::Event(command) => event::run(command, ctx).await,
        Command::Token(command) => token::run(command, ctx).await,
        Command::Whoami => token::whoami(ctx).await,
        Command::Secret(command) => secret::run(command, ctx).await,
        Command::Object(command) => object::run(command, ctx).await,
        Command::Cron(command) => cron::run(command, ctx.format),
        // Printed by `main` before any setting is resolved: it needs no server.
        Command::Completion { .. } => Ok(ExitCode::SUCCESS),
    }
}
