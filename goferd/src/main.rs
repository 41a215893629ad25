//! `goferd`, Gofer's one server binary: it reads flags, binds sockets, wires the roles together and owns
//! shutdown. The roles themselves (api, state, scheduler, executor) live in their own crates and never
//! read flags or env.

mod certs;
mod cluster;
mod dev;
mod flags;
mod node;
mod random;
mod relay;
mod server;

use clap::{Parser, Subcommand};

/// Gofer's server.
#[derive(Parser)]
#[command(
    name = "goferd",
    version,
    about = "Gofer's server: distributed cron for container pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on a single-node Raft, with generated dev certificates and an admin
    /// token, and write a client config that goferctl finds on its own.
    Dev(dev::DevArgs),
    /// Run one node of a cluster (state, api, scheduler, extension host and an executor)
    Server(cluster::ServerArgs),
    /// Run an executor on its own: `goferd server` with the executor role alone (the same flags; it needs
    /// --schedulers, not the state nodes)
    Executor(cluster::ServerArgs),
    /// Make a cluster CA and the node and client certificates it signs
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The one clock of the process: every role stamps its commands with it, and certificates start at it.
    let clock = gofer_clock::Clock::system();
    if let Command::Certs(command) = cli.command {
        return match certs::run(command, clock.now_millis() / 1000) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("goferd: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // rustls needs a process-wide crypto provider before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GOFER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("goferd: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args, clock).await,
            Command::Server(args) => cluster::run(args, clock).await,
            Command::Executor(args) => cluster::run(args.executor_only(), clock).await,
            Command::Certs(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("goferd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
