//! The event stream: a follower that disconnects and resumes from its last id sees every event exactly
//! once, also across a restart of goferd and while goferd restarts under it; trigger decisions are events;
//! retention prunes, and resuming after a pruned event is refused rather than skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gofer_testkit::{GoferDev, task_image, wait_until};
use serde_json::Value;

use crate::{ChildGuard, pipeline, start, stderr, wait_for_end};

/// A running `goferctl event list --follow -o json`, its lines parsed as they come.
struct Follower {
    _child: ChildGuard,
    lines: Receiver<Value>,
}

impl Follower {
    fn start(dev: &GoferDev, extra: &[&str]) -> Result<Follower> {
        let mut child = dev
            .goferctl()
            .args(["event", "list", "--follow", "-o", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    break;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Ok(Follower {
            _child: ChildGuard(child),
            lines,
        })
    }

    /// Collects events into `seen` until one matches `until`, within 60 s.
    fn read_until(&self, seen: &mut Vec<Value>, what: &str, until: impl Fn(&Value) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => {
                    let done = until(&event);
                    seen.push(event);
                    if done {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("no event {what} within 60 s; saw {seen:#?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("the follower ended before {what}; saw {seen:#?}"),
            }
        }
    }
}

fn run_ended(run: u64) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == "run" && e["run"]["run_id"] == run && e["run"]["state"] == "SUCCEEDED"
}

/// The ids of `events`, checked to count up by one from 1 with none twice.
fn check_each_once(events: &[Value]) -> Result<Vec<u64>> {
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap_or(0)).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    if ids != expected {
        bail!("event ids are not 1..={} each once: {ids:?}", ids.len());
    }
    Ok(ids)
}

/// Each run's states in the order its events told them.
fn run_states(events: &[Value]) -> BTreeMap<u64, Vec<String>> {
    let mut states: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for event in events.iter().filter(|e| e["kind"] == "run") {
        let run = event["run"]["run_id"].as_u64().unwrap_or(0);
        states
            .entry(run)
            .or_default()
            .push(event["run"]["state"].as_str().unwrap_or("").to_string());
    }
    states
}

fn start_and_wait(dev: &GoferDev, pipeline: &str) -> Result<u64> {
    let run = dev.ctl_ok(&["run", "start", pipeline])?.trim().to_string();
    let ended = wait_for_end(dev, pipeline, &run)?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    Ok(run.parse()?)
}

#[test]
fn a_follower_that_disconnects_and_resumes_from_its_last_id_sees_every_event_exactly_once() -> Result<()> {
    let mut dev = start()?;
    dev.register(&pipeline(
        "evented",
        &[("one", "echo one", &[]), ("two", "echo two", &[("one", "success")])],
    ))?;
    let mut seen = Vec::new();

    // Follow from the start, see run 1 through, then disconnect.
    let follower = Follower::start(&dev, &[])?;
    let first = start_and_wait(&dev, "evented")?;
    follower.read_until(&mut seen, "run 1 SUCCEEDED", run_ended(first))?;
    drop(follower);
    let last = seen.last().and_then(|e| e["id"].as_u64()).context("an event id")?;

    // While nobody follows: a run, and a restart of goferd (events are in the replicated state).
    let second = start_and_wait(&dev, "evented")?;
    dev.restart()?;

    // Resume from the last id seen: what happened meanwhile arrives, then what happens live.
    let follower = Follower::start(&dev, &["--from", &last.to_string()])?;
    follower.read_until(&mut seen, "run 2 SUCCEEDED", run_ended(second))?;
    let third = start_and_wait(&dev, "evented")?;
    follower.read_until(&mut seen, "run 3 SUCCEEDED", run_ended(third))?;
    drop(follower);

    check_each_once(&seen)?;
    let states = run_states(&seen);
    for run in [first, second, third] {
        assert_eq!(
            states[&run],
            ["PENDING", "RUNNING", "SUCCEEDED"],
            "run {run}: {seen:#?}"
        );
        for task in ["one", "two"] {
            let told: Vec<&str> = seen
                .iter()
                .filter(|e| e["kind"] == "task" && e["task"]["run_id"] == run && e["task"]["task_id"] == task)
                .map(|e| e["task"]["state"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(told, ["RUNNING", "SUCCEEDED"], "run {run} task {task}");
        }
    }
    // What the follower saw is what the server keeps, and a plain list ends after the newest.
    let listed: Vec<Value> = dev
        .ctl_ok(&["event", "list", "-o", "json"])?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(listed, seen);
    let tail = dev.ctl_ok(&["event", "list", "--from", &(seen.len() as u64 - 1).to_string()])?;
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.contains("run 3 SUCCEEDED"), "{tail}");
    // An id the cluster has not reached is refused, naming the field.
    let ahead = dev.ctl(&["event", "list", "--from", "1000000"])?;
    assert_eq!(ahead.status.code(), Some(1));
    assert!(
        stderr(&ahead).contains("after_id: there is no event 1000000 yet"),
        "{}",
        stderr(&ahead)
    );
    Ok(())
}

#[test]
fn a_follower_rides_through_a_restart_of_goferd_without_losing_or_repeating_an_event() -> Result<()> {
    let mut dev = start()?;
    dev.register(&pipeline("steady", &[("only", "echo hi", &[])]))?;
    let mut seen = Vec::new();
    let follower = Follower::start(&dev, &[])?;
    let first = start_and_wait(&dev, "steady")?;
    follower.read_until(&mut seen, "run 1 SUCCEEDED", run_ended(first))?;
    // goferd comes back on another port; the follower reads the client config again and resumes.
    dev.restart()?;
    let second = start_and_wait(&dev, "steady")?;
    follower.read_until(&mut seen, "run 2 SUCCEEDED", run_ended(second))?;
    check_each_once(&seen)?;
    let states = run_states(&seen);
    assert_eq!(states[&second], ["PENDING", "RUNNING", "SUCCEEDED"], "{seen:#?}");
    Ok(())
}

#[test]
fn trigger_decisions_are_events_and_filters_keep_one_pipeline() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline("ticking", &[("only", "sleep 3", &[])]))?;
    dev.register(&pipeline("quiet", &[("only", "echo hi", &[])]))?;
    start_and_wait(&dev, "quiet")?;
    dev.ctl_ok(&[
        "subscription",
        "create",
        "ticking",
        "interval",
        "every-second",
        "-s",
        "every=1s",
        "-s",
        "overlap=skip",
    ])?;
    // Within a few seconds the interval fires, starts a run, and skips the fires that overlap it.
    let events = wait_until("a started and a skipped fire", Duration::from_secs(30), || {
        let events: Vec<Value> = dev
            .ctl_ok(&["event", "list", "--pipeline", "ticking", "-o", "json"])?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let decided = |d: &str| events.iter().any(|e| e["kind"] == "fire" && e["fire"]["decision"] == d);
        Ok((decided("STARTED") && decided("SKIPPED")).then_some(events))
    })?;
    dev.ctl_ok(&["subscription", "delete", "ticking", "every-second"])?;
    assert!(events.iter().all(|e| e["pipeline_id"] == "ticking"), "{events:#?}");
    let started = events
        .iter()
        .find(|e| e["kind"] == "fire" && e["fire"]["decision"] == "STARTED")
        .context("a started fire")?;
    assert_eq!(started["fire"]["extension"], "interval");
    assert_eq!(started["fire"]["subscription_label"], "every-second");
    let run = started["fire"]["run_id"].as_u64().context("the fire's run")?;
    let made = events
        .iter()
        .find(|e| e["kind"] == "run" && e["run"]["run_id"] == run && e["run"]["state"] == "PENDING")
        .context("the fired run's PENDING event")?;
    assert!(
        made["run"]["reason"].as_str().unwrap_or("").contains("every-second"),
        "{made}"
    );
    let skipped = events
        .iter()
        .find(|e| e["kind"] == "fire" && e["fire"]["decision"] == "SKIPPED")
        .context("a skipped fire")?;
    assert!(
        skipped["fire"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("overlap skip"),
        "{skipped}"
    );
    // The table says the same for people.
    let table = dev.ctl_ok(&["event", "list", "--pipeline", "ticking"])?;
    assert!(table.contains("fire of every-second (interval) STARTED run"), "{table}");
    // A pipeline filter needs no -n (it means the default namespace); other pipelines' events are left out
    // of it, and all of them are in the unfiltered list.
    let all = dev.ctl_ok(&["event", "list"])?;
    assert!(all.contains("default/quiet"), "{all}");
    assert!(!table.contains("default/quiet"), "{table}");
    Ok(())
}

#[test]
fn events_past_the_retention_are_pruned_and_resuming_after_them_is_refused() -> Result<()> {
    task_image()?;
    let dev = GoferDev::start_with_args(gofer_testkit::bin_dir()?, "info", &["--event-retention", "1s"])?;
    dev.register(&pipeline("brief", &[("only", "echo hi", &[])]))?;
    start_and_wait(&dev, "brief")?;
    // Pruning goes by the times commands carry: each new run's events push the oldest out once they are
    // older than a second.
    let refused = wait_until("event 1 to be pruned", Duration::from_secs(30), || {
        dev.ctl_ok(&["run", "start", "brief"])?;
        let resumed = dev.ctl(&["event", "list", "--from", "1"])?;
        Ok((!resumed.status.success()).then_some(resumed))
    })?;
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(message.contains("the events after 1 were pruned"), "{message}");
    assert!(message.contains("(OutOfRange)"), "{message}");
    let kept: Vec<Value> = dev
        .ctl_ok(&["event", "list", "-o", "json"])?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let ids: Vec<u64> = kept.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.first().is_some_and(|&first| first > 2), "{ids:?}");
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "kept ids have no gaps: {ids:?}"
    );
    // A bad retention stops goferd before it starts, naming the flag's field.
    let bad = std::process::Command::new(gofer_testkit::bin_dir()?.join("goferd"))
        .args(["dev", "--event-retention=0s"])
        .output()?;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("event_retention"), "{}", stderr(&bad));
    Ok(())
}
