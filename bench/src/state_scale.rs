//! `state-scale`: how the replicated state's costs grow with what it holds, one decade at a time up to
//! 10,000 pipelines, 1,000,000 retained runs and 100,000 subscriptions.
//!
//! It builds the state in this process the way every node does, by applying commands with
//! `gofer_domain::State::apply` (each run assigned, started and finished, so it is a retained ended run
//! with one task; ten interval subscriptions per pipeline), and at each decade measures what a node pays:
//!
//! - resident memory per run (the process's RSS growth over the runs held);
//! - a clone of the whole state: what a snapshot cost under the state's lock before snapshots were built
//!   from a shadow copy (`store/state_machine.rs`), when no command could apply meanwhile; now a node pays
//!   it once, at start, and a snapshot stalls no apply;
//! - the snapshot's size and the time to encode it (serde JSON, as stored);
//! - the time to decode it, which a restarting node pays before it serves (a lower bound of restart to
//!   serving: the raft log after the snapshot is replayed too).
//!
//! The baseline is the same process's `Vec` of the same number of 64-byte records cloned and encoded, so
//! the figures read as multiples of the cheapest possible copy. It records `## state-scale` in
//! `bench/RESULTS.md` (release build only).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use gofer_domain::triggers::{Registration, SettingSpec};
use gofer_domain::{AttemptOutcome, AttemptRef, Command, PipelineConfig, State};

const SECTION_HEADING: &str = "## state-scale";

#[derive(Parser)]
#[command(about = "The replicated state's memory, snapshot clone, encode and decode costs by decade")]
struct Args {
    /// The largest decade, in retained runs (pipelines are a hundredth of it, subscriptions a tenth).
    #[arg(long, default_value_t = 1_000_000)]
    runs: u64,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm's resident field")?
        .parse()?;
    Ok(pages * 4096)
}

fn apply(state: &mut State, command: &Command) -> Result<()> {
    state
        .apply(command)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}: {command:?}"))
}

/// Grows `state` to `pipelines` pipelines of `runs_each` ended runs and 10 subscriptions each.
fn grow(state: &mut State, from: u64, pipelines: u64, runs_each: u64, at: &mut i64) -> Result<()> {
    for p in from..pipelines {
        *at += 1;
        let id = format!("p{p}");
        let json =
            format!(r#"{{"id": "{id}", "tasks": [{{"id": "a", "image": "gofer/toolbox:1", "command": ["true"]}}]}}"#);
        apply(
            state,
            &Command::RegisterPipeline {
                namespace: "default".into(),
                config: PipelineConfig::from_json(&json).map_err(|e| anyhow::anyhow!("{e}"))?,
                at: *at,
            },
        )?;
        for s in 0..10 {
            let mut settings = BTreeMap::new();
            settings.insert("every".to_string(), "1h".to_string());
            apply(
                state,
                &Command::CreateSubscription {
                    namespace: "default".into(),
                    pipeline: id.clone(),
                    label: format!("every-hour-{s}"),
                    extension: "interval".into(),
                    settings,
                    at: *at,
                },
            )?;
        }
        for run in 1..=runs_each {
            *at += 1;
            apply(
                state,
                &Command::StartRun {
                    namespace: "default".into(),
                    pipeline: id.clone(),
                    request_id: String::new(),
                    parameters: BTreeMap::new(),
                    retry_of: 0,
                    at: *at,
                },
            )?;
            let target = AttemptRef {
                namespace: "default".into(),
                pipeline: id.clone(),
                run,
                task: "a".into(),
            };
            for command in [
                Command::AssignAttempt {
                    target: target.clone(),
                    attempt: 1,
                    executor: "e1".into(),
                    node: 1,
                    scheduler: String::new(),
                    epoch: 0,
                    at: *at,
                },
                Command::AttemptStarted {
                    target: target.clone(),
                    attempt: 1,
                    executor: "e1".into(),
                    at: *at,
                },
                Command::AttemptFinished {
                    target,
                    attempt: 1,
                    executor: "e1".into(),
                    outcome: AttemptOutcome::Exited(0),
                    log_node: 0,
                    at: *at,
                },
            ] {
                apply(state, &command)?;
            }
        }
    }
    Ok(())
}

fn median_of_three(mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut samples = [f()?, f()?, f()?];
    samples.sort_unstable();
    Ok(samples[1])
}

struct Row {
    runs: u64,
    pipelines: u64,
    subscriptions: u64,
    rss_per_run: f64,
    clone: Duration,
    encode: Duration,
    size: usize,
    decode: Duration,
    baseline_clone: Duration,
    baseline_encode: Duration,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1000, "--runs must be at least 1000");
    let mut state = State::default();
    let mut at = 1_700_000_000_000i64;
    apply(
        &mut state,
        &Command::Init {
            cluster_id: "scale".into(),
            at,
        },
    )?;
    apply(
        &mut state,
        &Command::RegisterExtension {
            name: "interval".into(),
            builtin: true,
            registration: Registration {
                version: "1".into(),
                documentation: String::new(),
                settings: vec![SettingSpec {
                    name: "every".into(),
                    required: true,
                    description: String::new(),
                    secret: false,
                }],
                registered_at: at,
            },
            at,
        },
    )?;
    let base_rss = rss_bytes()?;
    let runs_each = 100;
    let mut rows = Vec::new();
    let mut pipelines = 0;
    let mut decade = 1000;
    while decade <= args.runs {
        let target = decade / runs_each;
        eprintln!("growing to {decade} runs ({target} pipelines)…");
        grow(&mut state, pipelines, target, runs_each, &mut at)?;
        pipelines = target;
        let rss = rss_bytes()?.saturating_sub(base_rss);
        let clone = median_of_three(|| {
            let began = Instant::now();
            let copy = state.clone();
            let took = began.elapsed();
            drop(copy);
            Ok(took)
        })?;
        let mut encoded = Vec::new();
        let encode = median_of_three(|| {
            let began = Instant::now();
            encoded = serde_json::to_vec(&state)?;
            Ok(began.elapsed())
        })?;
        let decode = median_of_three(|| {
            let began = Instant::now();
            let back: State = serde_json::from_slice(&encoded)?;
            let took = began.elapsed();
            drop(back);
            Ok(took)
        })?;
        let records: Vec<[u64; 8]> = (0..decade).map(|i| [i; 8]).collect();
        let baseline_clone = median_of_three(|| {
            let began = Instant::now();
            let copy = records.clone();
            let took = began.elapsed();
            drop(copy);
            Ok(took)
        })?;
        let baseline_encode = median_of_three(|| {
            let began = Instant::now();
            let bytes = serde_json::to_vec(&records)?;
            let took = began.elapsed();
            drop(bytes);
            Ok(took)
        })?;
        rows.push(Row {
            runs: decade,
            pipelines,
            subscriptions: pipelines * 10,
            rss_per_run: rss as f64 / decade as f64,
            clone,
            encode,
            size: encoded.len(),
            decode,
            baseline_clone,
            baseline_encode,
        });
        decade *= 10;
    }
    let mut table = String::new();
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
            r.runs,
            r.pipelines,
            r.subscriptions,
            r.rss_per_run,
            gofer_bench::millis(r.clone),
            gofer_bench::millis(r.baseline_clone),
            r.size as f64 / (1024.0 * 1024.0),
            gofer_bench::millis(r.encode),
            gofer_bench::millis(r.baseline_encode),
            gofer_bench::millis(r.decode),
        ));
    }
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = format!(
        "{SECTION_HEADING}\n\n\
         The replicated state grown by applying commands with `State::apply`, as every node does: per pipeline one \
         version, ten interval subscriptions and 100 retained runs, each assigned, started and finished (one task). At \
         each decade: resident memory per run (RSS growth over the runs held, for one copy: a state node holds two, \
         the applied state and the shadow its snapshots are built from), a clone of the whole state (what every \
         snapshot cost under the state's lock, stalling every write, until snapshots were built from the shadow; \
         now paid once at start), the snapshot's encoding \
         (serde JSON, as stored) and its decoding (what a restarting node pays before it serves, before the log after \
         the snapshot). Baseline in the same process: a `Vec` of as many 64-byte records, cloned and encoded. Medians \
         of three. A running node's writes while it snapshots, its memory and its restart to serving are in \
         `snapshot-stall`; fire skew while a large state snapshots is not measured yet.\n\n\
         - Date: {date}\n\
         - Revision: {revision} ({profile} build)\n\n\
         | runs | pipelines | subscriptions | RSS bytes per run | whole-state clone ms | baseline clone ms | snapshot MiB | encode ms | baseline encode ms | decode ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {table}",
        date = gofer_bench::utc_timestamp(SystemTime::now()),
        profile = if cfg!(debug_assertions) { "debug" } else { "release" },
    );
    gofer_bench::publish(SECTION_HEADING, &report, !cfg!(debug_assertions) && !args.no_record)
}
