//! Dispatch under faults on the Compose deployment (three state nodes, two schedulers, two executors),
//! bounded in time: a steady stream of runs started with request ids, whose task prints its run, task and
//! attempt and sleeps a little, while the test kills the Raft leader, kills the active scheduler, kills an
//! executor, cuts the other off the network long enough for its lease to run out, and restarts it. Then:
//! every acknowledged run reaches a final state, no request id has two runs, Docker started no attempt's
//! container twice (counted from Docker's own events, by the attempt labels), and every second attempt
//! records why the first did not do (LOST or FAILED, with a reason).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gofer_testkit::{TASK_IMAGE, wait_until};
use serde_json::Value;

use crate::chaos::{one_run_per_request, start_run};
use crate::deploy::{API, Deployment};

const PIPELINE: &str = "work";

#[test]
fn runs_end_once_each_while_nodes_schedulers_and_executors_fail() {
    Deployment::check(dispatch_chaos);
}

fn dispatch_chaos(deployment: &Deployment) -> Result<()> {
    let (_, cluster) = deployment.leader(1, &[1, 2, 3])?;
    // Docker's own record of container starts, followed live (its event history is a short ring buffer).
    let events_file = tempfile::NamedTempFile::new()?;
    let events = crate::ChildGuard(
        std::process::Command::new("docker")
            .args(["events", "--filter", "type=container", "--filter", "event=start"])
            .args(["--filter", &format!("label=dev.gofer.cluster={cluster}")])
            .args(["--format", "{{index .Actor.Attributes \"dev.gofer.attempt-key\"}}"])
            .stdout(events_file.reopen()?)
            .spawn()
            .context("docker events")?,
    );
    let pipeline = serde_json::json!({"id": PIPELINE, "tasks": [{
        "id": "a", "image": TASK_IMAGE,
        "command": ["sh", "-c", "echo run $GOFER_RUN task $GOFER_TASK attempt $GOFER_ATTEMPT; sleep 2"],
    }]});
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), pipeline.to_string())?;
    let path = file.path().to_str().unwrap_or_default().to_string();
    wait_until("the pipeline to register", Duration::from_secs(30), || {
        Ok(deployment
            .ctl_output(API, &["pipeline", "register", &path])?
            .status
            .success()
            .then_some(()))
    })?;

    // Run id by request id, for every start the cluster acknowledged.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut attempted = 0;
    let mut start_some = |count: usize, acked: &mut BTreeMap<String, u64>| {
        for _ in 0..count {
            attempted += 1;
            let request_id = format!("dispatch-chaos-{attempted}");
            if let Some(run) = start_run(
                deployment,
                attempted % 3 + 1,
                PIPELINE,
                &request_id,
                Instant::now() + Duration::from_secs(20),
            ) {
                acked.insert(request_id, run);
            }
        }
    };
    let mut faults = 0;
    start_some(6, &mut acked);

    // Kill the Raft leader, start runs, bring it back.
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    deployment.compose(&["kill", &format!("node{leader}")])?;
    faults += 1;
    start_some(6, &mut acked);
    deployment.compose(&["start", &format!("node{leader}")])?;

    // Kill the active scheduler, start runs, bring it back.
    let (active, _) = deployment.scheduler_lease(&[])?;
    deployment.compose(&["kill", &active])?;
    faults += 1;
    start_some(6, &mut acked);
    deployment.compose(&["start", &active])?;

    // Kill an executor while it runs attempts; they are LOST once its lease runs out and run again on
    // the other; when it comes back it removes the containers no live attempt owns.
    start_some(4, &mut acked);
    deployment.compose(&["kill", "executor"])?;
    faults += 1;
    start_some(6, &mut acked);
    deployment.compose(&["start", "executor"])?;

    // Cut the other executor off while it runs an attempt, for longer than its lease: its attempts are
    // LOST and retried on the first; when it is back it stops what it still ran and reports that.
    start_some(4, &mut acked);
    let executor_b = deployment.compose(&["ps", "-q", "executor-b"])?.trim().to_string();
    deployment.network(&["disconnect", &deployment.network_name(), &executor_b])?;
    faults += 1;
    let cut_at = Instant::now();
    start_some(4, &mut acked);
    // Its lease is 5 s; give the active scheduler time to see it run out.
    wait_until("executor-b's lease to run out", Duration::from_secs(30), || {
        Ok((cut_at.elapsed() > Duration::from_secs(8)).then_some(()))
    })?;
    deployment.network(&["connect", &deployment.network_name(), &executor_b])?;
    start_some(4, &mut acked);

    // Restart it.
    deployment.compose(&["restart", "executor-b"])?;
    faults += 1;
    start_some(6, &mut acked);

    // Every acknowledged run reaches a final state.
    let runs: Vec<u64> = acked.values().copied().collect();
    let tasks = wait_until("every acknowledged run to end", Duration::from_secs(180), || {
        let mut tasks = Vec::new();
        for run in &runs {
            let run_json = deployment.json(API, &["run", "get", PIPELINE, &run.to_string()])?;
            let state = run_json["state"].as_str().unwrap_or_default();
            if !matches!(state, "SUCCEEDED" | "FAILED" | "CANCELLED") {
                anyhow::bail!("run {run} is {state}");
            }
            let listed = deployment.json(API, &["task", "list", PIPELINE, &run.to_string()])?;
            tasks.extend(listed.as_array().cloned().unwrap_or_default());
        }
        Ok(Some(tasks))
    })?;

    // No request id has two runs, and each acknowledged one has its run.
    one_run_per_request(deployment, PIPELINE, &acked)?;

    // Docker started each attempt's container at most once, and every attempt that ran started one.
    let attempts_ran: usize = tasks
        .iter()
        .flat_map(|t| t["attempts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["state"] != "LOST")
        .count();
    let starts = wait_until("docker to report every start", Duration::from_secs(10), || {
        let mut starts: BTreeMap<String, usize> = BTreeMap::new();
        for key in std::fs::read_to_string(events_file.path())?
            .lines()
            .filter(|l| !l.is_empty())
        {
            *starts.entry(key.to_string()).or_default() += 1;
        }
        Ok((starts.len() >= attempts_ran).then_some(starts))
    })?;
    drop(events);
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "attempts whose container started twice: {twice:?}");

    // Every attempt after the first records why the one before it did not do.
    let (mut second_attempts, mut lost, mut late) = (0, 0, 0);
    for task in &tasks {
        let attempts: Vec<Value> = task["attempts"].as_array().cloned().unwrap_or_default();
        for pair in attempts.windows(2) {
            second_attempts += 1;
            let state = pair[0]["state"].as_str().unwrap_or_default();
            ensure!(
                matches!(state, "LOST" | "FAILED") && pair[0]["retried"] == true && pair[0]["reason"] != "",
                "attempt {} of {task} was retried without a recorded reason",
                pair[0]["attempt"]
            );
        }
        lost += attempts.iter().filter(|a| a["state"] == "LOST").count();
        late += attempts.iter().filter(|a| a["late_report"] != "").count();
        let last = task["attempt"].as_u64().unwrap_or(0);
        ensure!(
            attempts.iter().filter_map(|a| a["attempt"].as_u64()).eq(1..=last),
            "attempts out of order or missing: {task}"
        );
    }
    let succeeded = tasks.iter().filter(|t| t["state"] == "SUCCEEDED").count();
    eprintln!(
        "dispatch chaos: {attempted} runs started, {} acknowledged, all ended ({succeeded} succeeded), \
         {faults} faults injected, {} container starts, 0 attempts started twice, {second_attempts} retries \
         ({lost} attempts LOST, {late} of them reported by their executor on its return), 0 request ids \
         with two runs",
        acked.len(),
        starts.values().sum::<usize>()
    );
    ensure!(
        acked.len() * 2 >= attempted,
        "most starts were acknowledged: {} of {attempted}",
        acked.len()
    );
    Ok(())
}
