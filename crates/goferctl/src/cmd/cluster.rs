//! `goferctl cluster`: the state nodes, their roles, the leader, the term and the log indexes, the
//! leases and the executors; and adding and removing state nodes.

use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;

use crate::client;
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};

#[derive(Subcommand)]
pub enum Command {
    /// Show the nodes, their roles, the leader, the term and the log indexes
    Status,
    /// Add a state node as a voter, by id and raft address (https://host:port)
    Add { node_id: u64, address: String },
    /// Remove a state node
    Remove { node_id: u64 },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let format = ctx.format;
    match command {
        Command::Status => {
            let status = api
                .get_cluster_status(v1::GetClusterStatusRequest {})
                .await
                .map_err(client::status)?
                .into_inner();
            output::emit(
                format,
                || print_json(&json::value(&status)),
                || describe_cluster(&status),
            );
        }
        Command::Add { node_id, address } => {
            let request = v1::AddClusterNodeRequest {
                node_id,
                address: address.clone(),
            };
            api.add_cluster_node(request).await.map_err(client::status)?;
            match format {
                Format::Json | Format::Yaml => {
                    print_json(&serde_json::json!({ "node_id": node_id, "address": address, "added": true }))
                }
                Format::Table => say!("node {node_id} added at {address}"),
            }
        }
        Command::Remove { node_id } => {
            api.remove_cluster_node(v1::RemoveClusterNodeRequest { node_id })
                .await
                .map_err(client::status)?;
            output::emit(
                format,
                || print_json(&serde_json::json!({ "node_id": node_id, "removed": true })),
                || say!("node {node_id} removed"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_cluster(s: &v1::GetClusterStatusResponse) {
    say!("cluster:     {}", s.cluster_id);
    say!("answered by: node {}", s.node_id);
    say!(
        "leader:      {}",
        if s.leader_id == 0 {
            "none known".to_string()
        } else {
            format!("node {}", s.leader_id)
        }
    );
    say!("term:        {}", s.term);
    say!("log index:   {} (applied {})", s.last_log_index, s.applied_index);
    say!("state:       {}", s.state_digest);
    if s.shared_blob_count > 0 {
        say!("S3 blobs:    {} ({} bytes)", s.shared_blob_count, s.shared_blob_bytes);
    }
    say!();
    print_table(
        &["NODE", "ROLE", "ADDRESS", "MATCHED", "BLOBS", "BLOB BYTES", "BACKLOG"],
        s.nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    n.role.clone(),
                    if n.address.is_empty() {
                        "-".into()
                    } else {
                        n.address.clone()
                    },
                    if n.matched_index == 0 {
                        "-".into()
                    } else {
                        n.matched_index.to_string()
                    },
                    n.blob_count.to_string(),
                    n.blob_bytes.to_string(),
                    n.blob_backlog.to_string(),
                ]
            })
            .collect(),
    );
    if !s.leases.is_empty() {
        say!();
        print_table(
            &["ROLE", "HOLDER", "EPOCH", "COMMANDS", "ADDRESS"],
            s.leases
                .iter()
                .map(|l| {
                    vec![
                        l.role.clone(),
                        l.holder.clone(),
                        l.epoch.to_string(),
                        l.commands.to_string(),
                        if l.address.is_empty() {
                            "-".to_string()
                        } else {
                            l.address.clone()
                        },
                    ]
                })
                .collect(),
        );
    }
    if !s.executors.is_empty() {
        say!();
        print_table(
            &["EXECUTOR", "STATE", "CAPACITY", "LIVE ATTEMPTS", "LABELS"],
            s.executors
                .iter()
                .map(|e| {
                    let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        e.id.clone(),
                        if e.lost_unix_millis == 0 { "ALIVE" } else { "LOST" }.to_string(),
                        if e.capacity == 0 {
                            "-".to_string()
                        } else {
                            e.capacity.to_string()
                        },
                        e.live_attempts.to_string(),
                        if labels.is_empty() {
                            "-".to_string()
                        } else {
                            labels.join(",")
                        },
                    ]
                })
                .collect(),
        );
    }
}
