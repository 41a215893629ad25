//! Fuzz targets for the domain's parsers of untrusted text (`gofer_fuzzkit` drives them: a few hundred
//! seeded cases under `cargo test`, random ones for a set time under `bench/fuzz.sh`): the pipeline JSON,
//! the persisted command format (and applying what it decodes), and the cron and interval settings.
//! Each must answer every input without a panic, and what it accepts must read back the same.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use gofer_fuzzkit::{fuzz, json_input, text};
use proptest::prelude::*;

use crate::schedule::{Schedule, ScheduleSettings, catch_up, parse_duration};
use crate::{Command, ErrorKind, PipelineConfig, State};

const GOLDEN: &str = include_str!("golden/commands.jsonl");

/// The golden log's commands, each as its bytes: the seeds the command target edits.
fn golden_lines() -> Vec<Vec<u8>> {
    GOLDEN.lines().map(|line| line.as_bytes().to_vec()).collect()
}

/// The state the golden log leaves, where each decoded command is applied.
fn golden_state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut state = State::default();
        for line in GOLDEN.lines() {
            let command: Command = serde_json::from_str(line).expect("a golden command");
            let _ = state.apply(&command);
        }
        state
    })
}

/// The pipeline format's field names and the words its values use, right and wrong.
const PIPELINE_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "parallelism",
    "keep_runs",
    "tasks",
    "image",
    "command",
    "env",
    "depends_on",
    "retries",
    "backoff",
    "timeout",
    "cpu",
    "memory",
    "user",
    "inject_api_token",
    "privileged",
    "labels",
    "network_mode",
    "mounts",
    "x",
];
const PIPELINE_WORDS: &[&str] = &[
    "a",
    "b",
    "p",
    "img:1",
    "success",
    "failure",
    "always",
    "1s",
    "1m",
    "0s",
    "366d",
    "999999999999d",
    "0.5",
    "64MiB",
    "6MiB",
    "1GiB",
    "-1",
    "1e309",
    "root",
    "1000:1000",
    "UPPER",
    "a/b",
    "..",
    "",
    " ",
    "\u{0}",
    "secret{{k}}",
    "global_secret{{k}}",
];

fn pipeline_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = GOLDEN
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|command| command.get("config").map(|config| config.to_string().into_bytes()))
        .collect();
    seeds.push(br#"{"id":"p","tasks":[{"id":"a","image":"i"}]}"#.to_vec());
    seeds
}

/// Reads `input` as the pipeline format, as goferctl and the api do. What it accepts writes back to
/// JSON that reads as the same pipeline; what it refuses is InvalidArgument naming a field.
fn pipeline_json(input: Vec<u8>) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(&input);
    match PipelineConfig::parse_json(&text) {
        Err(err) => {
            prop_assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{}", err);
        }
        Ok(config) => {
            gofer_fuzzkit::accepted();
            let again = PipelineConfig::parse_json(&config.to_json_pretty());
            prop_assert_eq!(again.as_ref().ok(), Some(&config), "{:?}", again);
            if let Err(err) = config.validate() {
                prop_assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{}", err);
            }
        }
    }
    Ok(())
}

/// Decodes `input` as one persisted command, as a node reads its log. What decodes encodes to bytes
/// that decode to the same command; applied to a state with history it either changes the state or is
/// refused and changes nothing.
fn command_decoder(input: Vec<u8>) -> Result<(), TestCaseError> {
    let Ok(command) = serde_json::from_slice::<Command>(&input) else {
        return Ok(());
    };
    gofer_fuzzkit::accepted();
    let encoded = serde_json::to_vec(&command).expect("a command always serializes");
    let again: Result<Command, _> = serde_json::from_slice(&encoded);
    prop_assert_eq!(again.as_ref().ok(), Some(&command), "{:?}", again);
    let mut state = golden_state().clone();
    if state.apply(&command).is_err() {
        prop_assert!(&state == golden_state(), "a refused command changed the state");
    }
    Ok(())
}

/// The settings cron and interval subscriptions take, and the words their values use.
const SETTING_KEYS: &[&str] = &[
    "every",
    "expression",
    "timezone",
    "jitter",
    "overlap",
    "catchup_window",
    "secret",
];
const SETTING_WORDS: &[&str] = &[
    "*",
    "*/",
    "/",
    "-",
    ",",
    " ",
    "?",
    "L",
    "W",
    "#",
    "0",
    "1",
    "5",
    "7",
    "12",
    "23",
    "29",
    "30",
    "31",
    "59",
    "60",
    "2",
    "MON",
    "FRI",
    "SUN",
    "JAN",
    "FEB",
    "DEC",
    "@daily",
    "@hourly",
    "@yearly",
    "@weekly",
    "@monthly",
    "@every",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "366d",
    "9223372036854775807",
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "allow",
    "skip",
    "buffer_one",
    "cancel_other",
];
/// Time zones with daylight saving (half-hour ones and one in the south), without, and odd offsets.
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Apia",
    "Africa/Casablanca",
    "europe/london",
    "Etc/GMT+12",
    "Pacific/Kiritimati",
];

/// Cron expressions of 4 to 7 fields, each field a cron form (`*`, `*/n`, `a-b`, `a,b`, `L`, names) with
/// numbers in and out of range.
fn cron_expression() -> impl Strategy<Value = String> {
    let number = prop_oneof![8 => 0u32..24, 2 => 0u32..62, 1 => Just(99u32), 1 => Just(4_294_967_295u32)];
    let name = proptest::sample::select(
        &[
            "MON", "sun", "FRI", "JAN", "dec", "L", "W", "?", "LW", "5L", "1W", "2#3",
        ][..],
    );
    let field = prop_oneof![
        Just("*".to_string()),
        number.clone().prop_map(|n| n.to_string()),
        number.clone().prop_map(|n| format!("*/{n}")),
        (number.clone(), number.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (number.clone(), number.clone(), number.clone()).prop_map(|(a, b, c)| format!("{a}-{b}/{c}")),
        (number.clone(), number).prop_map(|(a, b)| format!("{a},{b}")),
        name.prop_map(str::to_string),
    ];
    let field = prop_oneof![3 => Just("*".to_string()), 5 => field];
    let count = prop_oneof![4 => Just(5usize), 4 => Just(6usize), 1 => 4usize..8];
    let fields = count
        .prop_flat_map(move |n| proptest::collection::vec(field.clone(), n))
        .prop_map(|fields| fields.join(" "));
    let shorthand = proptest::sample::select(
        &[
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@reboot",
            "@every 5m",
        ][..],
    )
    .prop_map(str::to_string);
    prop_oneof![6 => fields, 1 => shorthand]
}

/// Durations such as `1h30m`: one to three numbers with units, some of them far too large.
fn duration() -> impl Strategy<Value = String> {
    let number = prop_oneof![0u64..100, 0u64..100_000, any::<u64>()];
    let unit = proptest::sample::select(&["ms", "s", "m", "h", "d", "", "y", "S"][..]);
    proptest::collection::vec((number, unit), 1..4)
        .prop_map(|parts| parts.into_iter().map(|(n, unit)| format!("{n}{unit}")).collect())
}

/// A subscription's settings and the times they are read at.
fn schedule_input() -> impl Strategy<Value = (BTreeMap<String, String>, i64, i64, i64)> {
    let anything = || text(SETTING_WORDS);
    let zone = prop_oneof![
        4 => proptest::sample::select(ZONES).prop_map(str::to_string),
        1 => anything(),
    ];
    let overlap = prop_oneof![
        4 => proptest::sample::select(&["allow", "skip", "buffer_one", "cancel_other"][..]).prop_map(str::to_string),
        1 => anything(),
    ];
    let settings = (
        proptest::option::weighted(0.7, prop_oneof![4 => duration(), 1 => anything()]),
        proptest::option::weighted(0.7, prop_oneof![4 => cron_expression(), 1 => anything()]),
        proptest::option::weighted(0.4, zone),
        proptest::option::weighted(0.3, prop_oneof![4 => duration(), 1 => anything()]),
        proptest::option::weighted(0.3, overlap),
        proptest::option::weighted(0.3, prop_oneof![4 => duration(), 1 => anything()]),
        proptest::collection::btree_map(
            proptest::sample::select(SETTING_KEYS).prop_map(str::to_string),
            anything(),
            0..2,
        ),
    )
        .prop_map(
            |(every, expression, timezone, jitter, overlap, catchup_window, mut settings)| {
                let named = [
                    ("every", every),
                    ("expression", expression),
                    ("timezone", timezone),
                    ("jitter", jitter),
                    ("overlap", overlap),
                    ("catchup_window", catchup_window),
                ];
                for (key, value) in named {
                    if let Some(value) = value {
                        settings.insert(key.to_string(), value);
                    }
                }
                settings
            },
        );
    // Between 1970 and about 2100, as the clock gives them, around the instants a DST change happens.
    let instant = prop_oneof![0i64..4_102_444_800_000, 1_700_000_000_000i64..1_800_000_000_000];
    // The last fire a little before now, as a host that was down a while sees it.
    let back = prop_oneof![0i64..120_000, 0i64..3 * 86_400_000];
    (settings, instant.clone(), instant, back)
}

/// Parses cron and interval settings as the api (on create) and the extension host (to fire) do. A
/// schedule that parses fires strictly after any instant it is asked about, an interval within one
/// period, and a catch-up never counts an instant twice.
fn schedule_settings(
    (settings, anchor, now, back): (BTreeMap<String, String>, i64, i64, i64),
) -> Result<(), TestCaseError> {
    for value in settings.values() {
        if let Ok(ms) = parse_duration("settings.x", value) {
            prop_assert!((0..=366 * 86_400_000).contains(&ms), "{} read as {}", value, ms);
        }
    }
    for extension in ["cron", "interval", "webhook"] {
        let _ = crate::triggers::check_new_subscription(extension, &settings);
    }
    let parsed = [
        ScheduleSettings::interval(&settings, anchor),
        ScheduleSettings::cron(&settings),
    ];
    for parsed in parsed.into_iter().flatten() {
        gofer_fuzzkit::accepted();
        let schedule = &parsed.schedule;
        if let Some(next) = schedule.next_after(now) {
            prop_assert!(next > now, "{:?} after {} fires at {}", schedule, now, next);
            if let Schedule::Interval { every_ms, anchor_ms } = schedule
                && now >= *anchor_ms
            {
                prop_assert!(
                    next - now <= *every_ms,
                    "{:?} after {} fires at {}",
                    schedule,
                    now,
                    next
                );
            }
        }
        let last = now - back;
        let caught = catch_up(schedule, last, now, parsed.catchup_window_ms);
        for fired in &caught.fire {
            prop_assert!(
                *fired > last && *fired <= now,
                "{:?} caught up {} outside ({}, {}]",
                schedule,
                fired,
                last,
                now
            );
        }
        prop_assert!(
            caught.fire.windows(2).all(|w| w[0] < w[1]),
            "{:?}: {:?}",
            schedule,
            caught
        );
    }
    Ok(())
}

#[test]
fn fuzz_pipeline_json() {
    fuzz(
        "pipeline-json",
        json_input(pipeline_seeds(), PIPELINE_KEYS, PIPELINE_WORDS),
        pipeline_json,
    );
}

#[test]
fn fuzz_command_decoder() {
    let keys: &'static [&'static str] = &[
        "type",
        "namespace",
        "pipeline",
        "run",
        "task",
        "at",
        "config",
        "commands",
        "command",
        "fires",
        "target",
        "attempt",
        "executor",
        "epoch",
        "role",
        "holder",
        "name",
        "settings",
        "label",
        "extension",
        "tasks",
        "id",
        "image",
        "reason",
        "exit_code",
        "parameters",
        "request_id",
        "retry_of",
        "ttl_millis",
        "executors",
    ];
    let words: &'static [&'static str] = &[
        "init",
        "create_namespace",
        "register_pipeline",
        "start_run",
        "cancel_run",
        "batch",
        "fenced",
        "assign_attempt",
        "attempt_started",
        "attempt_finished",
        "fire",
        "create_subscription",
        "delete_subscription",
        "register_extension",
        "install_extension",
        "create_token",
        "delete_token",
        "renew_executors",
        "acquire_lease",
        "executor_lost",
        "set_task_limits",
        "default",
        "p",
        "a",
        "e1",
        "s1",
        "scheduler",
        "extension_host",
        "interval",
        "webhook",
        "tick",
        "success",
    ];
    fuzz(
        "command-decoder",
        json_input(golden_lines(), keys, words),
        command_decoder,
    );
}

#[test]
fn fuzz_schedule_settings() {
    fuzz("schedule-settings", schedule_input(), schedule_settings);
}
