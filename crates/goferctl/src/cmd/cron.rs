//! `goferctl cron explain`: the next instants of a cron expression in its zone and in UTC, before anyone
//! subscribes, from the same pure schedule code that fires subscriptions (`gofer_domain::schedule`), with
//! the daylight-saving shifts marked. It needs no server.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Offset, TimeZone, Utc};
use clap::Subcommand;
use gofer_domain::schedule::{Schedule, ScheduleSettings};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{self, Format, print_json, print_table};

#[derive(Subcommand)]
pub enum Command {
    /// The next instants of a cron expression (5 fields, or 6 with seconds first), marking where the zone's
    /// UTC offset changes (daylight saving) and where a local time does not exist or happens twice
    Explain {
        expression: String,
        /// An IANA time zone, as the cron trigger's `timezone` setting takes it
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// How many instants to print
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: u16,
        /// Start after this instant (RFC 3339, such as 2026-03-29T00:00:00Z) instead of now
        #[arg(long)]
        after: Option<String>,
    },
}

/// One instant as printed.
struct Instant {
    unix_millis: i64,
    utc: String,
    local: String,
    offset: String,
    /// What happened to the zone's offset since the previous instant, if anything.
    shift: Option<String>,
}

pub fn run(command: Command, format: Format) -> Result<ExitCode, Failure> {
    let Command::Explain {
        expression,
        timezone,
        count,
        after,
    } = command;
    let settings = BTreeMap::from([
        ("expression".to_string(), expression.clone()),
        ("timezone".to_string(), timezone.clone()),
    ]);
    let parsed = ScheduleSettings::cron(&settings).map_err(|e| match e {
        // The subscription's setting names, as this command's arguments.
        gofer_domain::Error::InvalidArgument { field, reason } => {
            let argument = match field.as_str() {
                "settings.timezone" => "--timezone",
                _ => "expression",
            };
            Failure(format!("{argument}: {reason}"))
        }
        other => Failure(other.to_string()),
    })?;
    let Schedule::Cron { timezone: zone, .. } = &parsed.schedule else {
        return Err(Failure("not a cron schedule".to_string()));
    };
    let start = match &after {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| Failure(format!("--after: {text:?} is not an RFC 3339 time: {e}")))?
            .timestamp_millis(),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    };
    let mut instants = Vec::new();
    let mut cursor = start;
    let mut previous_offset: Option<i32> = None;
    while instants.len() < usize::from(count) {
        let Some(next) = parsed.schedule.next_after(cursor) else {
            break;
        };
        let utc = Utc
            .timestamp_millis_opt(next)
            .single()
            .ok_or_else(|| Failure("an instant out of range".into()))?;
        let local = utc.with_timezone(zone);
        let offset_seconds = local.offset().fix().local_minus_utc();
        let shift = match previous_offset {
            Some(before) if before != offset_seconds => Some(format!(
                "UTC offset {} → {}",
                offset_text(before),
                offset_text(offset_seconds)
            )),
            _ => None,
        };
        previous_offset = Some(offset_seconds);
        instants.push(Instant {
            unix_millis: next,
            utc: utc.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            local: local.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            offset: offset_text(offset_seconds),
            shift,
        });
        cursor = next;
    }
    output::emit(
        format,
        || {
            print_json(&json!({
                "expression": expression,
                "timezone": timezone,
                "next_fires_unix_millis": instants.iter().map(|i| i.unix_millis).collect::<Vec<_>>(),
                "next_fires": instants.iter().map(|i| json!({
                    "unix_millis": i.unix_millis,
                    "utc": i.utc,
                    "local": i.local,
                    "utc_offset": i.offset,
                    "daylight_saving_shift": i.shift,
                })).collect::<Vec<_>>(),
            }))
        },
        || {
            let rows = instants
                .iter()
                .map(|i| vec![i.local.clone(), i.utc.clone(), i.shift.clone().unwrap_or_default()])
                .collect();
            print_table(&["LOCAL", "UTC", "SHIFT"], rows);
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn offset_text(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.abs() / 60;
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}
