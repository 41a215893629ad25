//! Chaos on the Compose cluster, bounded in time: a client keeps creating namespaces (one id each, retried
//! until it is acknowledged or refused as existing) and starting runs while the test kills the leader,
//! cuts a node off the network, pauses one, restarts one and kills the active scheduler. Then every node
//! must hold every acknowledged write exactly once, all nodes must agree, every acknowledged run must end,
//! and no two schedulers may have acted in one lease epoch.

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

#[test]
fn acknowledged_writes_survive_a_killed_leader_a_partition_a_pause_and_a_restart() {
    let deployment = Deployment::up().expect("bringing the deployment up");
    // A failure panics while the deployment is still up, so that its teardown prints every container's log.
    if let Err(err) = chaos(&deployment) {
        panic!("{err:?}");
    }
}

fn chaos(deployment: &Deployment) -> Result<()> {
    let deployment = deployment;
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    let json_path = tempfile::NamedTempFile::new()?;
    std::fs::write(json_path.path(), pipeline("chaos", &[("a", "echo chaos", &[])]))?;
    wait_until("the pipeline to register", Duration::from_secs(30), || {
        let path = json_path.path().to_str().unwrap_or_default();
        Ok(deployment
            .ctl_output(API, &["pipeline", "register", path])?
            .status
            .success()
            .then_some(()))
    })?;
    let mut acknowledged = BTreeSet::new();
    let mut runs = BTreeSet::new();
    let mut faults = 0;
    let mut n = 0;
    let mut write_some = |deployment: &Deployment, count: usize, acknowledged: &mut BTreeSet<String>| {
        for _ in 0..count {
            n += 1;
            let id = format!("chaos-{n}");
            if write(deployment, n % 3 + 1, &id, Instant::now() + Duration::from_secs(20)) {
                acknowledged.insert(id);
            }
            // A run start is not retried: without a request id a retry could start a second run. An
            // acknowledged one must end.
            if n % 2 == 0
                && let Ok(output) = deployment.ctl_output(n % 3 + 1, &["run", "start", "chaos"])
                && output.status.success()
            {
                let id: u64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
                assert!(runs.insert(id), "run {id} was acknowledged twice");
            }
        }
    };
    write_some(&deployment, 10, &mut acknowledged);

    // Kill the leader outright, write on, bring it back.
    deployment.compose(&["kill", &format!("node{leader}")])?;
    faults += 1;
    write_some(&deployment, 10, &mut acknowledged);
    deployment.compose(&["start", &format!("node{leader}")])?;

    // Cut a follower off the network, write on, reconnect it.
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    let cut = [1u64, 2, 3].into_iter().find(|n| *n != leader).expect("a follower");
    deployment.network(&["disconnect", &deployment.network_name(), &deployment.container(cut)?])?;
    faults += 1;
    write_some(&deployment, 10, &mut acknowledged);
    deployment.network(&["connect", &deployment.network_name(), &deployment.container(cut)?])?;

    // Pause a node (it stops answering but keeps its sockets), write on, unpause it.
    deployment.compose(&["pause", "node2"])?;
    faults += 1;
    write_some(&deployment, 10, &mut acknowledged);
    deployment.compose(&["unpause", "node2"])?;

    // Restart a node.
    deployment.compose(&["restart", "node3"])?;
    faults += 1;
    write_some(&deployment, 10, &mut acknowledged);

    // Kill the scheduler that holds the lease; the standby takes over.
    let (active, _) = deployment.scheduler_lease(&[])?;
    deployment.compose(&["kill", &active])?;
    faults += 1;
    write_some(&deployment, 10, &mut acknowledged);
    deployment.compose(&["start", &active])?;

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
                Ok(acknowledged.iter().all(|id| ids.contains(id)).then_some(ids))
            },
        )?;
        let unique: BTreeSet<&String> = view.iter().collect();
        assert_eq!(unique.len(), view.len(), "node {node} lists a namespace twice");
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
    eprintln!(
        "chaos: {} writes attempted, {} acknowledged, {} runs acknowledged and ended, {faults} faults injected, \
         0 lost, 0 duplicated, {} scheduler epochs with one scheduler each",
        n,
        acknowledged.len(),
        runs.len(),
        by_epoch.len()
    );
    assert!(
        acknowledged.len() >= n / 2,
        "most writes were acknowledged: {} of {n}",
        acknowledged.len()
    );
    Ok(())
}
