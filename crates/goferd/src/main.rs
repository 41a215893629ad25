//! `goferd`, Gofer's one server binary: it reads flags, binds sockets, wires the roles together and owns
//! shutdown. The roles themselves (api, state, scheduler, executor) live in their own crates and never
//! read flags or env.

mod certs;
mod cluster;
mod dev;
mod node;
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
    if let Command::Certs(command) = cli.command {
        return match certs::run(command) {
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
    // The one clock of the process: every role stamps its commands with it.
    let clock = gofer_clock::Clock::system();
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

/// Reads an event retention such as `2h` or `7d` (days are allowed here) into milliseconds, checked
/// against the bounds the cluster accepts.
pub(crate) fn parse_retention(text: &str) -> Result<u64, String> {
    use gofer_domain::events::{MAX_EVENT_RETENTION_MS, MIN_EVENT_RETENTION_MS};
    let field = "event_retention";
    let millis = match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => days.saturating_mul(86_400_000),
        _ => {
            let millis = gofer_domain::schedule::parse_duration(field, text).map_err(|e| e.to_string())?;
            u64::try_from(millis).map_err(|_| format!("{field}: must not be negative"))?
        }
    };
    if !(MIN_EVENT_RETENTION_MS..=MAX_EVENT_RETENTION_MS).contains(&millis) {
        return Err(format!("{field}: {text:?} is not between 1s and 365d"));
    }
    Ok(millis)
}

/// Reads a task log cap such as `10MiB` into bytes: at least 4 KiB, at most 1 GiB.
pub(crate) fn parse_log_cap(text: &str) -> Result<u64, String> {
    let field = "task_log_cap";
    let bytes = gofer_domain::limits::parse_size(field, text).map_err(|e| e.to_string())?;
    if !(4 << 10..=1 << 30).contains(&bytes) {
        return Err(format!("{field}: {text:?} is not between 4KiB and 1GiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{parse_log_cap, parse_retention};

    #[test]
    fn a_log_cap_reads_sizes_within_the_bounds() {
        assert_eq!(parse_log_cap("10MiB"), Ok(10 << 20));
        assert_eq!(parse_log_cap("4096"), Ok(4096));
        for bad in ["4095", "2GiB", "10 furlongs", "-1MiB"] {
            let error = parse_log_cap(bad).unwrap_err();
            assert!(error.starts_with("task_log_cap: "), "{bad}: {error}");
        }
    }

    #[test]
    fn a_retention_reads_durations_and_days_within_the_bounds() {
        assert_eq!(parse_retention("90s"), Ok(90_000));
        assert_eq!(parse_retention("1h30m"), Ok(5_400_000));
        assert_eq!(parse_retention("7d"), Ok(7 * 86_400_000));
        for bad in ["0s", "500ms", "366d", "-5s", "soon", ""] {
            let error = parse_retention(bad).unwrap_err();
            assert!(error.starts_with("event_retention: "), "{bad}: {error}");
        }
    }
}
