//! `goferctl object`: the cache. A pipeline's objects last across its runs; with `--run N`, the same
//! verbs act on run N's objects, which go when the run is pruned. `put` streams FILE (or stdin) in 1 MiB
//! messages; `get` writes the object's raw bytes to stdout.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;
use tokio::io::AsyncReadExt;

use crate::client;
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

/// The bytes of one message of a put.
const CHUNK: usize = 1024 * 1024;

#[derive(Subcommand)]
pub enum Command {
    /// Store an object: KEY's bytes are FILE's, or stdin's when FILE is `-` or not given. Keys are 1 to
    /// 128 of a-z A-Z 0-9 _ . / -; a key stored again is replaced
    Put {
        pipeline: String,
        key: String,
        file: Option<String>,
        /// Run N's object instead of the pipeline's
        #[arg(long, value_name = "N")]
        run: Option<u64>,
    },
    /// Write an object's bytes to stdout
    Get {
        pipeline: String,
        key: String,
        #[arg(long, value_name = "N")]
        run: Option<u64>,
    },
    /// List a pipeline's objects (or run N's), by key
    List {
        pipeline: String,
        #[arg(long, value_name = "N")]
        run: Option<u64>,
        #[command(flatten)]
        limit: Limit,
    },
    /// Forget an object
    Delete {
        pipeline: String,
        key: String,
        #[arg(long, value_name = "N")]
        run: Option<u64>,
    },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let format = ctx.format;
    let namespace = ctx.namespace();
    match command {
        Command::Put {
            pipeline,
            key,
            file,
            run,
        } => {
            let first = v1::PutObjectRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                run_id: run.unwrap_or(0),
                key,
                data: Vec::new(),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let reading = tokio::spawn(send_chunks(file, first, tx));
            let stored = api.put_object(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
            // A read that failed ended the stream early: its error says why, not the server's answer.
            reading
                .await
                .map_err(|e| Failure(format!("reading the object: {e}")))??;
            let stored = stored.map_err(client::status)?.into_inner();
            let object = stored.object.clone().unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&stored)),
                || {
                    say!(
                        "object {} stored ({} bytes, sha256 {})",
                        object.key,
                        object.size,
                        object.digest
                    );
                    for evicted in &stored.evicted_keys {
                        say!("object {evicted} evicted: the object count was reached");
                    }
                },
            );
        }
        Command::Get { pipeline, key, run } => {
            let request = v1::GetObjectRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                run_id: run.unwrap_or(0),
                key,
            };
            let mut stream = api.get_object(request).await.map_err(client::status)?.into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(message) = stream.message().await.map_err(client::status)? {
                stdout
                    .write_all(&message.data)
                    .map_err(|e| Failure(format!("writing to stdout: {e}")))?;
            }
            stdout.flush().map_err(|e| Failure(format!("writing to stdout: {e}")))?;
        }
        Command::List { pipeline, run, limit } => {
            let objects = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListObjectsRequest {
                    namespace_id: namespace.clone(),
                    pipeline_id: pipeline.clone(),
                    run_id: run.unwrap_or(0),
                    page_size,
                    page_token,
                };
                let list = api.list_objects(request).await?.into_inner();
                Ok((list.objects, list.next_page_token))
            })
            .await?;
            match format {
                Format::Json | Format::Yaml => print_json(&json::values(&objects)),
                Format::Table => print_table(
                    &["KEY", "SIZE", "CREATED (UTC)", "SHA256"],
                    objects
                        .iter()
                        .map(|o| {
                            vec![
                                o.key.clone(),
                                o.size.to_string(),
                                output::time(o.created_unix_millis),
                                o.digest.clone(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Command::Delete { pipeline, key, run } => {
            let request = v1::DeleteObjectRequest {
                namespace_id: namespace,
                pipeline_id: pipeline,
                run_id: run.unwrap_or(0),
                key: key.clone(),
            };
            api.delete_object(request).await.map_err(client::status)?;
            match format {
                Format::Json | Format::Yaml => print_json(&serde_json::json!({ "key": key, "deleted": true })),
                Format::Table => say!("object {key} deleted"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `first` with the first bytes of `file` (stdin for `-` or none), then the rest, a chunk per
/// message; stops when the call stops reading.
async fn send_chunks(
    file: Option<String>,
    mut first: v1::PutObjectRequest,
    tx: tokio::sync::mpsc::Sender<v1::PutObjectRequest>,
) -> Result<(), Failure> {
    let mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match file.as_deref() {
        None | Some("-") => Box::new(tokio::io::stdin()),
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| Failure(format!("{path}: {e}")))?,
        ),
    };
    let name = file.unwrap_or_else(|| "stdin".to_string());
    let mut message = Some(&mut first);
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        (&mut reader)
            .take(CHUNK as u64)
            .read_to_end(&mut chunk)
            .await
            .map_err(|e| Failure(format!("{name}: {e}")))?;
        let done = chunk.len() < CHUNK;
        let request = match message.take() {
            Some(first) => {
                first.data = chunk;
                std::mem::take(first)
            }
            None if chunk.is_empty() => break,
            None => v1::PutObjectRequest {
                data: chunk,
                ..Default::default()
            },
        };
        if tx.send(request).await.is_err() || done {
            break;
        }
    }
    Ok(())
}
