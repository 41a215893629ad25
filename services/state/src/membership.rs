//! Changing and showing who the state nodes are: add a voter (as a learner first, so it catches up
//! before it counts), remove one, and the cluster status that `goferctl cluster status` prints. A change
//! received by a follower is forwarded to the leader, like a write; a change the leader refuses comes back
//! with openraft's typed refusal in the Status's metadata, so the follower retries on the type.

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use crate::types::NodeId;
use crate::{Call, Error, StateNode, Unavailable};

/// The binary metadata key under which a leader's `ChangeMembership` refusal carries openraft's
/// [`ChangeMembershipError`], as JSON.
const REFUSAL_METADATA: &str = "gofer-change-membership-error-bin";

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add node `id`, reachable at `address` (its raft address, `https://host:port`), as a voter.
    Add { id: NodeId, address: String },
    /// Remove node `id` from the cluster.
    Remove { id: NodeId },
}

/// One node as the membership lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub address: String,
    /// `LEADER`, `FOLLOWER` or `LEARNER`.
    pub role: String,
    pub matched_index: u64,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
}

impl StateNode {
    /// Applies a membership change on the leader, forwarding it there from a follower.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        match &change {
            MembershipChange::Add { id, address } => {
                if *id == 0 {
                    return Err(gofer_domain::Error::invalid("node_id", "must be at least 1").into());
                }
                if !address.starts_with("https://") || address.len() <= "https://".len() {
                    return Err(gofer_domain::Error::invalid("address", "must be https://host:port").into());
                }
            }
            MembershipChange::Remove { id } => {
                let members = self.metrics().membership_config.membership().clone();
                if members.get_node(id).is_none() {
                    return Err(gofer_domain::Error::NotFound(format!("node {id}")).into());
                }
            }
        }
        // A new leader cannot change membership until it has committed an entry of its term, and raft
        // takes one change at a time: both pass quickly, so retry them for a while.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.change_once(&change).await {
                Err(Error::Unavailable(Unavailable::ChangeMembership(refused)))
                    if matches!(*refused, ChangeMembershipError::InProgress(_))
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn change_once(&self, change: &MembershipChange) -> Result<(), Error> {
        match self.change_here(change).await {
            Ok(()) => Ok(()),
            Err(ForwardOr::Forward(leader)) => {
                let mut client = self.peer_client(&leader.addr)?;
                let request = gofer_proto::v1::ChangeMembershipRequest {
                    change: serde_json::to_vec(change).expect("changes always serialize"),
                };
                client
                    .change_membership(request)
                    .await
                    .map_err(|status| match refusal(&status) {
                        Some(refused) => Unavailable::ChangeMembership(Box::new(refused)),
                        None => Unavailable::call(Call::Forward, status),
                    })?;
                Ok(())
            }
            Err(ForwardOr::Failed(e)) => Err(e),
        }
    }

    /// Applies a membership change here; this node must lead.
    pub(crate) async fn change_here(&self, change: &MembershipChange) -> Result<(), ForwardOr> {
        let raft = self.raft();
        let result = match change {
            MembershipChange::Add { id, address } => {
                let node = BasicNode { addr: address.clone() };
                match raft.add_learner(*id, node, true).await {
                    Ok(_) => {
                        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            MembershipChange::Remove { id } => {
                let voters: BTreeSet<NodeId> = self.metrics().membership_config.membership().voter_ids().collect();
                if voters.contains(id) {
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false)
                        .await
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
                        .await
                }
            }
        };
        let failed = |why: Unavailable| Err(ForwardOr::Failed(why.into()));
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_node: Some(leader),
                ..
            }))) => Err(ForwardOr::Forward(leader)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => failed(Unavailable::NoLeader),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(refused))) => {
                failed(Unavailable::ChangeMembership(Box::new(refused)))
            }
            Err(e) => failed(Unavailable::Write(Box::new(e))),
        }
    }

    /// This node's view of the cluster.
    pub fn cluster_status(&self) -> ClusterStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = |id: &NodeId| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |log_id| log_id.index)
        };
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                address: node.addr.clone(),
                role: if metrics.current_leader == Some(*id) {
                    "LEADER"
                } else if voters.contains(id) {
                    "FOLLOWER"
                } else {
                    "LEARNER"
                }
                .to_string(),
                matched_index: if *id == metrics.id && metrics.state == ServerState::Leader {
                    metrics.last_log_index.unwrap_or(0)
                } else {
                    matched(id)
                },
            })
            .collect();
        ClusterStatus {
            node_id: metrics.id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            members,
        }
    }
}

/// Why a membership change did not happen here.
pub(crate) enum ForwardOr {
    /// Another node leads: send it there.
    Forward(BasicNode),
    Failed(Error),
}

/// The Status with which a leader refuses a membership change: Unavailable as any failed change, carrying
/// openraft's refusal for the follower that forwarded it.
pub(crate) fn refusal_status(refused: &ChangeMembershipError<NodeId>) -> tonic::Status {
    let mut status =
        tonic::Status::unavailable(Error::from(Unavailable::ChangeMembership(Box::new(refused.clone()))).to_string());
    let json = serde_json::to_vec(refused).expect("openraft's errors always serialize");
    status
        .metadata_mut()
        .insert_bin(REFUSAL_METADATA, tonic::metadata::MetadataValue::from_bytes(&json));
    status
}

/// The refusal a leader sent with its Status, if it sent one.
fn refusal(status: &tonic::Status) -> Option<ChangeMembershipError<NodeId>> {
    let json = status.metadata().get_bin(REFUSAL_METADATA)?.to_bytes().ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests;
