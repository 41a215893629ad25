//! Chaos on the Compose cluster, bounded in time: a client keeps creating namespaces (one id each, retried
//! until it is acknowledged or refused as existing), starting runs with request ids (retried until
//! acknowledged) and registering pipelines (once each, not retried) while the test kills the leader, cuts a
//! node off the network, pauses one, restarts one and kills the active scheduler. Then every node must hold
//! every acknowledged write exactly once, all nodes must agree, every acknowledged run must end, no request
//! id may have two runs, and no two schedulers may have acted in one lease epoch. It also puts objects
//! (retried until acknowledged) and every run writes a log of its own: each acknowledged object and every
//! run's log must then read back byte for byte through every node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use gofer_testkit::wait_until;

use crate::deploy::{API, Deployment};
use crate::pipeline;

/// Creates namespace `id` through `node`, retrying through the other nodes until the cluster says it
/// exists; returns whether it was acknowledged within `deadline`.
fn write(deployment: &Deployment, first: usize, id: &str, deadline: Instant) -> bool {
    let mut node = first;
    while Instant::now() < deadline {
        match deployment.ctl_output(node, &["namespace", "create", id]) {
            Ok(output) if output.status.success() => return true,
            // A retry of a write that did commit: the write is there, once.
            Ok(output) if String::from_utf8_lossy(&output.stderr).contains("AlreadyExists") => return true,
            _ => node = node % 3 + 1,
        }
    }
    false
}

/// Starts a run of `pipeline` with `request_id` through node `first`, retrying through the other nodes
/// until one acknowledges it; returns the run id, or `None` if none did within `deadline`.
pub(crate) fn start_run(
    deployment: &Deployment,
    first: usize,
    pipeline: &str,
    request_id: &str,
    deadline: Instant,
) -> Option<u64> {
    let mut node = first;
    while Instant::now() < deadline {
        match deployment.ctl_output(node, &["run", "start", pipeline, "--request-id", request_id]) {
            Ok(output) if output.status.success() => {
                return String::from_utf8_lossy(&output.stdout).trim().parse().ok();
            }
            _ => node = node % 3 + 1,
        }
    }
    None
}

/// Checks that no request id has two runs of `pipeline`, and that each acknowledged request id (run id by
/// request id) has exactly its run.
pub(crate) fn one_run_per_request(
    deployment: &Deployment,
    pipeline: &str,
    acked: &BTreeMap<String, u64>,
) -> Result<()> {
    let listed = deployment.json(API, &["run", "list", pipeline])?;
    let mut by_request: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for run in listed.as_array().into_iter().flatten() {
        let request_id = run["request_id"].as_str().unwrap_or_default().to_string();
        by_request
            .entry(request_id)
            .or_default()
            .push(run["id"].as_u64().unwrap_or(0));
    }
    let duplicated: Vec<_> = by_request.iter().filter(|(_, runs)| runs.len() > 1).collect();
    anyhow::ensure!(duplicated.is_empty(), "request ids with two runs: {duplicated:?}");
    for (request_id, run) in acked {
        anyhow::ensure!(
            by_request.get(request_id) == Some(&vec![*run]),
            "request {request_id}: {by_request:?}"
        );
    }
    Ok(())
}

/// Puts object `key` holding `data` through node `first`, retrying through the other nodes until one
/// acknowledges it (a put of the same bytes again changes nothing); returns whether one did by `deadline`.
fn put_object(deployment: &Deployment, first: usize, key: &str, data: &[u8], deadline: Instant) -> bool {
    let Ok(file) = tempfile::NamedTempFile::new() else {
        return false;
    };
    if std::fs::write(file.path(), data).is_err() {
        return false;
    }
    let path = file.path().to_str().unwrap_or_default();
    let mut node = first;
    while Instant::now() < deadline {
        match deployment.ctl_output(node, &["object", "put", "chaos", key, path]) {
            Ok(output) if output.status.success() => return true,
            _ => node = node % 3 + 1,
        }
    }
    false
}

/// The bytes of chaos object `n`: 100 kB of its own.
fn object_bytes(n: usize) -> Vec<u8> {
    (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(n as u32 * 7919) >> 24) as u8)
        .collect()
}

/// What the client got acknowledged.
#[derive(Default)]
struct Acknowledged {
    /// Objects by key, with the number their bytes were made from.
    objects: BTreeMap<String, usize>,
    namespaces: BTreeSet<String>,
    /// Run id by request id.
    runs: BTreeMap<String, u64>,
    /// Pipelines registered once each.
    pipelines: BTreeSet<String>,
    attempted: usize,
}

#[test]
fn acknowledged_writes_survive_a_killed_leader_a_partition_a_pause_and_a_restart() {
    Deployment::check(chaos);
}

fn chaos(deployment: &Deployment) -> Result<()> {
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    let json_path = tempfile::NamedTempFile::new()?;
    // Each run's log is its own: its id, then numbers enough to span several log messages.
    let script = "echo \"chaos run $GOFER_RUN_ID\"; seq 1 5000";
    std::fs::write(json_path.path(), pipeline("chaos", &[("a", script, &[])]))?;
    wait_until("the pipeline to register", Duration::from_secs(30), || {
        let path = json_path.path().to_str().unwrap_or_default();
        Ok(deployment
            .ctl_output(API, &["pipeline", "register", path])?
            .status
            .success()
            .then_some(()))
    })?;
    let pipeline_json = |id: &str| pipeline(id, &[("a", "true", &[])]);
    let mut acked = Acknowledged::default();
    let mut faults = 0;
    let mut n = 0;
    let mut write_some = |deployment: &Deployment, count: usize, acked: &mut Acknowledged| {
        for _ in 0..count {
            n += 1;
            let node = n % 3 + 1;
            let deadline = Instant::now() + Duration::from_secs(20);
            let id = format!("chaos-{n}");
            acked.attempted += 1;
            if write(deployment, node, &id, deadline) {
                acked.namespaces.insert(id);
            }
            // A run start is retried with its request id until acknowledged: a retry returns the run
            // the first try may have started. An acknowledged run must end.
            if n % 2 == 0 {
                let request_id = format!("chaos-run-{n}");
                acked.attempted += 1;
                if let Some(run) = start_run(deployment, node, "chaos", &request_id, deadline) {
                    acked.runs.insert(request_id, run);
                }
            }
            if n % 2 == 1 {
                let key = format!("chaos-object-{n}");
                acked.attempted += 1;
                if put_object(deployment, node, &key, &object_bytes(n), deadline) {
                    acked.objects.insert(key, n);
                }
            }
            // A registration is sent once and not retried (a retry would make a second version), so an
            // acknowledged one must be there at version 1: the log applied it once.
            if n % 3 == 0 {
                let id = format!("chaos-p-{n}");
                let file = tempfile::NamedTempFile::new().expect("a temp file");
                std::fs::write(file.path(), pipeline_json(&id)).expect("writing a pipeline");
                let path = file.path().to_str().unwrap_or_default();
                acked.attempted += 1;
                if deployment
                    .ctl_output(node, &["pipeline", "register", path])
                    .is_ok_and(|o| o.status.success())
                {
                    acked.pipelines.insert(id);
                }
            }
        }
    };
    write_some(deployment, 10, &mut acked);

    // Kill the leader outright, write on, bring it back.
    deployment.compose(&["kill", &format!("node{leader}")])?;
    faults += 1;
    write_some(deployment, 10, &mut acked);
    deployment.compose(&["start", &format!("node{leader}")])?;

    // Cut a follower off the network, write on, reconnect it.
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    let cut = [1u64, 2, 3].into_iter().find(|n| *n != leader).expect("a follower");
    deployment.network(&["disconnect", &deployment.network_name(), &deployment.container(cut)?])?;
    faults += 1;
    write_some(deployment, 10, &mut acked);
    deployment.network(&["connect", &deployment.network_name(), &deployment.container(cut)?])?;

    // Pause a node (it stops answering but keeps its sockets), write on, unpause it.
    deployment.compose(&["pause", "node2"])?;
    faults += 1;
    write_some(deployment, 10, &mut acked);
    deployment.compose(&["unpause", "node2"])?;

    // Restart a node.
    deployment.compose(&["restart", "node3"])?;
    faults += 1;
    write_some(deployment, 10, &mut acked);

    // Kill the scheduler that holds the lease; the standby takes over.
    let (active, _) = deployment.scheduler_lease(&[])?;
    deployment.compose(&["kill", &active])?;
    faults += 1;
    write_some(deployment, 10, &mut acked);
    deployment.compose(&["start", &active])?;

    // No request id has two runs, and every acknowledged one has its run.
    one_run_per_request(deployment, "chaos", &acked.runs)?;
    let runs: BTreeSet<u64> = acked.runs.values().copied().collect();
    assert_eq!(
        runs.len(),
        acked.runs.len(),
        "two request ids were answered with one run"
    );

    // Every acknowledged run ends, and each lease epoch's assignments come from one scheduler.
    let tasks = wait_until("every acknowledged run to end", Duration::from_secs(120), || {
        let mut tasks = Vec::new();
        for run in &runs {
            let listed = deployment.json(API, &["task", "list", "chaos", &run.to_string()])?;
            let listed = listed.as_array().cloned().unwrap_or_default();
            if let Some(unfinished) = listed.iter().find(|t| t["state"] != "SUCCEEDED") {
                anyhow::bail!("run {run} has not succeeded: {unfinished}");
            }
            tasks.extend(listed);
        }
        Ok(Some(tasks))
    })?;
    let mut by_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for task in &tasks {
        let epoch = task["scheduler_epoch"].as_u64().unwrap_or(0);
        let scheduler = task["scheduler"].as_str().unwrap_or_default().to_string();
        assert!(
            epoch > 0 && !scheduler.is_empty(),
            "an assignment without a lease: {task}"
        );
        by_epoch.entry(epoch).or_default().insert(scheduler);
    }
    for (epoch, schedulers) in &by_epoch {
        assert_eq!(
            schedulers.len(),
            1,
            "schedulers {schedulers:?} both acted in epoch {epoch}"
        );
    }

    // Every node serves every acknowledged write exactly once, and all agree.
    let mut views = Vec::new();
    for node in 1..=3usize {
        let view = wait_until(
            &format!("node {node} to hold every acknowledged write"),
            Duration::from_secs(90),
            || {
                let list = deployment.json(node, &["namespace", "list"])?;
                let ids: Vec<String> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["id"].as_str().map(str::to_string))
                    .collect();
                Ok(acked.namespaces.iter().all(|id| ids.contains(id)).then_some(ids))
            },
        )?;
        let unique: BTreeSet<&String> = view.iter().collect();
        assert_eq!(unique.len(), view.len(), "node {node} lists a namespace twice");
        let pipelines = deployment.json(node, &["pipeline", "list"])?;
        let versions: BTreeMap<String, u64> = pipelines
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_str()?.to_string(), p["latest_version"].as_u64()?)))
            .collect();
        for id in &acked.pipelines {
            assert_eq!(
                versions.get(id),
                Some(&1),
                "node {node}: pipeline {id} (lost, or applied twice)"
            );
        }
        views.push(view);
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "the nodes disagree: {views:?}");
    // The state machines are identical: once the nodes have applied the same commands, their states'
    // digests (leases aside, as they renew all the time) are equal.
    let digests = wait_until("the nodes' states to be identical", Duration::from_secs(60), || {
        let mut digests = BTreeSet::new();
        for node in 1..=3usize {
            let status = deployment.json(node, &["cluster", "status"])?;
            digests.insert(status["state_digest"].as_str().unwrap_or_default().to_string());
        }
        Ok((digests.len() == 1 && !digests.contains("")).then_some(digests))
    })?;
    assert_eq!(digests.len(), 1);
    // Every acknowledged object and every run's log reads back whole through every node.
    let numbers: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    for node in 1..=3usize {
        for (key, n) in &acked.objects {
            let got = deployment.ctl_output(node, &["object", "get", "chaos", key])?;
            assert!(
                got.status.success() && got.stdout == object_bytes(*n),
                "node {node}: object {key} ({} bytes back): {}",
                got.stdout.len(),
                String::from_utf8_lossy(&got.stderr)
            );
        }
        for run in &runs {
            let got = deployment.ctl_output(node, &["task", "logs", "chaos", &run.to_string(), "a"])?;
            let want = format!("chaos run {run}\n{numbers}");
            assert!(
                got.status.success() && got.stdout == want.as_bytes(),
                "node {node}: run {run}'s log ({} bytes back): {}",
                got.stdout.len(),
                String::from_utf8_lossy(&got.stderr)
            );
        }
    }
    let acknowledged = acked.namespaces.len() + acked.runs.len() + acked.pipelines.len() + acked.objects.len();
    eprintln!(
        "chaos: {} writes attempted ({} namespaces, {} runs with request ids, {} pipeline registrations, {} \
         objects acknowledged), {acknowledged} acknowledged, {faults} faults injected, {} runs ended, lost 0, \
         duplicated 0 (every acknowledged write was checked on every node), {} scheduler epochs with one \
         scheduler each",
        acked.attempted,
        acked.namespaces.len(),
        acked.runs.len(),
        acked.pipelines.len(),
        acked.objects.len(),
        runs.len(),
        by_epoch.len()
    );
    assert!(
        acknowledged >= acked.attempted / 2,
        "most writes were acknowledged: {acknowledged} of {}",
        acked.attempted
    );
    Ok(())
}
