//! `goferctl`, Gofer's command line client.
//!
//! Its commands, flags, output and exit codes are a contract that users, docs and acceptance checks rely
//! on: one clear error line on stderr, exit 2 for usage errors and 1 for everything else, `-o json` on
//! every read verb with the proto message's fields, and aligned tables for people by default.

/// `println!` that ends goferctl quietly when stdout is closed (`goferctl run list | head -1`) instead of
/// panicking, and with one error line when stdout fails otherwise.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::output::stdout_failed(err);
        }
    }};
}

mod client;
mod events;
mod json;
mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gofer_proto::v1;
use output::{Format, print_json, print_table};

/// The command line client for Gofer, the distributed cron for container pipelines.
#[derive(Parser)]
#[command(name = "goferctl", version)]
struct Cli {
    /// The namespace to act in
    #[arg(long, short = 'n', global = true, env = "GOFER_NAMESPACE")]
    namespace: Option<String>,
    /// The server to talk to, such as https://127.0.0.1:7443 [default: from the config file]
    #[arg(long, global = true, env = "GOFER_HOST")]
    host: Option<String>,
    /// The API token [default: from the config file]
    #[arg(long, global = true, env = "GOFER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate [default: from the config file]
    #[arg(long, global = true, env = "GOFER_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The config file [default: $GOFER_CONFIG, else gofer/config.toml in the user's config directory]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage namespaces
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Register and inspect pipelines
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Start, inspect and cancel runs
    #[command(subcommand)]
    Run(RunCommand),
    /// Inspect a run's task executions and their logs
    #[command(subcommand)]
    Task(TaskCommand),
    /// Install and inspect extensions (triggers); interval, cron and webhook are built in
    #[command(subcommand)]
    Extension(ExtensionCommand),
    /// Link pipelines to extensions, such as a cron schedule or a webhook
    #[command(subcommand)]
    Subscription(SubscriptionCommand),
    /// Show and change the state nodes of the cluster
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Read the event stream: run and task state changes and trigger decisions
    #[command(subcommand)]
    Event(EventCommand),
}

#[derive(Subcommand)]
enum EventCommand {
    /// List the events kept, oldest first, one per line (-o json: one JSON object per line); with
    /// --follow keep printing new ones, resuming after the last one printed if the connection drops
    List {
        /// Keep the stream open and print each new event as it is committed
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start after this event id, the last one you saw: every later event is printed once. Fails if
        /// the events after it were pruned (OutOfRange)
        #[arg(long, value_name = "ID", default_value_t = 0)]
        from: u64,
        /// Only this pipeline's events (in the namespace of -n, default "default")
        #[arg(long)]
        pipeline: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Show the nodes, their roles, the leader, the term and the log indexes
    Status,
    /// Add a state node as a voter, by id and raft address (https://host:port)
    Add { node_id: u64, address: String },
    /// Remove a state node
    Remove { node_id: u64 },
}

/// A `key=value` setting.
#[derive(Clone)]
struct Setting(String, String);

fn parse_setting(text: &str) -> Result<Setting, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok(Setting(key.trim().to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

fn settings_map(settings: Vec<Setting>) -> std::collections::HashMap<String, String> {
    settings.into_iter().map(|Setting(k, v)| (k, v)).collect()
}

#[derive(Subcommand)]
enum ExtensionCommand {
    /// List extensions
    List,
    /// Show an extension and the settings it accepts
    Get { name: String },
    /// Install an extension that the host runs as a container from a local image
    Install {
        name: String,
        image: String,
        /// A setting passed to the extension's container, as key=value (repeatable)
        #[arg(long = "setting", short = 's', value_parser = parse_setting)]
        settings: Vec<Setting>,
    },
    /// Uninstall an extension that no subscription uses
    Uninstall { name: String },
}

#[derive(Subcommand)]
enum SubscriptionCommand {
    /// Subscribe a pipeline to an extension, such as: subscription create nightly cron every-night -s expression="0 3 * * *"
    Create {
        pipeline: String,
        extension: String,
        label: String,
        /// A setting as key=value (repeatable); `extension get NAME` lists what an extension accepts
        #[arg(long = "setting", short = 's', value_parser = parse_setting)]
        settings: Vec<Setting>,
    },
    /// List a pipeline's subscriptions
    List { pipeline: String },
    /// Show a subscription: settings, fire counts, recent skips, and for a webhook the URL to call
    Get { pipeline: String, label: String },
    /// Delete a subscription
    Delete { pipeline: String, label: String },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Create a namespace
    Create { name: String },
    /// List namespaces
    List,
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Register a new version of a pipeline from a JSON file, `-` for stdin, or a Cargo project directory
    /// whose `cargo run --quiet` prints the JSON
    Register { path: String },
    /// List pipelines
    List,
    /// Show a pipeline and its newest version
    Get { id: String },
}

#[derive(Subcommand)]
enum RunCommand {
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
    List { pipeline: String },
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

#[derive(Subcommand)]
enum TaskCommand {
    /// List a run's task executions
    List { pipeline: String, run: u64 },
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

/// A failure to report: one line, exit 1.
pub(crate) struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure(err.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let resolve = || {
        client::Settings::resolve(
            cli.config.clone(),
            cli.host.clone(),
            cli.token.clone(),
            cli.ca_cert.clone(),
            cli.namespace.clone(),
        )
    };
    let settings = resolve()?;
    let namespace = settings.namespace.clone();
    let format = cli.output;
    // Read the pipeline before connecting, so a bad file fails fast and without a server.
    let config = match &cli.command {
        Command::Pipeline(PipelineCommand::Register { path }) => Some(client::load_pipeline(path)?),
        _ => None,
    };
    let mut api = client::connect(&settings).await?;
    match cli.command {
        Command::Namespace(NamespaceCommand::Create { name }) => {
            let response = api
                .create_namespace(v1::CreateNamespaceRequest { id: name })
                .await
                .map_err(client::status)?;
            let ns = response.into_inner().namespace.unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&ns)),
                || say!("namespace {} created", ns.id),
            );
        }
        Command::Namespace(NamespaceCommand::List) => {
            let list = api
                .list_namespaces(v1::ListNamespacesRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            match format {
                Format::Json => print_json(&json::values(&list.namespaces)),
                Format::Table => print_table(
                    &["ID", "CREATED (UTC)"],
                    list.namespaces
                        .iter()
                        .map(|n| vec![n.id.clone(), output::time(n.created_unix_millis)])
                        .collect(),
                ),
            }
        }
        Command::Pipeline(PipelineCommand::Register { .. }) => {
            let config = config.expect("loaded above");
            let request = v1::RegisterPipelineRequest {
                namespace_id: namespace,
                config: Some(gofer_proto::config_to_proto(&config)),
            };
            let response = api
                .register_pipeline(request)
                .await
                .map_err(client::status)?
                .into_inner();
            match format {
                Format::Json => print_json(&json::value(&response)),
                Format::Table => say!(
                    "pipeline {} version {}",
                    response.pipeline.unwrap_or_default().id,
                    response.version
                ),
            }
        }
        Command::Pipeline(PipelineCommand::List) => {
            let list = api
                .list_pipelines(v1::ListPipelinesRequest {
                    namespace_id: namespace,
                })
                .await
                .map_err(client::status)?
                .into_inner();
            match format {
                Format::Json => print_json(&json::values(&list.pipelines)),
                Format::Table => print_table(
                    &["ID", "NAME", "VERSION", "UPDATED (UTC)"],
                    list.pipelines
                        .iter()
                        .map(|p| {
                            vec![
                                p.id.clone(),
                                p.name.clone(),
                                p.latest_version.to_string(),
                                output::time(p.updated_unix_millis),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Command::Pipeline(PipelineCommand::Get { id }) => {
            let response = api
                .get_pipeline(v1::GetPipelineRequest {
                    namespace_id: namespace,
                    id,
                })
                .await
                .map_err(client::status)?
                .into_inner();
            let pipeline = response.pipeline.unwrap_or_default();
            let config = response.config.unwrap_or_default();
            match format {
                Format::Json => {
                    let mut value = json::value(&pipeline);
                    value["config"] = json::value(&config);
                    print_json(&value)
                }
                Format::Table => output::describe_pipeline(&pipeline, &config),
            }
        }
        Command::Run(RunCommand::Start {
            pipeline,
            wait,
            request_id,
            params,
        }) => {
            let mut parameters = std::collections::HashMap::new();
            for param in params {
                let Some((name, value)) = param.split_once('=') else {
                    return Err(Failure(format!(
                        "--param: {param:?} is not NAME=VALUE (InvalidArgument)"
                    )));
                };
                parameters.insert(name.to_string(), value.to_string());
            }
            let request = client::NewRun::Start(v1::StartRunRequest {
                namespace_id: namespace.clone(),
                pipeline_id: pipeline.clone(),
                request_id: request_id.unwrap_or_else(client::new_request_id),
                parameters,
            });
            return start_run(&mut api, format, &namespace, &pipeline, wait, request).await;
        }
        Command::Run(RunCommand::Retry {
            pipeline,
            run,
            wait,
            request_id,
        }) => {
            let request = client::NewRun::Retry(v1::RetryRunRequest {
                namespace_id: namespace.clone(),
                pipeline_id: pipeline.clone(),
                run_id: run,
                request_id: request_id.unwrap_or_else(client::new_request_id),
            });
            return start_run(&mut api, format, &namespace, &pipeline, wait, request).await;
        }
        Command::Run(RunCommand::Get { pipeline, run }) => {
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
                || output::runs_table(std::slice::from_ref(&run)),
            );
        }
        Command::Run(RunCommand::List { pipeline }) => {
            let request = v1::ListRunsRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
            };
            let runs = api.list_runs(request).await.map_err(client::status)?.into_inner().runs;
            output::emit(
                format,
                || print_json(&json::values(&runs)),
                || output::runs_table(&runs),
            );
        }
        Command::Run(RunCommand::Cancel { pipeline, run, grace }) => {
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
                Format::Json => print_json(&json::value(&run)),
                Format::Table => say!(
                    "run {} of {} is being cancelled ({})",
                    run.id,
                    pipeline,
                    gofer_proto::run_state_name(run.state)
                ),
            }
        }
        Command::Task(TaskCommand::List { pipeline, run }) => {
            let request = v1::ListTaskExecutionsRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                run_id: run,
            };
            let tasks = api
                .list_task_executions(request)
                .await
                .map_err(client::status)?
                .into_inner()
                .task_executions;
            output::emit(
                format,
                || print_json(&json::values(&tasks)),
                || output::tasks_table(&tasks),
            );
        }
        Command::Extension(ExtensionCommand::List) => {
            let list = api
                .list_extensions(v1::ListExtensionsRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            match format {
                Format::Json => print_json(&json::values(&list.extensions)),
                Format::Table => output::extensions_table(&list.extensions),
            }
        }
        Command::Extension(ExtensionCommand::Get { name }) => {
            let response = api
                .get_extension(v1::GetExtensionRequest { name })
                .await
                .map_err(client::status)?;
            let extension = response.into_inner().extension.unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&extension)),
                || output::describe_extension(&extension),
            );
        }
        Command::Extension(ExtensionCommand::Install { name, image, settings }) => {
            let request = v1::InstallExtensionRequest {
                name,
                image,
                settings: settings_map(settings),
            };
            let response = api.install_extension(request).await.map_err(client::status)?;
            let extension = response.into_inner().extension.unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&extension)),
                || say!("extension {} installed from {}", extension.name, extension.image),
            );
        }
        Command::Extension(ExtensionCommand::Uninstall { name }) => {
            api.uninstall_extension(v1::UninstallExtensionRequest { name: name.clone() })
                .await
                .map_err(client::status)?;
            output::emit(
                format,
                || print_json(&serde_json::json!({ "name": name, "uninstalled": true })),
                || say!("extension {name} uninstalled"),
            );
        }
        Command::Subscription(SubscriptionCommand::Create {
            pipeline,
            extension,
            label,
            settings,
        }) => {
            let request = v1::CreateSubscriptionRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                extension,
                label,
                settings: settings_map(settings),
            };
            let response = api.create_subscription(request).await.map_err(client::status)?;
            let subscription = response.into_inner().subscription.unwrap_or_default();
            match format {
                Format::Json => print_json(&json::value(&subscription)),
                Format::Table => {
                    say!(
                        "subscription {} of {} to {} created",
                        subscription.label,
                        subscription.pipeline_id,
                        subscription.extension
                    );
                    if !subscription.webhook_url.is_empty() {
                        say!("webhook url: {}", subscription.webhook_url);
                    }
                }
            }
        }
        Command::Subscription(SubscriptionCommand::List { pipeline }) => {
            let request = v1::ListSubscriptionsRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
            };
            let list = api
                .list_subscriptions(request)
                .await
                .map_err(client::status)?
                .into_inner();
            match format {
                Format::Json => print_json(&json::values(&list.subscriptions)),
                Format::Table => output::subscriptions_table(&list.subscriptions),
            }
        }
        Command::Subscription(SubscriptionCommand::Get { pipeline, label }) => {
            let request = v1::GetSubscriptionRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                label,
            };
            let response = api.get_subscription(request).await.map_err(client::status)?;
            let subscription = response.into_inner().subscription.unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&subscription)),
                || output::describe_subscription(&subscription),
            );
        }
        Command::Subscription(SubscriptionCommand::Delete { pipeline, label }) => {
            let request = v1::DeleteSubscriptionRequest {
                namespace_id: namespace,
                pipeline_id: pipeline.clone(),
                label: label.clone(),
            };
            api.delete_subscription(request).await.map_err(client::status)?;
            match format {
                Format::Json => {
                    print_json(&serde_json::json!({ "pipeline_id": pipeline, "label": label, "deleted": true }))
                }
                Format::Table => say!("subscription {label} of {pipeline} deleted"),
            }
        }
        Command::Cluster(ClusterCommand::Status) => {
            let status = api
                .get_cluster_status(v1::GetClusterStatusRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            output::emit(
                format,
                || print_json(&json::value(&status)),
                || output::describe_cluster(&status),
            );
        }
        Command::Cluster(ClusterCommand::Add { node_id, address }) => {
            let request = v1::AddClusterNodeRequest {
                node_id,
                address: address.clone(),
            };
            api.add_cluster_node(request).await.map_err(client::status)?;
            match format {
                Format::Json => {
                    print_json(&serde_json::json!({ "node_id": node_id, "address": address, "added": true }))
                }
                Format::Table => say!("node {node_id} added at {address}"),
            }
        }
        Command::Cluster(ClusterCommand::Remove { node_id }) => {
            api.remove_cluster_node(v1::RemoveClusterNodeRequest { node_id })
                .await
                .map_err(client::status)?;
            output::emit(
                format,
                || print_json(&serde_json::json!({ "node_id": node_id, "removed": true })),
                || say!("node {node_id} removed"),
            );
        }
        Command::Event(EventCommand::List { follow, from, pipeline }) => {
            // Without -n (or GOFER_NAMESPACE) the stream carries every namespace's events.
            let namespace_id = match (&cli.namespace, &pipeline) {
                (None, None) => String::new(),
                _ => namespace,
            };
            let request = v1::ListEventsRequest {
                after_id: from,
                follow,
                namespace_id,
                pipeline_id: pipeline.unwrap_or_default(),
            };
            events::list(api, resolve, request, format).await?;
        }
        Command::Task(TaskCommand::Logs {
            pipeline,
            run,
            task,
            follow,
        }) => {
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
                if format == Format::Json {
                    print_json(&json::value(&chunk));
                } else {
                    if let Err(err) = stdout.write_all(&chunk.data).and_then(|()| stdout.flush()) {
                        output::stdout_failed(err);
                    }
                }
            }
            if !printed {
                // An empty log of a task that never ran deserves a word on stderr, not silence.
                let request = v1::ListTaskExecutionsRequest {
                    namespace_id: namespace,
                    pipeline_id: pipeline,
                    run_id: run,
                };
                let tasks = api
                    .list_task_executions(request)
                    .await
                    .map_err(client::status)?
                    .into_inner()
                    .task_executions;
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

/// Starts a run (or a retry), prints it, and with `wait` follows it to its end: exit 0 if it succeeded.
async fn start_run(
    api: &mut client::Api,
    format: Format,
    namespace: &str,
    pipeline: &str,
    wait: bool,
    request: client::NewRun,
) -> Result<ExitCode, Failure> {
    let (run, created) = client::start_run(api, request).await?;
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
    let last = client::wait_for_run(api, namespace, pipeline, run.id).await?;
    let state = gofer_proto::run_state_name(last.state);
    match format {
        Format::Json => print_json(&json::value(&last)),
        Format::Table => {
            let reason = if last.state_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", last.state_reason)
            };
            eprintln!("run {} of {} {}{}", last.id, pipeline, state, reason);
        }
    }
    Ok(if state == "SUCCEEDED" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
