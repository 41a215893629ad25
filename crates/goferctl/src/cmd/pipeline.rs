//! `goferctl pipeline`: register a pipeline version from a file, stdin or a Cargo project, and list and
//! show pipelines. Reading the pipeline leaves the DAG rules to the server.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use gofer_domain::PipelineConfig;
use gofer_proto::v1;

use crate::client;
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

#[derive(Subcommand)]
pub enum Command {
    /// Register a new version of a pipeline from a JSON file, `-` for stdin, or a Cargo project directory
    /// whose `cargo run --quiet` prints the JSON
    Register { path: String },
    /// List pipelines
    List {
        #[command(flatten)]
        limit: Limit,
    },
    /// Show a pipeline and its newest version
    Get { id: String },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    // Read the pipeline before connecting, so a bad file fails fast and without a server.
    let config = match &command {
        Command::Register { path } => Some(load_pipeline(path)?),
        _ => None,
    };
    let mut api = ctx.connect().await?;
    let namespace = ctx.namespace();
    match command {
        Command::Register { .. } => {
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
            match ctx.format {
                Format::Json | Format::Yaml => print_json(&json::value(&response)),
                Format::Table => say!(
                    "pipeline {} version {}",
                    response.pipeline.unwrap_or_default().id,
                    response.version
                ),
            }
        }
        Command::List { limit } => {
            let pipelines = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListPipelinesRequest {
                    namespace_id: namespace.clone(),
                    page_size,
                    page_token,
                };
                let list = api.list_pipelines(request).await?.into_inner();
                Ok((list.pipelines, list.next_page_token))
            })
            .await?;
            match ctx.format {
                Format::Json | Format::Yaml => print_json(&json::values(&pipelines)),
                Format::Table => print_table(
                    &["ID", "NAME", "VERSION", "UPDATED (UTC)"],
                    pipelines
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
        Command::Get { id } => {
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
            match ctx.format {
                Format::Json | Format::Yaml => {
                    let mut value = json::value(&pipeline);
                    value["config"] = json::value(&config);
                    print_json(&value)
                }
                Format::Table => describe_pipeline(&pipeline, &config),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a pipeline: a JSON file, `-` for stdin, or a Cargo project directory whose `cargo run --quiet`
/// prints the JSON. The DAG rules are left to the server.
fn load_pipeline(path: &str) -> Result<PipelineConfig, Failure> {
    let json = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| Failure(format!("reading stdin: {e}")))?
    } else if Path::new(path).is_dir() {
        run_cargo_project(Path::new(path))?
    } else {
        std::fs::read_to_string(path).map_err(|e| Failure(format!("reading {path}: {e}")))?
    };
    PipelineConfig::parse_json(&json).map_err(|e| {
        let status = gofer_proto::into_status(e);
        Failure(format!("invalid pipeline: {} ({:?})", status.message(), status.code()))
    })
}

fn run_cargo_project(dir: &Path) -> Result<String, Failure> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(Failure(format!(
            "{} is a directory without a Cargo.toml",
            dir.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["run", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Failure(format!("running `cargo run --quiet` in {}: {e}", dir.display())))?;
    if !output.status.success() {
        // Cargo's own messages (the compiler's errors) went to stderr above this line.
        return Err(Failure(format!(
            "`cargo run --quiet` in {} failed (its errors are above)",
            dir.display()
        )));
    }
    String::from_utf8(output.stdout).map_err(|_| Failure("the pipeline program printed invalid UTF-8".into()))
}

fn condition_name(condition: i32) -> &'static str {
    match v1::DependencyCondition::try_from(condition) {
        Ok(v1::DependencyCondition::Any) => "any",
        Ok(v1::DependencyCondition::Success) => "success",
        Ok(v1::DependencyCondition::Failure) => "failure",
        _ => "unspecified",
    }
}

fn describe_pipeline(p: &v1::Pipeline, c: &v1::PipelineConfig) {
    say!("pipeline:    {}", p.id);
    say!("name:        {}", p.name);
    if !p.description.is_empty() {
        say!("description: {}", p.description);
    }
    say!("version:     {}", p.latest_version);
    say!(
        "parallelism: {}",
        if c.parallelism == 0 {
            "unlimited".to_string()
        } else {
            c.parallelism.to_string()
        }
    );
    say!();
    print_table(
        &["TASK", "IMAGE", "DEPENDS ON", "COMMAND"],
        c.tasks
            .iter()
            .map(|t| {
                let mut deps: Vec<String> = t
                    .depends_on
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", condition_name(*v)))
                    .collect();
                deps.sort();
                vec![
                    t.id.clone(),
                    t.image.clone(),
                    if deps.is_empty() { "-".into() } else { deps.join(",") },
                    t.command.join(" "),
                ]
            })
            .collect(),
    );
}
