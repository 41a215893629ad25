//! `goferctl run`: start, retry, show, list and cancel runs, and with `--wait` follow one to its end. A
//! start is safe to repeat: it carries a request id, so goferctl's own retries while the cluster is
//! unreachable start one run at most.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;
use ring::rand::{SecureRandom as _, SystemRandom};
use tonic::Code;

use crate::client::{self, Api};
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

#[derive(Subcommand)]
pub enum Command {
    /// Start a run of the pipeline's newest version; prints the run id
    Start {
        pipeline: String,
        /// Follow the run until it ends: exit 0 when it succeeded, 1 when it failed or was cancelled
        #[arg(long)]
        wait: bool,
        /// Makes the start safe to repeat: a pipeline starts one run per request id, and repeating it
        /// prints that run. Without it goferctl makes one up for its own retries of this call.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// A parameter every task gets as env (its own env wins), as NAME=VALUE; repeat it for more
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Start a new run with the version and parameters of an earlier one; prints the new run id
    Retry {
        pipeline: String,
        run: u64,
        /// Follow the new run until it ends: exit 0 when it succeeded, 1 when it failed or was cancelled
        #[arg(long)]
        wait: bool,
        /// Makes the retry safe to repeat, as for run start
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Show a run
    Get { pipeline: String, run: u64 },
    /// List a pipeline's runs, newest first
    List {
        pipeline: String,
        #[command(flatten)]
        limit: Limit,
    },
    /// Cancel a run: pending tasks are cancelled, running containers stopped (SIGTERM, then SIGKILL
    /// after the grace period)
    Cancel {
        pipeline: String,
        run: u64,
        /// How long running containers get between SIGTERM and SIGKILL, such as 30s
        #[arg(long, default_value = "10s")]
        grace: String,
    },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let namespace = ctx.namespace();
    let format = ctx.format;
    match command {
        Command::Start {
            pipeline,
            wait,
            request_id,
            params,
        } => {
            let mut parameters = std::collections::HashMap::new();
            for param in params {
                let Some((name, value)) = param.split_once('=') else {
                    return Err(Failure(format!(
                        "--param: {param:?} is not NAME=VALUE (InvalidArgument)"
                    )));
                };
                parameters.insert(name.to_string(), value.to_string());
            }
            let request = NewRun::Start(v1::StartRunRequest {
                namespace_id: namespace.clone(),
                pipeline_id: pipeline.clone(),
                request_id: request_id.map_or_else(new_request_id, Ok)?,
                parameters,
            });
            return start_and_print(&mut api, format, &namespace, &pipeline, wait, request).await;
        }
        Command::Retry {
            pipeline,
            run,
            wait,
            request_id,
        } => {
            let request = NewRun::Retry(v1::RetryRunRequest {
                namespace_id: namespace.clone(),
                pipeline_id: pipeline.clone(),
                run_id: run,
                request_id: request_id.map_or_else(new_request_id, Ok)?,
            });
            return start_and_print(&mut api, format, &namespace, &pipeline, wait, request).await;
        }
        Command::Get { pipeline, run } => {
            let request = v1::GetRunRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                run_id: run,
            };
            let run = api
                .get_run(request)
                .await
                .map_err(client::status)?
                .into_inner()
                .run
                .unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&run)),
                || runs_table(std::slice::from_ref(&run)),
            );
        }
        Command::List { pipeline, limit } => {
            let runs = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListRunsRequest {
                    namespace_id: namespace.clone(),
                    pipeline_id: pipeline.clone(),
                    page_size,
                    page_token,
                };
                let list = api.list_runs(request).await?.into_inner();
                Ok((list.runs, list.next_page_token))
            })
            .await?;
            output::emit(format, || print_json(&json::values(&runs)), || runs_table(&runs));
        }
        Command::Cancel { pipeline, run, grace } => {
            let grace_millis = gofer_domain::schedule::parse_duration("--grace", &grace)
                .map_err(|e| Failure(format!("{e} (InvalidArgument)")))?;
            let request = v1::CancelRunRequest {
                namespace_id: namespace,
                pipeline_id: pipeline.clone(),
                run_id: run,
                grace_millis,
            };
            let run = api
                .cancel_run(request)
                .await
                .map_err(client::status)?
                .into_inner()
                .run
                .unwrap_or_default();
            match format {
                Format::Json | Format::Yaml => print_json(&json::value(&run)),
                Format::Table => say!(
                    "run {} of {} is being cancelled ({})",
                    run.id,
                    pipeline,
                    gofer_proto::run_state_name(run.state)
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts a run (or a retry), prints it, and with `wait` follows it to its end: exit 0 if it succeeded.
async fn start_and_print(
    api: &mut Api,
    format: Format,
    namespace: &str,
    pipeline: &str,
    wait: bool,
    request: NewRun,
) -> Result<ExitCode, Failure> {
    let (run, created) = start_with_retries(api, request).await?;
    if !created {
        eprintln!("run {} was started earlier with this request id", run.id);
    }
    if !wait {
        let json = || {
            let mut value = json::value(&run);
            value["created"] = created.into();
            print_json(&value)
        };
        output::emit(format, json, || say!("{}", run.id));
        return Ok(ExitCode::SUCCESS);
    }
    if format == Format::Table {
        say!("{}", run.id);
        let _ = std::io::stdout().flush();
    }
    let last = wait_for_run(api, namespace, pipeline, run.id).await?;
    let state = gofer_proto::run_state_name(last.state);
    match format {
        Format::Json | Format::Yaml => print_json(&json::value(&last)),
        Format::Table => {
            let reason = if last.state_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", last.state_reason)
            };
            eprintln!("run {} of {} {}{}", last.id, pipeline, state, reason);
        }
    }
    Ok(if last.state() == v1::RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A request id no other call will use: 128 random bits from the operating system, in hex.
fn new_request_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Failure("the operating system gave no random bytes for a request id".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests;

/// A new run: of the newest version, or again of an earlier run.
enum NewRun {
    Start(v1::StartRunRequest),
    Retry(v1::RetryRunRequest),
}

/// Starts a run, retrying for up to about 6 s while the cluster is unreachable or between leaders: the
/// request id makes a repeat return the run the first call may have started. Returns the run and whether
/// this call made it.
async fn start_with_retries(api: &mut Api, request: NewRun) -> Result<(v1::Run, bool), Failure> {
    let mut delay = std::time::Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = match &request {
            NewRun::Start(start) => api
                .start_run(start.clone())
                .await
                .map(|r| r.into_inner())
                .map(|r| (r.run, r.created)),
            NewRun::Retry(retry) => api
                .retry_run(retry.clone())
                .await
                .map(|r| r.into_inner())
                .map(|r| (r.run, r.created)),
        };
        match answer {
            Ok((run, created)) => return Ok((run.unwrap_or_default(), created)),
            Err(e) if e.code() == Code::Unavailable && tries < 6 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(client::status(e)),
        }
    }
}

/// Follows a run until it ends, printing each state change on stderr; returns the final run.
async fn wait_for_run(api: &mut Api, namespace: &str, pipeline: &str, run: u64) -> Result<v1::Run, Failure> {
    let request = v1::WatchRunRequest {
        namespace_id: namespace.to_string(),
        pipeline_id: pipeline.to_string(),
        run_id: run,
    };
    let mut stream = api.watch_run(request).await.map_err(client::status)?.into_inner();
    let mut last: Option<v1::Run> = None;
    while let Some(update) = stream.message().await.map_err(client::status)? {
        let Some(current) = update.run else { continue };
        if last.as_ref().map(|l| l.state) != Some(current.state) {
            eprintln!("run {run} {}", gofer_proto::run_state_name(current.state));
        }
        last = Some(current);
    }
    let last = last.ok_or_else(|| Failure("the server ended the watch without a run".into()))?;
    if !last.state().is_terminal() {
        return Err(Failure(format!(
            "the watch ended while run {run} was {}",
            gofer_proto::run_state_name(last.state)
        )));
    }
    Ok(last)
}

/// How a run's trigger reads in a table: `cron/nightly @ 2026-11-26 03:00:00`, or `-` for a manual run.
fn trigger_text(t: Option<&v1::RunTrigger>) -> String {
    let Some(t) = t else { return "-".to_string() };
    let what = if t.scheduled_unix_millis > 0 {
        format!(" @ {} UTC", output::precise_time(t.scheduled_unix_millis))
    } else if !t.delivery_id.is_empty() {
        format!(" delivery {}", t.delivery_id)
    } else {
        String::new()
    };
    format!("{}/{}{}", t.extension, t.subscription, what)
}

fn runs_table(runs: &[v1::Run]) {
    print_table(
        &[
            "RUN",
            "VERSION",
            "STATE",
            "CREATED (UTC)",
            "DURATION",
            "TRIGGER",
            "REASON",
        ],
        runs.iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.version.to_string(),
                    gofer_proto::run_state_name(r.state).to_string(),
                    output::time(r.created_unix_millis),
                    output::duration(r.started_unix_millis, r.ended_unix_millis),
                    trigger_text(r.trigger.as_ref()),
                    r.state_reason.clone(),
                ]
            })
            .collect(),
    );
}
