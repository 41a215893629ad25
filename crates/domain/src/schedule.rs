//! Schedule maths for the interval and cron triggers: parsing their settings, the next scheduled instant
//! after a time, deterministic jitter, and which missed instants a restart catches up on.
//!
//! Everything here is a pure function of its arguments: the clock is passed in as Unix milliseconds, so
//! the same inputs give the same fires on every node and in every test. Cron expressions are evaluated
//! with croner in an IANA time zone (chrono-tz), which gets daylight saving right: a local time that
//! does not exist (spring forward) fires once at the next valid instant, and a fixed local time that
//! happens twice (fall back) fires once, at its first occurrence, whatever the pattern: each local
//! wall-clock time fires at most once.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{LocalResult, TimeZone, Timelike, Utc};
use croner::parser::{CronParser, Seconds};

use crate::Error;

/// The shortest interval a subscription may ask for.
pub const MIN_INTERVAL_MS: i64 = 1_000;
/// The catch-up window when a subscription names none.
pub const DEFAULT_CATCHUP_WINDOW_MS: i64 = 60_000;
/// How many missed instants a catch-up walks at most; older ones are counted as skipped in bulk.
const MAX_WALK: usize = 100_000;

/// What happens to a fire while the previous run of the same subscription is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start another run anyway.
    Allow,
    /// Drop the fire (it is counted and recorded as skipped).
    Skip,
    /// Keep one fire and start it when the previous run ends; further fires meanwhile are skipped.
    BufferOne,
    /// Cancel the previous run and start a new one.
    CancelOther,
}

impl Overlap {
    /// Parses the `overlap` setting.
    pub fn parse(field: &str, text: &str) -> Result<Self, Error> {
        match text {
            "allow" => Ok(Overlap::Allow),
            "skip" => Ok(Overlap::Skip),
            "buffer_one" => Ok(Overlap::BufferOne),
            "cancel_other" => Ok(Overlap::CancelOther),
            _ => Err(Error::invalid(
                field,
                format!("{text:?} is not one of allow, skip, buffer_one, cancel_other"),
            )),
        }
    }
}

/// When a subscription fires.
#[derive(Clone)]
pub enum Schedule {
    /// Every `every_ms`, on instants `anchor_ms + k * every_ms`.
    Interval { every_ms: i64, anchor_ms: i64 },
    /// A cron expression evaluated in a time zone.
    Cron {
        cron: Box<croner::Cron>,
        timezone: chrono_tz::Tz,
    },
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Interval { every_ms, anchor_ms } => write!(f, "Interval(every {every_ms} ms from {anchor_ms})"),
            Schedule::Cron { cron, timezone } => write!(f, "Cron({:?} in {timezone})", cron.pattern.to_string()),
        }
    }
}

impl Schedule {
    /// The first scheduled instant strictly after `after_ms`, or `None` if there is none (a cron
    /// expression that never matches again).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Interval { every_ms, anchor_ms } => {
                if after_ms < *anchor_ms {
                    return Some(*anchor_ms);
                }
                let periods = (after_ms - anchor_ms) / every_ms + 1;
                anchor_ms.checked_add(periods.checked_mul(*every_ms)?)
            }
            Schedule::Cron { cron, timezone } => next_cron_instant(cron, *timezone, after_ms),
        }
    }
}

/// Where the check for patterns that never fire starts (2026-01-01): a fixed instant, since the domain
/// reads no clock. A pattern that matches some date matches one within croner's search from there.
const NEVER_FIRES_CHECK_FROM_MS: i64 = 1_767_225_600_000;

/// How many local times a cron search looks at before it gives up (a pattern that matches only
/// non-existent or already-fired local times for this long never fires).
const MAX_CRON_STEPS: usize = 10_000;

/// The first instant after `after_ms` at which `cron` fires in `timezone`.
///
/// The pattern is matched against local wall-clock times, and each local time fires at most once: a time
/// that happens twice (fall back) fires at its first occurrence only, and every time that does not exist
/// (spring forward) fires once, at the instant the gap ends.
fn next_cron_instant(cron: &croner::Cron, timezone: chrono_tz::Tz, after_ms: i64) -> Option<i64> {
    let after = Utc.timestamp_millis_opt(after_ms).single()?;
    let mut cursor = after.with_timezone(&timezone).naive_local();
    for _ in 0..MAX_CRON_STEPS {
        let local = cron.find_next_occurrence(&cursor, false).ok()?;
        let instant = match timezone.from_local_datetime(&local) {
            LocalResult::Single(at) => at.timestamp_millis(),
            LocalResult::Ambiguous(first, _) => first.timestamp_millis(),
            LocalResult::None => gap_end(timezone, local)?,
        };
        if instant > after_ms {
            return Some(instant);
        }
        cursor = local;
    }
    None
}

/// The first instant after a daylight-saving gap that `local` falls in: the first existing local minute.
fn gap_end(timezone: chrono_tz::Tz, local: chrono::NaiveDateTime) -> Option<i64> {
    let minute = local.with_second(0)?.with_nanosecond(0)?;
    (1..=24 * 60).find_map(|step| {
        let candidate = minute + chrono::Duration::minutes(step);
        match timezone.from_local_datetime(&candidate) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.timestamp_millis()),
            LocalResult::None => None,
        }
    })
}

/// A trigger subscription's schedule settings, parsed and checked.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub schedule: Schedule,
    pub jitter_ms: i64,
    pub overlap: Overlap,
    pub catchup_window_ms: i64,
}

impl ScheduleSettings {
    /// Parses an interval subscription's settings: `every` (required, at least 1s), `jitter`, `overlap`,
    /// `catchup_window`. Instants are anchored at `anchor_ms`, the subscription's creation time.
    pub fn interval(settings: &BTreeMap<String, String>, anchor_ms: i64) -> Result<Self, Error> {
        let every = settings
            .get("every")
            .ok_or_else(|| Error::invalid("settings.every", "is required"))?;
        let every_ms = parse_duration("settings.every", every)?;
        if every_ms < MIN_INTERVAL_MS {
            return Err(Error::invalid("settings.every", "must be at least 1s"));
        }
        let parsed = Self::common(settings, Schedule::Interval { every_ms, anchor_ms })?;
        if parsed.jitter_ms >= every_ms {
            return Err(Error::invalid("settings.jitter", "must be shorter than every"));
        }
        Ok(parsed)
    }

    /// Parses a cron subscription's settings: `expression` (required; 5 fields, or 6 with seconds first),
    /// `timezone` (an IANA zone, default UTC), `jitter`, `overlap`, `catchup_window`.
    pub fn cron(settings: &BTreeMap<String, String>) -> Result<Self, Error> {
        let expression = settings
            .get("expression")
            .ok_or_else(|| Error::invalid("settings.expression", "is required"))?;
        let fields = expression.split_whitespace().count();
        if !(fields == 5 || fields == 6 || expression.trim_start().starts_with('@')) {
            return Err(Error::invalid(
                "settings.expression",
                format!("{expression:?} has {fields} fields; use 5, or 6 with seconds first"),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| {
                Error::invalid(
                    "settings.expression",
                    format!("{expression:?} is not a valid cron expression: {e}"),
                )
            })?;
        let timezone = match settings.get("timezone") {
            None => chrono_tz::UTC,
            Some(zone) => chrono_tz::Tz::from_str_insensitive(zone)
                .map_err(|_| Error::invalid("settings.timezone", format!("{zone:?} is not an IANA time zone")))?,
        };
        let parsed = Self::common(
            settings,
            Schedule::Cron {
                cron: Box::new(cron),
                timezone,
            },
        )?;
        // A pattern such as `0 3 31 2 *` (February 31st) would be accepted and never fire.
        if parsed.schedule.next_after(NEVER_FIRES_CHECK_FROM_MS).is_none() {
            return Err(Error::invalid(
                "settings.expression",
                format!("{expression:?} never matches a date"),
            ));
        }
        Ok(parsed)
    }

    fn common(settings: &BTreeMap<String, String>, schedule: Schedule) -> Result<Self, Error> {
        let jitter_ms = match settings.get("jitter") {
            Some(text) => parse_duration("settings.jitter", text)?,
            None => 0,
        };
        let overlap = match settings.get("overlap") {
            Some(text) => Overlap::parse("settings.overlap", text)?,
            None => Overlap::Allow,
        };
        let catchup_window_ms = match settings.get("catchup_window") {
            Some(text) => parse_duration("settings.catchup_window", text)?,
            None => DEFAULT_CATCHUP_WINDOW_MS,
        };
        Ok(ScheduleSettings {
            schedule,
            jitter_ms,
            overlap,
            catchup_window_ms,
        })
    }
}

/// Parses a duration such as `30s`, `5m`, `1h30m`, `250ms` or `0s` into milliseconds.
pub fn parse_duration(field: &str, text: &str) -> Result<i64, Error> {
    let bad = || {
        Error::invalid(
            field,
            format!("{text:?} is not a duration such as 30s, 5m, 1h30m or 500ms"),
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let value: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = value
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if total > 366 * 86_400_000 {
        return Err(Error::invalid(field, "must be at most 366d"));
    }
    Ok(total)
}

/// A delay in `[0, bound_ms)` that is the same for the same subscription and instant on every node, so a
/// retried or replayed fire lands on the same moment.
pub fn jitter_ms(subscription: &str, instant_ms: i64, bound_ms: i64) -> i64 {
    if bound_ms <= 0 {
        return 0;
    }
    // FNV-1a: small, stable across versions and platforms, and good enough to spread fires.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in subscription.bytes().chain(instant_ms.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % bound_ms as u64) as i64
}

/// What a (re)start does about instants that passed while nothing fired them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatchUp {
    /// Missed instants inside the catch-up window, oldest first: each fires once.
    pub fire: Vec<i64>,
    /// How many missed instants were older than the window, and are skipped.
    pub skipped: u64,
    /// The newest skipped instant, if any.
    pub last_skipped: Option<i64>,
}

/// The instants in `(last_ms, now_ms]` split into those within `window_ms` of `now_ms` (fired) and older
/// ones (skipped).
pub fn catch_up(schedule: &Schedule, last_ms: i64, now_ms: i64, window_ms: i64) -> CatchUp {
    let mut out = CatchUp::default();
    let oldest_fired = now_ms.saturating_sub(window_ms);
    let mut cursor = last_ms;
    if let Schedule::Interval { every_ms, .. } = schedule {
        // Count whole periods before the window arithmetically instead of walking them.
        if let Some(first) = schedule.next_after(last_ms)
            && first < oldest_fired
        {
            let before_window = (oldest_fired - 1 - first) / every_ms + 1;
            out.skipped = before_window as u64;
            cursor = first + (before_window - 1) * every_ms;
            out.last_skipped = Some(cursor);
        }
    }
    let mut walked = 0;
    while let Some(instant) = schedule.next_after(cursor) {
        if instant > now_ms {
            break;
        }
        if instant < oldest_fired {
            out.skipped += 1;
            out.last_skipped = Some(instant);
            walked += 1;
            if walked >= MAX_WALK {
                // Jump to the window: everything between is skipped without counting it one by one.
                cursor = oldest_fired.saturating_sub(1).max(instant);
                continue;
            }
        } else {
            out.fire.push(instant);
        }
        cursor = instant;
    }
    out
}

#[cfg(test)]
mod tests;
