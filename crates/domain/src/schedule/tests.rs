//! Cron and interval maths: DST in Europe/Berlin and America/New_York, catch-up, jitter, settings.

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, TimeZone, Utc};
use proptest::prelude::*;

use super::*;

fn utc(text: &str) -> i64 {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

fn show(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn cron(expression: &str, zone: &str) -> Schedule {
    ScheduleSettings::cron(&settings(&[("expression", expression), ("timezone", zone)]))
        .unwrap()
        .schedule
}

/// The next `n` instants after `from`, in UTC.
fn next_n(schedule: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut t = utc(from);
    (0..n)
        .map(|_| {
            t = schedule.next_after(t).unwrap();
            show(t)
        })
        .collect()
}

#[test]
fn berlin_spring_forward_fires_a_missing_local_time_once_at_the_next_valid_instant() {
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    let daily = cron("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        next_n(&daily, "2026-03-28 12:00:00", 3),
        ["2026-03-29 01:00:00", "2026-03-30 00:30:00", "2026-03-31 00:30:00"]
    );
}

#[test]
fn berlin_fall_back_fires_a_repeated_local_time_once() {
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice; it fires at the first.
    let daily = cron("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        next_n(&daily, "2026-10-24 12:00:00", 3),
        ["2026-10-25 00:30:00", "2026-10-26 01:30:00", "2026-10-27 01:30:00"]
    );
}

#[test]
fn new_york_spring_forward_and_fall_back() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
    let daily = cron("0 2 * * *", "America/New_York");
    assert_eq!(
        next_n(&daily, "2026-03-07 12:00:00", 2),
        ["2026-03-08 07:00:00", "2026-03-09 06:00:00"]
    );
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST, so 01:30 happens twice; it fires once.
    let early = cron("30 1 * * *", "America/New_York");
    assert_eq!(
        next_n(&early, "2026-10-31 12:00:00", 2),
        ["2026-11-01 05:30:00", "2026-11-02 06:30:00"]
    );
}

#[test]
fn every_local_time_fires_once_even_when_the_pattern_matches_many_times_in_the_changed_hour() {
    // Fall back, Europe/Berlin 2026-10-25: 02:00-02:59 happens twice; each local time fires once, at its
    // first occurrence (CEST, UTC+2).
    let hourly = cron("0 * * * *", "Europe/Berlin");
    assert_eq!(
        next_n(&hourly, "2026-10-24 23:30:00", 3),
        ["2026-10-25 00:00:00", "2026-10-25 02:00:00", "2026-10-25 03:00:00"]
    );
    let half_hours = cron("0,30 2 * * *", "Europe/Berlin");
    assert_eq!(
        next_n(&half_hours, "2026-10-24 12:00:00", 3),
        ["2026-10-25 00:00:00", "2026-10-25 00:30:00", "2026-10-26 01:00:00"]
    );
    let quarters = cron("*/15 2 * * *", "Europe/Berlin");
    assert_eq!(
        next_n(&quarters, "2026-10-24 12:00:00", 5),
        [
            "2026-10-25 00:00:00",
            "2026-10-25 00:15:00",
            "2026-10-25 00:30:00",
            "2026-10-25 00:45:00",
            "2026-10-26 01:00:00"
        ]
    );
    let range = cron("0 1-3 * * *", "Europe/Berlin");
    assert_eq!(
        next_n(&range, "2026-10-24 12:00:00", 4),
        [
            "2026-10-24 23:00:00",
            "2026-10-25 00:00:00",
            "2026-10-25 02:00:00",
            "2026-10-26 00:00:00"
        ]
    );
    // Asked from inside the second pass of the repeated hour, nothing fires again.
    assert_eq!(next_n(&half_hours, "2026-10-25 01:10:00", 1), ["2026-10-26 01:00:00"]);
}

#[test]
fn every_missing_local_time_fires_once_when_the_gap_ends() {
    // Spring forward, Europe/Berlin 2026-03-29: 02:00-02:59 does not exist; whatever the pattern matches
    // in it fires once, at 03:00 CEST (01:00 UTC).
    for expression in ["0,30 2 * * *", "*/15 2 * * *", "15,45 2 * * *"] {
        let schedule = cron(expression, "Europe/Berlin");
        let fires = next_n(&schedule, "2026-03-28 12:00:00", 2);
        assert_eq!(fires[0], "2026-03-29 01:00:00", "{expression}");
        assert!(fires[1].starts_with("2026-03-30 00:"), "{expression}: {fires:?}");
    }
    // New York 2026-03-08: 02:00-02:59 EST does not exist.
    let schedule = cron("10,40 2 * * *", "America/New_York");
    assert_eq!(
        next_n(&schedule, "2026-03-07 12:00:00", 2),
        ["2026-03-08 07:00:00", "2026-03-09 06:10:00"]
    );
}

#[test]
fn six_fields_take_seconds_first_and_utc_is_the_default_zone() {
    let every_two = ScheduleSettings::cron(&settings(&[("expression", "*/2 * * * * *")]))
        .unwrap()
        .schedule;
    assert_eq!(
        next_n(&every_two, "2026-03-07 12:00:00", 2),
        ["2026-03-07 12:00:02", "2026-03-07 12:00:04"]
    );
}

#[test]
fn bad_settings_name_their_field() {
    let field = |result: Result<ScheduleSettings, Error>| match result.unwrap_err() {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(ScheduleSettings::cron(&settings(&[]))), "settings.expression");
    assert_eq!(
        field(ScheduleSettings::cron(&settings(&[("expression", "* * *")]))),
        "settings.expression"
    );
    assert_eq!(
        field(ScheduleSettings::cron(&settings(&[("expression", "99 * * * *")]))),
        "settings.expression"
    );
    assert_eq!(
        field(ScheduleSettings::cron(&settings(&[
            ("expression", "* * * * *"),
            ("timezone", "Mars/Olympus")
        ]))),
        "settings.timezone"
    );
    assert_eq!(
        field(ScheduleSettings::cron(&settings(&[
            ("expression", "* * * * *"),
            ("overlap", "sometimes")
        ]))),
        "settings.overlap"
    );
    assert_eq!(
        field(ScheduleSettings::interval(&settings(&[("every", "500ms")]), 0)),
        "settings.every"
    );
    assert_eq!(
        field(ScheduleSettings::cron(&settings(&[("expression", "0 3 31 2 *")]))),
        "settings.expression"
    );
    assert_eq!(
        field(ScheduleSettings::interval(
            &settings(&[("every", "1s"), ("jitter", "1h")]),
            0
        )),
        "settings.jitter"
    );
    let lower = ScheduleSettings::cron(&settings(&[("expression", "* * * * *"), ("timezone", "europe/berlin")]));
    assert!(lower.is_ok(), "time zone names are matched without regard to case");
    assert_eq!(
        field(ScheduleSettings::interval(&settings(&[("every", "ten")]), 0)),
        "settings.every"
    );
    assert_eq!(
        field(ScheduleSettings::interval(
            &settings(&[("every", "1s"), ("catchup_window", "1x")]),
            0
        )),
        "settings.catchup_window"
    );
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("f", "30s").unwrap(), 30_000);
    assert_eq!(parse_duration("f", "1h30m").unwrap(), 5_400_000);
    assert_eq!(parse_duration("f", "250ms").unwrap(), 250);
    assert_eq!(parse_duration("f", "0s").unwrap(), 0);
    for bad in ["", "s", "10", "1.5s", "-1s", "5y", "99999999999999999999s"] {
        assert!(parse_duration("f", bad).is_err(), "{bad}");
    }
}

#[test]
fn intervals_are_anchored_at_creation() {
    let every = ScheduleSettings::interval(&settings(&[("every", "30s")]), 1_000)
        .unwrap()
        .schedule;
    assert_eq!(every.next_after(0), Some(1_000));
    assert_eq!(every.next_after(1_000), Some(31_000));
    assert_eq!(every.next_after(30_999), Some(31_000));
}

#[test]
fn jitter_is_deterministic_and_bounded() {
    assert_eq!(jitter_ms("s", 5, 0), 0);
    let a = jitter_ms("default/p/nightly", 1_000, 10_000);
    assert_eq!(a, jitter_ms("default/p/nightly", 1_000, 10_000));
    assert!((0..10_000).contains(&a));
    let spread: std::collections::BTreeSet<i64> = (0..50).map(|i| jitter_ms("s", i * 1000, 10_000)).collect();
    assert!(spread.len() > 40, "jitter spreads fires: {spread:?}");
}

#[test]
fn catch_up_fires_inside_the_window_and_skips_older_instants() {
    let every = Schedule::Interval {
        every_ms: 2_000,
        anchor_ms: 0,
    };
    // Down from 10s to 30s, window 5s: 12..=24 are skipped (7), 26, 28, 30 fire.
    let caught = catch_up(&every, 10_000, 30_000, 5_000);
    assert_eq!(caught.fire, [26_000, 28_000, 30_000]);
    assert_eq!(caught.skipped, 7);
    assert_eq!(caught.last_skipped, Some(24_000));
    // Nothing missed.
    assert_eq!(catch_up(&every, 30_000, 31_000, 5_000), CatchUp::default());
    // Cron walks instant by instant.
    let cron_every_two = cron("*/2 * * * * *", "UTC");
    let caught = catch_up(
        &cron_every_two,
        utc("2026-01-01 00:00:10"),
        utc("2026-01-01 00:00:30"),
        5_000,
    );
    assert_eq!(caught.fire.len(), 3);
    assert_eq!(caught.skipped, 7);
}

#[test]
fn a_long_outage_is_counted_without_walking_every_instant() {
    let every = Schedule::Interval {
        every_ms: 1_000,
        anchor_ms: 0,
    };
    let day = 86_400_000;
    let caught = catch_up(&every, 0, 30 * day, 60_000);
    assert_eq!(caught.fire.len(), 61);
    assert_eq!(caught.skipped, (30 * day / 1_000 - 61) as u64);
}

proptest! {
    #[test]
    fn next_after_keeps_increasing_across_dst(
        start in 1_767_225_600_000i64..1_798_761_600_000i64,
        zone in prop::sample::select(vec!["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]),
        expression in prop::sample::select(vec!["30 2 * * *", "0 * * * *", "*/7 * * * *", "15 1,2,3 * * *", "0 0 12 * * SUN"]),
    ) {
        let schedule = cron(expression, zone);
        let mut t = start;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let next = schedule.next_after(t).unwrap();
            prop_assert!(next > t);
            prop_assert!(seen.insert(next), "an instant fired twice");
            t = next;
        }
    }

    #[test]
    fn catch_up_never_fires_outside_the_window_or_twice(
        last in 0i64..1_000_000, down in 0i64..1_000_000, window in 0i64..100_000, every in 1_000i64..50_000,
    ) {
        let schedule = Schedule::Interval { every_ms: every, anchor_ms: 0 };
        let now = last + down;
        let caught = catch_up(&schedule, last, now, window);
        let all = (last / every + 1..=now / every).count() as u64;
        prop_assert_eq!(caught.fire.len() as u64 + caught.skipped, all);
        for pair in caught.fire.windows(2) {
            prop_assert!(pair[0] < pair[1]);
        }
        for instant in &caught.fire {
            prop_assert!(*instant > last && *instant <= now && *instant >= now - window);
        }
    }
}
