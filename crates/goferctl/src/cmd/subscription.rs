//! `goferctl subscription`: link a pipeline to an extension with settings (a cron schedule, a webhook),
//! and list, show and delete those links.

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
    List {
        pipeline: String,
        #[command(flatten)]
        limit: Limit,
    },
    /// Show a subscription: settings, fire counts, recent skips, and for a webhook the URL to call
    Get { pipeline: String, label: String },
    /// Delete a subscription
    Delete { pipeline: String, label: String },
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let namespace = ctx.namespace();
    let format = ctx.format;
    match command {
        Command::Create {
            pipeline,
            extension,
            label,
            settings,
        } => {
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
                Format::Json | Format::Yaml => print_json(&json::value(&subscription)),
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
        Command::List { pipeline, limit } => {
            let subscriptions = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListSubscriptionsRequest {
                    namespace_id: namespace.clone(),
                    pipeline_id: pipeline.clone(),
                    page_size,
                    page_token,
                };
                let list = api.list_subscriptions(request).await?.into_inner();
                Ok((list.subscriptions, list.next_page_token))
            })
            .await?;
            match format {
                Format::Json | Format::Yaml => print_json(&json::values(&subscriptions)),
                Format::Table => subscriptions_table(&subscriptions),
            }
        }
        Command::Get { pipeline, label } => {
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
                || describe_subscription(&subscription),
            );
        }
        Command::Delete { pipeline, label } => {
            let request = v1::DeleteSubscriptionRequest {
                namespace_id: namespace,
                pipeline_id: pipeline.clone(),
                label: label.clone(),
            };
            api.delete_subscription(request).await.map_err(client::status)?;
            match format {
                Format::Json | Format::Yaml => {
                    print_json(&serde_json::json!({ "pipeline_id": pipeline, "label": label, "deleted": true }))
                }
                Format::Table => say!("subscription {label} of {pipeline} deleted"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn settings_text(settings: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(" ")
}

fn subscriptions_table(subscriptions: &[v1::Subscription]) {
    print_table(
        &["LABEL", "EXTENSION", "FIRED", "SKIPPED", "LAST RUN", "SETTINGS"],
        subscriptions
            .iter()
            .map(|s| {
                vec![
                    s.label.clone(),
                    s.extension.clone(),
                    s.fired.to_string(),
                    s.skipped.to_string(),
                    if s.last_run_id == 0 {
                        "-".into()
                    } else {
                        s.last_run_id.to_string()
                    },
                    settings_text(&s.settings),
                ]
            })
            .collect(),
    );
}

fn describe_subscription(s: &v1::Subscription) {
    say!("subscription: {}", s.label);
    say!("pipeline:     {}", s.pipeline_id);
    say!("extension:    {}", s.extension);
    say!("settings:     {}", settings_text(&s.settings));
    if !s.webhook_url.is_empty() {
        say!("webhook url:  {}", s.webhook_url);
    }
    say!("created:      {} UTC", output::time(s.created_unix_millis));
    say!("fired:        {}", s.fired);
    say!("skipped:      {}", s.skipped);
    if s.last_run_id > 0 {
        say!("last run:     {}", s.last_run_id);
    }
    if s.buffered {
        say!("buffered:     one fire waits for the last run to end");
    }
    if !s.recent_skips.is_empty() {
        say!();
        print_table(
            &["SKIPPED AT (UTC)", "SCHEDULED (UTC)", "REASON"],
            s.recent_skips
                .iter()
                .map(|k| {
                    vec![
                        output::time(k.at_unix_millis),
                        if k.scheduled_unix_millis > 0 {
                            output::precise_time(k.scheduled_unix_millis)
                        } else {
                            "-".into()
                        },
                        k.reason.clone(),
                    ]
                })
                .collect(),
        );
    }
}
