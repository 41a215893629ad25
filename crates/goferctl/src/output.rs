//! What goferctl prints: JSON with the proto messages' field names, or aligned tables for people.

use gofer_proto::v1;
use serde_json::Value;

/// The output format of read verbs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Ends the process after stdout failed: quietly when the reader went away, else with one error line.
pub fn stdout_failed(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {err}");
    std::process::exit(1);
}

/// Prints one result: `json` for `-o json`, `table` for people.
pub fn emit(format: Format, json: impl FnOnce(), table: impl FnOnce()) {
    match format {
        Format::Json => json(),
        Format::Table => table(),
    }
}

pub fn print_json(value: &Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values always serialize")
    );
}

/// Prints rows under headers, each column as wide as its widest cell.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        say!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// A Unix time in milliseconds as UTC `YYYY-MM-DD HH:MM:SS`, or `-` for unset.
pub fn time(millis: i64) -> String {
    if millis <= 0 {
        return "-".to_string();
    }
    let secs = millis.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn duration(start: i64, end: i64) -> String {
    if start <= 0 || end < start {
        return "-".to_string();
    }
    format!("{:.1}s", (end - start) as f64 / 1000.0)
}

fn condition_name(condition: i32) -> &'static str {
    match v1::DependencyCondition::try_from(condition) {
        Ok(v1::DependencyCondition::Any) => "any",
        Ok(v1::DependencyCondition::Success) => "success",
        Ok(v1::DependencyCondition::Failure) => "failure",
        _ => "unspecified",
    }
}

/// How a run's trigger reads in a table: `cron/nightly @ 2026-11-26 03:00:00`, or `-` for a manual run.
fn trigger_text(t: Option<&v1::RunTrigger>) -> String {
    let Some(t) = t else { return "-".to_string() };
    let what = if t.scheduled_unix_millis > 0 {
        format!(" @ {} UTC", precise_time(t.scheduled_unix_millis))
    } else if !t.delivery_id.is_empty() {
        format!(" delivery {}", t.delivery_id)
    } else {
        String::new()
    };
    format!("{}/{}{}", t.extension, t.subscription, what)
}

/// A time with milliseconds, for scheduled instants.
pub fn precise_time(millis: i64) -> String {
    format!("{}.{:03}", time(millis), millis.rem_euclid(1000))
}

pub fn extensions_table(extensions: &[v1::Extension]) {
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

pub fn describe_extension(e: &v1::Extension) {
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

fn settings_text(settings: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(" ")
}

pub fn subscriptions_table(subscriptions: &[v1::Subscription]) {
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

pub fn describe_subscription(s: &v1::Subscription) {
    say!("subscription: {}", s.label);
    say!("pipeline:     {}", s.pipeline_id);
    say!("extension:    {}", s.extension);
    say!("settings:     {}", settings_text(&s.settings));
    if !s.webhook_url.is_empty() {
        say!("webhook url:  {}", s.webhook_url);
    }
    say!("created:      {} UTC", time(s.created_unix_millis));
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
                        time(k.at_unix_millis),
                        if k.scheduled_unix_millis > 0 {
                            precise_time(k.scheduled_unix_millis)
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

pub fn runs_table(runs: &[v1::Run]) {
    print_table(
        &[
            "RUN",
            "VERSION",
            "STATE",
            "CREATED (UTC)",
            "DURATION",
            "TRIGGER",
            "REASON",
        ],
        runs.iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.version.to_string(),
                    gofer_proto::run_state_name(r.state).to_string(),
                    time(r.created_unix_millis),
                    duration(r.started_unix_millis, r.ended_unix_millis),
                    trigger_text(r.trigger.as_ref()),
                    r.state_reason.clone(),
                ]
            })
            .collect(),
    );
}

pub fn tasks_table(tasks: &[v1::TaskExecution]) {
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
                    time(t.started_unix_millis),
                    duration(t.started_unix_millis, t.ended_unix_millis),
                    t.state_reason.clone(),
                ]
            })
            .collect(),
    );
}

pub fn describe_pipeline(p: &v1::Pipeline, c: &v1::PipelineConfig) {
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

pub fn describe_cluster(s: &v1::GetClusterStatusResponse) {
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
    say!();
    print_table(
        &["NODE", "ROLE", "ADDRESS", "MATCHED"],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_000), "1970-01-01 00:00:01");
        assert_eq!(time(1_709_164_800_000), "2024-02-29 00:00:00");
        assert_eq!(time(1_798_761_599_000), "2026-12-31 23:59:59");
    }
}
