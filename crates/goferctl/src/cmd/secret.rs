//! `goferctl secret`: pipeline secrets (in the namespace goferctl acts in) and, with `--global`, global
//! secrets with the namespaces allowed to use them. A value is read from a file or from stdin, never
//! from an argument, so it stays out of shell history and process listings; goferctl never prints one.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;

use crate::client;
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

#[derive(Subcommand)]
pub enum Command {
    /// Store a secret: `put PIPELINE KEY [FILE|-]`, or `put --global --namespaces P,... KEY [FILE|-]`.
    /// The value is FILE's contents, or stdin's when FILE is `-` or not given; one trailing newline is
    /// dropped
    Put {
        /// A global secret, for the namespaces --namespaces names (admins only)
        #[arg(long)]
        global: bool,
        /// For a global secret: the namespaces or patterns (team-a-*) allowed to use it, comma-separated
        /// or repeated
        #[arg(long = "namespaces", value_name = "PATTERN", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// [PIPELINE] KEY [FILE|-]
        #[arg(value_name = "ARGS", required = true, num_args = 1..=3)]
        args: Vec<String>,
    },
    /// List a pipeline's secrets (`list PIPELINE`) or the global ones (`list --global`): keys and
    /// metadata, never values
    List {
        #[arg(long)]
        global: bool,
        pipeline: Option<String>,
        #[command(flatten)]
        limit: Limit,
    },
    /// Forget a secret: `delete PIPELINE KEY` or `delete --global KEY`
    Delete {
        #[arg(long)]
        global: bool,
        /// [PIPELINE] KEY
        #[arg(value_name = "ARGS", required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Seal every secret again under the serving node's current key, after the nodes were restarted with
    /// the new key and the old one as --secret-old-key-file (admins only; docs/security.md)
    RotateKey,
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let format = ctx.format;
    match command {
        Command::Put {
            global,
            namespaces,
            args,
        } => {
            let secret = if global {
                let (key, file) = match args.as_slice() {
                    [key] => (key.clone(), None),
                    [key, file] => (key.clone(), Some(file.as_str())),
                    _ => return Err(Failure("usage: secret put --global --namespaces P KEY [FILE|-]".into())),
                };
                let request = v1::PutGlobalSecretRequest {
                    key,
                    value: read_value(file)?,
                    namespaces,
                };
                api.put_global_secret(request)
                    .await
                    .map_err(client::status)?
                    .into_inner()
                    .secret
            } else {
                if !namespaces.is_empty() {
                    return Err(Failure("--namespaces is for a global secret (--global)".into()));
                }
                let (pipeline, key, file) = match args.as_slice() {
                    [pipeline, key] => (pipeline.clone(), key.clone(), None),
                    [pipeline, key, file] => (pipeline.clone(), key.clone(), Some(file.as_str())),
                    _ => return Err(Failure("usage: secret put PIPELINE KEY [FILE|-]".into())),
                };
                let request = v1::PutSecretRequest {
                    namespace_id: ctx.namespace(),
                    pipeline_id: pipeline,
                    key,
                    value: read_value(file)?,
                };
                api.put_secret(request)
                    .await
                    .map_err(client::status)?
                    .into_inner()
                    .secret
            };
            let secret = secret.unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&secret)),
                || {
                    say!(
                        "secret {} stored ({} bytes, key {})",
                        secret.key,
                        secret.size_bytes,
                        secret.key_id
                    )
                },
            );
        }
        Command::List {
            global,
            pipeline,
            limit,
        } => {
            let secrets = match (global, pipeline) {
                (true, None) => {
                    pages::collect(limit, async |page_size, page_token| {
                        let request = v1::ListGlobalSecretsRequest { page_size, page_token };
                        let list = api.list_global_secrets(request).await?.into_inner();
                        Ok((list.secrets, list.next_page_token))
                    })
                    .await?
                }
                (false, Some(pipeline)) => {
                    let namespace = ctx.namespace();
                    pages::collect(limit, async |page_size, page_token| {
                        let request = v1::ListSecretsRequest {
                            namespace_id: namespace.clone(),
                            pipeline_id: pipeline.clone(),
                            page_size,
                            page_token,
                        };
                        let list = api.list_secrets(request).await?.into_inner();
                        Ok((list.secrets, list.next_page_token))
                    })
                    .await?
                }
                _ => return Err(Failure("usage: secret list PIPELINE, or secret list --global".into())),
            };
            match format {
                Format::Json | Format::Yaml => print_json(&json::values(&secrets)),
                Format::Table => print_secrets(&secrets),
            }
        }
        Command::Delete { global, args } => {
            let key = match (global, args.as_slice()) {
                (true, [key]) => {
                    let request = v1::DeleteGlobalSecretRequest { key: key.clone() };
                    api.delete_global_secret(request).await.map_err(client::status)?;
                    key.clone()
                }
                (false, [pipeline, key]) => {
                    let request = v1::DeleteSecretRequest {
                        namespace_id: ctx.namespace(),
                        pipeline_id: pipeline.clone(),
                        key: key.clone(),
                    };
                    api.delete_secret(request).await.map_err(client::status)?;
                    key.clone()
                }
                _ => {
                    return Err(Failure(
                        "usage: secret delete PIPELINE KEY, or secret delete --global KEY".into(),
                    ));
                }
            };
            match format {
                Format::Json | Format::Yaml => print_json(&serde_json::json!({ "key": key, "deleted": true })),
                Format::Table => say!("secret {key} deleted"),
            }
        }
        Command::RotateKey => {
            let rotated = api
                .rotate_secret_key(v1::RotateSecretKeyRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            output::emit(
                format,
                || print_json(&json::value(&rotated)),
                || {
                    say!(
                        "{} values sealed again; all are sealed under key {}",
                        rotated.resealed,
                        rotated.key_id
                    )
                },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The value in `file`, or on stdin for `-` or none, without one trailing newline.
fn read_value(file: Option<&str>) -> Result<Vec<u8>, Failure> {
    let mut value = Vec::new();
    match file {
        None | Some("-") => std::io::stdin()
            .read_to_end(&mut value)
            .map_err(|err| Failure(format!("reading the value from stdin: {err}")))?,
        Some(path) => {
            value = std::fs::read(path).map_err(|err| Failure(format!("reading the value from {path}: {err}")))?;
            value.len()
        }
    };
    if value.ends_with(b"\n") {
        value.pop();
        if value.ends_with(b"\r") {
            value.pop();
        }
    }
    Ok(value)
}

fn print_secrets(secrets: &[v1::Secret]) {
    print_table(
        &["KEY", "SCOPE", "SIZE", "KEY ID", "CREATED (UTC)", "UPDATED (UTC)"],
        secrets
            .iter()
            .map(|s| {
                let scope = if s.global {
                    format!("global: {}", s.namespaces.join(","))
                } else {
                    format!("{}/{}", s.namespace_id, s.pipeline_id)
                };
                vec![
                    s.key.clone(),
                    scope,
                    s.size_bytes.to_string(),
                    s.key_id.clone(),
                    output::time(s.created_unix_millis),
                    output::time(s.updated_unix_millis),
                ]
            })
            .collect(),
    );
}
