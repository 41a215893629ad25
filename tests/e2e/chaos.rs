//! Chaos on the Compose cluster, bounded in time: a client keeps creating namespaces (one id each, retried
//! until it is acknowledged or refused as existing) while the test kills the leader, cuts a node off the
//! network, pauses one and restarts one. Then every node must hold every acknowledged write exactly once,
//! and all nodes must agree.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use gofer_testkit::wait_until;

use crate::deploy::Deployment;

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
fn acknowledged_writes_survive_a_killed_leader_a_partition_a_pause_and_a_restart() -> Result<()> {
    let deployment = Deployment::up()?;
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    let mut acknowledged = BTreeSet::new();
    let mut faults = 0;
    let mut n = 0;
    let mut write_some = |deployment: &Deployment, count: usize, acknowledged: &mut BTreeSet<String>| {
        for _ in 0..count {
            n += 1;
            let id = format!("chaos-{n}");
            if write(deployment, n % 3 + 1, &id, Instant::now() + Duration::from_secs(20)) {
                acknowledged.insert(id);
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
    eprintln!(
        "chaos: {} writes attempted, {} acknowledged, {faults} faults injected, 0 lost, 0 duplicated",
        n,
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= n / 2,
        "most writes were acknowledged: {} of {n}",
        acknowledged.len()
    );
    Ok(())
}
