//! `goferctl event list`: the cluster's events, one line each, oldest first; with `--follow` it keeps
//! printing them and, when the connection drops, reconnects and resumes after the last id it printed,
//! so a node restart costs no event and repeats none.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use gofer_proto::v1;
use tonic::Code;

use crate::client;
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum Command {
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

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let Command::List { follow, from, pipeline } = command;
    // Without -n (or GOFER_NAMESPACE) the stream carries every namespace's events.
    let namespace_id = match (&ctx.flags.namespace, &pipeline) {
        (None, None) => String::new(),
        _ => ctx.namespace(),
    };
    let request = v1::ListEventsRequest {
        after_id: from,
        follow,
        namespace_id,
        pipeline_id: pipeline.unwrap_or_default(),
    };
    list(ctx, request).await?;
    Ok(ExitCode::SUCCESS)
}

/// How long `--follow` keeps trying to reconnect before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Prints the events `request` asks for. The settings are read again before each reconnection, so a
/// follower finds a `goferd dev` that came back on another port.
async fn list(ctx: &Context, mut request: v1::ListEventsRequest) -> Result<(), Failure> {
    let mut api = ctx.connect().await?;
    let mut lost_since: Option<Instant> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let error = match api.list_events(request.clone()).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            let Some(event) = message.event else { continue };
                            lost_since = None;
                            delay = Duration::from_millis(100);
                            request.after_id = event.id;
                            print(&event, ctx.format);
                        }
                        Ok(None) => return Ok(()),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        let transient = matches!(error.code(), Code::Unavailable | Code::Unknown | Code::Cancelled);
        let since = *lost_since.get_or_insert_with(Instant::now);
        if !request.follow || !transient || since.elapsed() > RECONNECT_FOR {
            return Err(client::status(error));
        }
        eprintln!(
            "the event stream was interrupted ({}); resuming after event {}",
            error.message(),
            request.after_id
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        if let Ok(settings) = ctx.flags.resolve()
            && let Ok(fresh) = client::connect(&settings).await
        {
            api = fresh;
        }
    }
}

fn print(event: &v1::Event, format: Format) {
    match format {
        Format::Json | Format::Yaml => crate::output::print_record(&json::value(event)),
        Format::Table => say!(
            "{:<8} {}  {}/{}  {}",
            event.id,
            output::precise_time(event.emitted_unix_millis),
            event.namespace_id,
            event.pipeline_id,
            describe(event)
        ),
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

fn decision_name(decision: i32) -> &'static str {
    match v1::FireDecision::try_from(decision) {
        Ok(d) => d.as_str_name().strip_prefix("FIRE_DECISION_").unwrap_or("UNSPECIFIED"),
        Err(_) => "UNKNOWN",
    }
}

/// What an event says, for people: `run 3 FAILED: task "a" ended FAILED`.
fn describe(event: &v1::Event) -> String {
    use v1::event::Kind;
    let with_reason = |text: String, reason: &str| {
        if reason.is_empty() {
            text
        } else {
            format!("{text}: {reason}")
        }
    };
    match &event.kind {
        Some(Kind::Run(r)) => with_reason(
            format!("run {} {}", r.run_id, gofer_proto::run_state_name(r.state)),
            &r.reason,
        ),
        Some(Kind::Task(t)) => with_reason(
            format!(
                "task {} of run {} attempt {} {}",
                t.task_id,
                t.run_id,
                t.attempt,
                gofer_proto::task_state_name(t.state)
            ),
            &t.reason,
        ),
        Some(Kind::Fire(f)) => {
            let run = if f.run_id == 0 {
                String::new()
            } else {
                format!(" run {}", f.run_id)
            };
            with_reason(
                format!(
                    "fire of {} ({}) {}{run}",
                    f.subscription_label,
                    f.extension,
                    decision_name(f.decision)
                ),
                &f.reason,
            )
        }
        Some(Kind::FiresSkipped(s)) => with_reason(
            format!("{} fire(s) of {} skipped", s.count, s.subscription_label),
            &s.reason,
        ),
        Some(Kind::ObjectEvicted(o)) => with_reason(
            match o.run_id {
                0 => format!("object {} evicted", o.key),
                run => format!("object {} of run {run} evicted", o.key),
            },
            &o.reason,
        ),
        None => "an event this goferctl does not know".to_string(),
    }
}
