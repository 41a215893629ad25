//! `goferctl task`: a run's task executions, and a task's stdout and stderr, followed live with
//! `--follow`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;

use crate::client::{self, Api};
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

#[derive(Subcommand)]
pub enum Command {
    /// List a run's task executions
    List {
        pipeline: String,
        run: u64,
        #[command(flatten)]
        limit: Limit,
    },
    /// Print a task's stdout and stderr
    Logs {
        pipeline: String,
        run: u64,
        task: String,
        /// Keep printing until the task ends
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let namespace = ctx.namespace();
    match command {
        Command::List { pipeline, run, limit } => {
            let tasks = list(&mut api, namespace, pipeline, run, limit).await?;
            output::emit(ctx.format, || print_json(&json::values(&tasks)), || tasks_table(&tasks));
        }
        Command::Logs {
            pipeline,
            run,
            task,
            follow,
        } => {
            let request = v1::GetTaskLogsRequest {
                namespace_id: namespace.clone(),
                pipeline_id: pipeline.clone(),
                run_id: run,
                task_id: task.clone(),
                follow,
            };
            let mut stream = api.get_task_logs(request).await.map_err(client::status)?.into_inner();
            let mut stdout = std::io::stdout().lock();
            let mut printed = false;
            while let Some(chunk) = stream.message().await.map_err(client::status)? {
                printed |= !chunk.data.is_empty();
                if ctx.format == Format::Json {
                    print_json(&json::value(&chunk));
                } else if let Err(err) = stdout.write_all(&chunk.data).and_then(|()| stdout.flush()) {
                    output::stdout_failed(err);
                }
            }
            if !printed {
                // An empty log of a task that never ran deserves a word on stderr, not silence.
                let tasks = list(&mut api, namespace, pipeline, run, Limit::ALL).await?;
                if let Some(t) = tasks.iter().find(|t| t.task_id == task && t.attempt == 0) {
                    let reason = if t.state_reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", t.state_reason)
                    };
                    eprintln!(
                        "task {task} never ran ({}{reason})",
                        gofer_proto::task_state_name(t.state)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A run's task executions, in the pipeline's task order, `limit` of them at most.
async fn list(
    api: &mut Api,
    namespace: String,
    pipeline: String,
    run: u64,
    limit: Limit,
) -> Result<Vec<v1::TaskExecution>, Failure> {
    pages::collect(limit, async |page_size, page_token| {
        let request = v1::ListTaskExecutionsRequest {
            namespace_id: namespace.clone(),
            pipeline_id: pipeline.clone(),
            run_id: run,
            page_size,
            page_token,
        };
        let list = api.list_task_executions(request).await?.into_inner();
        Ok((list.task_executions, list.next_page_token))
    })
    .await
}

fn tasks_table(tasks: &[v1::TaskExecution]) {
    print_table(
        &[
            "TASK",
            "STATE",
            "EXIT",
            "ATTEMPT",
            "STARTED (UTC)",
            "DURATION",
            "REASON",
        ],
        tasks
            .iter()
            .map(|t| {
                vec![
                    t.task_id.clone(),
                    gofer_proto::task_state_name(t.state).to_string(),
                    t.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    t.attempt.to_string(),
                    output::time(t.started_unix_millis),
                    output::duration(t.started_unix_millis, t.ended_unix_millis),
                    t.state_reason.clone(),
                ]
            })
            .collect(),
    );
}
