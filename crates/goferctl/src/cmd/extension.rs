//! `goferctl extension`: install, uninstall, list and show extensions, the triggers the extension host
//! runs (`interval`, `cron` and `webhook` are built in).

use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;

use crate::client;
use crate::cmd::setting::{Setting, parse_setting, settings_map};
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

#[derive(Subcommand)]
pub enum Command {
    /// List extensions
    List {
        #[command(flatten)]
        limit: Limit,
    },
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

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let format = ctx.format;
    match command {
        Command::List { limit } => {
            let extensions = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListExtensionsRequest { page_size, page_token };
                let list = api.list_extensions(request).await?.into_inner();
                Ok((list.extensions, list.next_page_token))
            })
            .await?;
            match format {
                Format::Json | Format::Yaml => print_json(&json::values(&extensions)),
                Format::Table => extensions_table(&extensions),
            }
        }
        Command::Get { name } => {
            let response = api
                .get_extension(v1::GetExtensionRequest { name })
                .await
                .map_err(client::status)?;
            let extension = response.into_inner().extension.unwrap_or_default();
            output::emit(
                format,
                || print_json(&json::value(&extension)),
                || describe_extension(&extension),
            );
        }
        Command::Install { name, image, settings } => {
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
        Command::Uninstall { name } => {
            api.uninstall_extension(v1::UninstallExtensionRequest { name: name.clone() })
                .await
                .map_err(client::status)?;
            output::emit(
                format,
                || print_json(&serde_json::json!({ "name": name, "uninstalled": true })),
                || say!("extension {name} uninstalled"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn extensions_table(extensions: &[v1::Extension]) {
    print_table(
        &["NAME", "KIND", "IMAGE", "VERSION", "CONNECTED"],
        extensions
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    if e.builtin {
                        "built-in".into()
                    } else {
                        "container".into()
                    },
                    if e.image.is_empty() {
                        "-".into()
                    } else {
                        e.image.clone()
                    },
                    if e.version.is_empty() {
                        "-".into()
                    } else {
                        e.version.clone()
                    },
                    if e.connected { "yes".into() } else { "no".into() },
                ]
            })
            .collect(),
    );
}

fn describe_extension(e: &v1::Extension) {
    say!("extension: {}", e.name);
    say!("kind:      {}", if e.builtin { "built-in" } else { "container" });
    if !e.image.is_empty() {
        say!("image:     {}", e.image);
    }
    say!(
        "version:   {}",
        if e.registered {
            e.version.as_str()
        } else {
            "(not registered yet)"
        }
    );
    say!("connected: {}", if e.connected { "yes" } else { "no" });
    if !e.last_error.is_empty() {
        say!("problem:   {}", e.last_error);
    }
    if !e.documentation.is_empty() {
        say!("\n{}", e.documentation);
    }
    say!();
    print_table(
        &["SETTING", "REQUIRED", "DESCRIPTION"],
        e.settings
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    if s.required { "yes".into() } else { "no".into() },
                    s.description.clone(),
                ]
            })
            .collect(),
    );
}
