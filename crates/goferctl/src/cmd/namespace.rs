//! `goferctl namespace`: create and list namespaces, the tenant boundaries every pipeline lives in.

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
    /// Create a namespace
    Create { name: String },
    /// List namespaces
    List {
        #[command(flatten)]
        limit: Limit,
    },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    match command {
        Command::Create { name } => {
            let response = api
                .create_namespace(v1::CreateNamespaceRequest { id: name })
                .await
                .map_err(client::status)?;
            let ns = response.into_inner().namespace.unwrap_or_default();
            output::emit(
                ctx.format,
                || print_json(&json::value(&ns)),
                || say!("namespace {} created", ns.id),
            );
        }
        Command::List { limit } => {
            let namespaces = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListNamespacesRequest { page_size, page_token };
                let list = api.list_namespaces(request).await?.into_inner();
                Ok((list.namespaces, list.next_page_token))
            })
            .await?;
            match ctx.format {
                Format::Json | Format::Yaml => print_json(&json::values(&namespaces)),
                Format::Table => print_table(
                    &["ID", "CREATED (UTC)"],
                    namespaces
                        .iter()
                        .map(|n| vec![n.id.clone(), output::time(n.created_unix_millis)])
                        .collect(),
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
