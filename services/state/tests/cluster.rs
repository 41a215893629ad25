//! Three state nodes in one process, talking raft over real gRPC with mutual TLS on loopback, with a
//! network that the test can cut: election, forwarding, linearizable reads on followers, leader loss,
//! healing, refusal of a peer without a cluster certificate, and task logs sent to the node that keeps
//! them, stored only for a live attempt from its assignee.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gofer_domain::AttemptRef;
use gofer_domain::{Applied, Command, PipelineConfig};
use gofer_state::{
    Faults, LogStore, MemberOptions, MembershipChange, NodeId, PeerNetwork, RemoteState, StateHandle, StateNode,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server};

const DEADLINE: Duration = Duration::from_secs(15);

struct Cluster {
    nodes: BTreeMap<NodeId, StateNode>,
    faults: Faults,
    servers: BTreeMap<NodeId, Served>,
    /// Each node's certificate, to serve again after a test stopped its server.
    certs: BTreeMap<NodeId, gofer_tls::CertifiedKey>,
    /// Each node's task log store, which its `RaftService` serves to the others.
    logs: BTreeMap<NodeId, LogStore>,
    _dirs: Vec<tempfile::TempDir>,
    ca_pem: String,
    ca: gofer_tls::Ca,
    addresses: BTreeMap<NodeId, String>,
    /// How many connections each node's server has accepted.
    accepted: BTreeMap<NodeId, Arc<AtomicUsize>>,
    options: MemberOptions,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(MemberOptions::default()).await
    }

    async fn start_with(options: MemberOptions) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = test_ca();
        let ca_pem = ca.certified().cert_pem.clone();
        let faults = Faults::default();
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.insert(id, listener);
        }
        let members: BTreeMap<NodeId, String> = listeners
            .iter()
            .map(|(id, l)| (*id, format!("https://{}", l.local_addr().unwrap())))
            .collect();
        let (mut nodes, mut servers, mut dirs) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        let (mut certs, mut logs, mut accepted) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (id, listener) in listeners {
            // Each node is good for its real address only: its peers verify it by that address.
            let cert = issue(
                &ca,
                &format!("node{id}"),
                &["127.0.0.1"],
                lifetime(gofer_tls::Roles::ALL),
            );
            let dir = tempfile::tempdir().unwrap();
            let network = member_network(id, &cert, &ca_pem, &faults);
            let node = StateNode::open_member(dir.path(), network, Some(members.clone()), options)
                .await
                .unwrap();
            let store = LogStore::new(dir.path().join("logs"));
            let count = Arc::new(AtomicUsize::new(0));
            servers.insert(id, serve(&node, &cert, &ca_pem, &store, listener, count.clone()));
            accepted.insert(id, count);
            nodes.insert(id, node);
            certs.insert(id, cert);
            logs.insert(id, store);
            dirs.push(dir);
        }
        Cluster {
            nodes,
            faults,
            servers,
            certs,
            logs,
            _dirs: dirs,
            ca_pem,
            ca,
            addresses: members,
            accepted,
            options,
        }
    }

    /// The leader every live node agrees on, waiting for one.
    async fn leader(&self, among: &[NodeId]) -> NodeId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let seen: Vec<Option<NodeId>> = among.iter().map(|id| self.nodes[id].metrics().current_leader).collect();
            if let Some(Some(leader)) = seen.first()
                && seen.iter().all(|s| *s == Some(*leader))
                && among.contains(leader)
            {
                return *leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader among {among:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `id` (its raft and its server) and starts it again on the same data and address.
    async fn restart(&mut self, id: NodeId) {
        self.kill(id).await;
        let cert = &self.certs[&id];
        let network = member_network(id, cert, &self.ca_pem, &self.faults);
        let dir = self._dirs[usize::try_from(id).unwrap() - 1].path();
        let node = StateNode::open_member(dir, network, None, self.options).await.unwrap();
        let address = self.addresses[&id].trim_start_matches("https://").to_string();
        let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
        let server = serve(
            &node,
            cert,
            &self.ca_pem,
            &self.logs[&id],
            listener,
            self.accepted[&id].clone(),
        );
        self.servers.insert(id, server);
        self.nodes.insert(id, node);
    }

    /// Stops node `id`: its raft and its server, as a crash would.
    async fn kill(&mut self, id: NodeId) {
        let _ = self.nodes[&id].shutdown().await;
        if let Some(server) = self.servers.remove(&id) {
            server.end().await;
        }
    }

    /// The agreed leader and the two followers.
    async fn leader_and_followers(&self) -> (NodeId, NodeId, NodeId) {
        let leader = self.leader(&[1, 2, 3]).await;
        let followers: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        (leader, followers[0], followers[1])
    }

    async fn stop(self) {
        for node in self.nodes.values() {
            let _ = node.shutdown().await;
        }
        for server in self.servers.into_values() {
            server.end().await;
        }
    }
}

/// A node's raft server, running until [`Served::end`].
struct Served {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Served {
    /// Stops the server and closes every connection it has, as a process that exits would: aborting
    /// its task alone would leave the connections it spawned serving a node that is gone.
    async fn end(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(DEADLINE, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// Node `id`'s network: its peers dialled with its certificate, through the harness's `faults`.
fn member_network(id: NodeId, cert: &gofer_tls::CertifiedKey, ca_pem: &str, faults: &Faults) -> PeerNetwork {
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    PeerNetwork::new(id, Some(client_tls), faults.clone())
}

/// Serves `node`'s `RaftService` (with its task logs) on `listener`, behind mutual TLS, counting the
/// connections it accepts in `accepted`.
fn serve(
    node: &StateNode,
    cert: &gofer_tls::CertifiedKey,
    ca_pem: &str,
    logs: &LogStore,
    listener: tokio::net::TcpListener,
    accepted: Arc<AtomicUsize>,
) -> Served {
    let server_tls = gofer_tls::listen::server_config(
        ca_pem,
        &cert.cert_pem,
        &cert.key_pem,
        gofer_tls::listen::ClientCertificates::Required,
    )
    .unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let service = node.raft_service(
        Some(logs.clone()),
        gofer_clock::Clock::system(),
        tracker.clone(),
        shutdown.clone(),
    );
    let tcp = futures_util::StreamExt::inspect(tokio_stream::wrappers::TcpListenerStream::new(listener), move |_| {
        accepted.fetch_add(1, Ordering::SeqCst);
    });
    let incoming = gofer_tls::listen::incoming(tcp, server_tls, &tracker, &shutdown);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        // Ends the handshakes and streams this server started when the test ends or aborts it.
        let _stop = shutdown.clone().drop_guard();
        let _ = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await;
    });
    Served { task, stop }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A certificate's validity for `role`, from now.
fn lifetime(roles: gofer_tls::Roles) -> gofer_tls::Validity {
    gofer_tls::Validity::starting(now(), roles.lifetime())
}

fn test_ca() -> gofer_tls::Ca {
    let validity = gofer_tls::Validity::starting(now(), gofer_tls::CA_LIFETIME);
    gofer_tls::Ca::generate(gofer_tls::CLUSTER_CA_NAME, validity).unwrap()
}

/// A node certificate from `ca` called `common_name`, good for `names` over `validity`.
fn issue(
    ca: &gofer_tls::Ca,
    common_name: &str,
    names: &[&str],
    validity: gofer_tls::Validity,
) -> gofer_tls::CertifiedKey {
    issue_with(ca, common_name, names, gofer_tls::Roles::ALL, validity)
}

/// A certificate from `ca` called `common_name` with `roles`, good for `names` over `validity`.
fn issue_with(
    ca: &gofer_tls::Ca,
    common_name: &str,
    names: &[&str],
    roles: gofer_tls::Roles,
    validity: gofer_tls::Validity,
) -> gofer_tls::CertifiedKey {
    let subject = gofer_tls::Subject::new(common_name, names, roles);
    ca.issue(&subject, validity).unwrap()
}

fn namespace(name: &str) -> Command {
    Command::CreateNamespace {
        namespace: name.into(),
        at: 1,
    }
}

/// Starts a run of pipeline `p` in namespace `default`.
fn start_run_of_p() -> Command {
    Command::StartRun {
        namespace: "default".into(),
        pipeline: "p".into(),
        request_id: String::new(),
        parameters: BTreeMap::new(),
        retry_of: 0,
        at: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_forward_and_read_linearizably() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let followers: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    // A write sent to a follower is forwarded to the leader, and the follower has applied it on return.
    let follower = &cluster.nodes[&followers[0]];
    follower
        .propose(Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .await
        .unwrap();
    follower.propose(namespace("team-a")).await.unwrap();
    assert!(follower.read(|s| s.namespaces.contains_key("team-a")));
    // A refusal comes back from the leader as a refusal.
    let refused = follower.propose(namespace("team-a")).await;
    assert!(
        matches!(
            refused,
            Err(gofer_state::Error::Rejected(gofer_domain::Error::AlreadyExists(_)))
        ),
        "{refused:?}"
    );
    // A linearizable read on the other follower sees every acknowledged write.
    let other = &cluster.nodes[&followers[1]];
    let seen = other
        .read_linearizable(|s| s.namespaces.contains_key("team-a"))
        .await
        .unwrap();
    assert!(seen);
    let config = PipelineConfig::from_json(r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#).unwrap();
    let applied = other
        .propose(Command::RegisterPipeline {
            namespace: "team-a".into(),
            config,
            at: 2,
        })
        .await
        .unwrap();
    assert_eq!(applied, Applied::Version(1));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let cluster = Cluster::start().await;
    let old = cluster.leader(&[1, 2, 3]).await;
    cluster.nodes[&old]
        .propose(Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .await
        .unwrap();
    cluster.nodes[&old].propose(namespace("before")).await.unwrap();
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    for id in &rest {
        cluster.faults.cut(old, *id);
    }
    let new = cluster.leader(&rest).await;
    assert_ne!(new, old);
    cluster.nodes[&rest[0]].propose(namespace("during")).await.unwrap();
    // The cut-off old leader cannot commit anything.
    let stale = tokio::time::timeout(Duration::from_secs(3), cluster.nodes[&old].propose(namespace("lost"))).await;
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "a partitioned leader must not acknowledge a write: {stale:?}"
    );
    cluster.faults.heal();
    let agreed = cluster.leader(&[1, 2, 3]).await;
    assert!(rest.contains(&agreed));
    let states: Vec<_> = {
        let mut states = Vec::new();
        for id in [1, 2, 3] {
            let node = &cluster.nodes[&id];
            states.push(node.read_linearizable(|s| s.clone()).await.unwrap());
        }
        states
    };
    for state in &states {
        assert!(state.namespaces.contains_key("before") && state.namespaces.contains_key("during"));
        assert!(!state.namespaces.contains_key("lost"));
    }
    assert!(states.windows(2).all(|w| w[0] == w[1]), "all nodes agree");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_cluster_certificate_is_refused() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let addr = cluster.nodes[&leader]
        .metrics()
        .membership_config
        .membership()
        .get_node(&leader)
        .unwrap()
        .addr
        .clone();
    let read_index_as = |cert: &gofer_tls::CertifiedKey| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&cluster.ca_pem))
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        let mut client = gofer_proto::v1::raft_service_client::RaftServiceClient::new(channel);
        async move { client.read_index(gofer_proto::v1::ReadIndexRequest {}).await }
    };
    let peer = issue(&cluster.ca, "peer", &["peer"], lifetime(gofer_tls::Roles::ALL));
    // The leader answers a read index once it knows its quorum: a current certificate gets that far.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(status) = read_index_as(&peer).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a current cluster certificate is admitted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refused in the handshake: the call fails in the transport, not with a Status the server sent.
    let refused = |result: Result<_, tonic::Status>| matches!(result, Err(status) if std::error::Error::source(&status).is_some());
    let stranger = issue(&test_ca(), "evil", &["evil"], lifetime(gofer_tls::Roles::ALL));
    assert!(
        refused(read_index_as(&stranger).await),
        "a certificate from another CA is refused"
    );
    let day = 24 * 60 * 60;
    let ended = gofer_tls::Validity {
        not_before: now() - 2 * day,
        not_after: now() - day,
    };
    let expired = issue(&cluster.ca, "peer", &["peer"], ended);
    assert!(
        refused(read_index_as(&expired).await),
        "an expired certificate from the cluster CA is refused"
    );
    let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cluster.ca_pem));
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .tls_config(no_cert)
        .unwrap()
        .connect_lazy();
    let mut client = gofer_proto::v1::raft_service_client::RaftServiceClient::new(channel);
    assert!(
        refused(client.read_index(gofer_proto::v1::ReadIndexRequest {}).await),
        "no certificate is refused"
    );
    cluster.stop().await;
}

/// The raft port admits each certificate only to what its roles do: an executor's to nothing (not
/// `Propose`, not `ChangeMembership`, not raft traffic), an api's to its own commands but neither raft
/// traffic nor a scheduler's fenced batch, and one without a role to nothing, saying how to issue one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_port_admits_each_certificate_only_to_what_its_roles_do() {
    use gofer_proto::v1;
    use gofer_tls::{Role, Roles};
    let cluster = Cluster::start().await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let client_as = |roles: Roles| {
        let cert = issue_with(&cluster.ca, "caller", &["caller"], roles, lifetime(roles));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&cluster.ca_pem))
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let channel = tonic::transport::Endpoint::from_shared(cluster.addresses[&leader].clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        v1::raft_service_client::RaftServiceClient::new(channel)
    };
    let propose = |command: &Command| v1::ProposeRequest {
        command: serde_json::to_vec(command).unwrap(),
    };
    fn denied<T>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) -> String {
        match result {
            Err(status) if status.code() == tonic::Code::PermissionDenied => status.message().to_string(),
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }

    let mut executor = client_as(Roles::of(Role::Executor));
    let message = denied(
        executor.propose(propose(&namespace("by-executor"))).await,
        "executor Propose",
    );
    assert!(message.contains("executor") && message.contains("Propose"), "{message}");
    let removal = serde_json::to_vec(&MembershipChange::Remove { id: 3 }).unwrap();
    denied(
        executor
            .change_membership(v1::ChangeMembershipRequest { change: removal })
            .await,
        "executor ChangeMembership",
    );
    denied(
        executor
            .append_entries(v1::AppendEntriesRequest { payload: vec![] })
            .await,
        "executor AppendEntries",
    );
    denied(executor.follow(v1::FollowRequest {}).await, "executor Follow");

    let mut api = client_as(Roles::of(Role::Api));
    api.propose(propose(&namespace("by-api"))).await.unwrap();
    denied(
        api.append_entries(v1::AppendEntriesRequest { payload: vec![] }).await,
        "api AppendEntries",
    );
    denied(api.vote(v1::VoteRequest { payload: vec![] }).await, "api Vote");
    let batch = Command::Fenced {
        role: gofer_domain::lease::Role::Scheduler,
        holder: "api".into(),
        epoch: 1,
        command: Box::new(Command::Batch { commands: vec![] }),
    };
    let message = denied(api.propose(propose(&batch)).await, "api proposing a scheduler's batch");
    assert!(message.contains("fenced"), "{message}");

    let mut roleless = client_as(Roles::NONE);
    let message = denied(
        roleless.read_index(v1::ReadIndexRequest {}).await,
        "a certificate without a role",
    );
    assert!(message.contains("goferd certs issue NAME --role"), "{message}");

    let leader_node = &cluster.nodes[&leader];
    leader_node.propose(namespace("after")).await.unwrap();
    let (by_executor, by_api) = leader_node.read(|s| {
        (
            s.namespaces.contains_key("by-executor"),
            s.namespaces.contains_key("by-api"),
        )
    });
    assert!(!by_executor && by_api, "only the api's proposal was committed");
    assert_eq!(
        leader_node.metrics().membership_config.membership().voter_ids().count(),
        3
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_removed_and_added_back_through_any_node_and_catches_up() {
    let cluster = Cluster::start().await;
    let (leader, asker, removed) = cluster.leader_and_followers().await;
    let address = cluster.nodes[&leader]
        .cluster_status()
        .members
        .iter()
        .find(|m| m.id == removed)
        .unwrap()
        .address
        .clone();
    cluster.nodes[&leader]
        .propose(Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .await
        .unwrap();
    // Asked of a follower, the change is forwarded to the leader.
    cluster.nodes[&asker]
        .change_membership(MembershipChange::Remove { id: removed })
        .await
        .unwrap();
    let status = cluster.nodes[&leader].cluster_status();
    assert_eq!(
        status.members.iter().map(|m| m.id).collect::<Vec<_>>().len(),
        2,
        "{status:?}"
    );
    assert!(status.members.iter().all(|m| m.id != removed));
    cluster.nodes[&leader].propose(namespace("while-away")).await.unwrap();
    cluster.nodes[&asker]
        .change_membership(MembershipChange::Add { id: removed, address })
        .await
        .unwrap();
    let status = cluster.nodes[&leader].cluster_status();
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert_eq!(status.members.iter().filter(|m| m.role == "LEADER").count(), 1);
    let caught_up = cluster.nodes[&removed]
        .read_linearizable(|s| s.namespaces.contains_key("while-away"))
        .await
        .unwrap();
    assert!(caught_up, "the re-added node caught up on what it missed");
    let bad = cluster.nodes[&leader]
        .change_membership(MembershipChange::Add {
            id: 9,
            address: "nope".into(),
        })
        .await;
    assert!(
        matches!(
            bad,
            Err(gofer_state::Error::Rejected(
                gofer_domain::Error::InvalidArgument { .. }
            ))
        ),
        "{bad:?}"
    );
    let unknown = cluster.nodes[&leader]
        .change_membership(MembershipChange::Remove { id: 42 })
        .await;
    assert!(
        matches!(
            unknown,
            Err(gofer_state::Error::Rejected(gofer_domain::Error::NotFound(_)))
        ),
        "{unknown:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fell_behind_the_compacted_log_catches_up_by_snapshot() {
    let options = MemberOptions {
        snapshot_every_entries: 20,
        logs_kept_after_snapshot: 5,
    };
    let cluster = Cluster::start_with(options).await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let behind = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    for id in [1, 2, 3].into_iter().filter(|id| *id != behind) {
        cluster.faults.cut(behind, id);
    }
    let node = &cluster.nodes[&leader];
    node.propose(Command::Init {
        cluster_id: "c".into(),
        at: 1,
    })
    .await
    .unwrap();
    node.propose(Command::RegisterPipeline {
        namespace: "default".into(),
        config: PipelineConfig::from_json(r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#).unwrap(),
        at: 1,
    })
    .await
    .unwrap();
    for i in 0..80 {
        node.propose(namespace(&format!("ns-{i}"))).await.unwrap();
        if i % 4 == 0 {
            // Runs make events, which travel in the snapshot with their ids.
            node.propose(start_run_of_p()).await.unwrap();
        }
    }
    // The leader compacted past what the cut-off node has.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let behind_at = cluster.nodes[&behind].metrics().last_log_index.unwrap_or(0);
    while node.metrics().purged.map_or(0, |p| p.index) <= behind_at {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never purged its log: {:?}",
            node.metrics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.faults.heal();
    let caught_up = cluster.nodes[&behind]
        .read_linearizable(|s| s.namespaces.len())
        .await
        .unwrap();
    assert_eq!(caught_up, 81, "default plus 80 namespaces");
    assert!(
        cluster.nodes[&behind].metrics().snapshot.is_some(),
        "it caught up by installing a snapshot"
    );
    let leader_state = node.read(|s| s.clone());
    assert_eq!(cluster.nodes[&behind].read(|s| s.clone()), leader_state);
    let ids: Vec<u64> = leader_state.events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=20).collect::<Vec<u64>>(),
        "one event per run, numbered alike on every node"
    );
    cluster.stop().await;
}

/// A process away from the state nodes (a standalone api or scheduler) follows one node's state, writes
/// through the leader, reads its own writes and linearizably, and moves to another node when its node goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_process_mirrors_the_state_and_moves_on_when_its_node_goes() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let cert = issue(&cluster.ca, "api", &["api"], lifetime(gofer_tls::Roles::ALL));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cluster.ca_pem))
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    // The follower first: the mirror follows it, and writes find the leader by trying the nodes.
    let mut addresses = vec![cluster.addresses[&follower].clone()];
    addresses.extend(
        cluster
            .addresses
            .iter()
            .filter(|(id, _)| **id != follower)
            .map(|(_, a)| a.clone()),
    );
    let network = PeerNetwork::new(0, Some(tls), Faults::default());
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let remote = RemoteState::connect(network, addresses, DEADLINE, &tracker, &shutdown)
        .await
        .unwrap();

    remote.propose(namespace("from-afar")).await.unwrap();
    assert!(
        remote.read(|s| s.namespaces.contains_key("from-afar")),
        "a write is readable on return"
    );
    let refused = remote.propose(namespace("from-afar")).await.unwrap_err();
    assert!(matches!(refused, gofer_state::Error::Rejected(_)), "{refused:?}");
    cluster.nodes[&leader]
        .propose(namespace("on-the-leader"))
        .await
        .unwrap();
    assert!(
        remote
            .read_linearizable(|s| s.namespaces.contains_key("on-the-leader"))
            .await
            .unwrap(),
        "a linearizable read sees every write acknowledged before it"
    );
    let mirrored = remote.read(|s| s.clone());
    assert_eq!(
        mirrored,
        cluster.nodes[&leader].read(|s| s.clone()),
        "the mirror is the state"
    );

    // The followed node goes away for good: the mirror follows another, and writes and reads go on.
    let gone = cluster.nodes.remove(&follower).unwrap();
    gone.shutdown().await.unwrap();
    cluster.servers.remove(&follower).unwrap().end().await;
    remote.propose(namespace("after-the-loss")).await.unwrap();
    assert!(remote.read(|s| s.namespaces.contains_key("after-the-loss")));
    let status = remote.cluster_status().await.unwrap();
    assert_ne!(status.node_id, follower);
    assert_eq!(remote.following_node(), status.node_id);
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(DEADLINE, tracker.wait())
        .await
        .expect("the mirror stops following on shutdown");
    cluster.stop().await;
}

/// A task log read from the node that keeps it rides through a moment in which that node cannot be
/// reached (on a busy host a connect can time out): the read is made again on a new connection rather
/// than failing the client that asked for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_read_from_another_node_rides_through_a_moment_that_node_cannot_be_reached() {
    let mut cluster = Cluster::start().await;
    // The keeper leads, so no raft traffic dials it: every connection it accepts below is the read's.
    let keeper = cluster.leader(&[1, 2, 3]).await;
    let reader = if keeper == 1 { 2 } else { 1 };
    let target = AttemptRef {
        namespace: "default".into(),
        pipeline: "p".into(),
        run: 1,
        task: "a".into(),
    };
    let mut writer = cluster.logs[&keeper].writer(&target, 1).await.unwrap();
    writer.append(b"kept on another node\n").await.unwrap();
    writer.finish().await.unwrap();

    // The keeper's server goes; in its place, a listener that drops every connection it accepts.
    cluster.servers.remove(&keeper).unwrap().end().await;
    let address = cluster.addresses[&keeper].trim_start_matches("https://").to_string();
    // The aborted server's accept loop lets go of the port once it sees its shutdown, on its next poll.
    let refuser = {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::net::TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => panic!("binding {address} again: {err}"),
            }
        }
    };
    let handle = StateHandle::from(cluster.nodes[&reader].clone());
    let read = tokio::spawn({
        let target = target.clone();
        async move { handle.read_peer_log(keeper, &target, 1, 0, 1024).await }
    });
    let (dropped, _) = tokio::time::timeout(DEADLINE, refuser.accept())
        .await
        .expect("the reader dials the keeper")
        .unwrap();
    drop(dropped);

    // The keeper serves again at its address; the read that was waiting gets the log.
    drop(refuser);
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    let server = serve(
        &cluster.nodes[&keeper],
        &cluster.certs[&keeper],
        &cluster.ca_pem,
        &cluster.logs[&keeper],
        listener,
        cluster.accepted[&keeper].clone(),
    );
    cluster.servers.insert(keeper, server);
    let data = tokio::time::timeout(DEADLINE, read).await.unwrap().unwrap().unwrap();
    assert_eq!(data, b"kept on another node\n");
    cluster.stop().await;
}

/// A log sent to the node that keeps it (as a scheduler without a state node beside it sends one) is
/// stored only for a live attempt and only as uploaded by its assignee: another executor's upload, or any
/// upload once the attempt finished, is refused and leaves the stored log as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stores_a_log_only_for_a_live_attempt_from_its_assignee() {
    let cluster = Cluster::start().await;
    let (keeper, sender, _) = cluster.leader_and_followers().await;
    let node = StateHandle::from(cluster.nodes[&sender].clone());
    let config = PipelineConfig::from_json(r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#).unwrap();
    let target = AttemptRef {
        namespace: "default".into(),
        pipeline: "p".into(),
        run: 1,
        task: "a".into(),
    };
    for command in [
        Command::Init {
            cluster_id: "c".into(),
            at: 1,
        },
        Command::RegisterPipeline {
            namespace: "default".into(),
            config,
            at: 1,
        },
        start_run_of_p(),
        Command::AssignAttempt {
            target: target.clone(),
            attempt: 1,
            executor: "e1".into(),
            node: keeper,
            scheduler: String::new(),
            epoch: 0,
            at: 3,
        },
    ] {
        node.propose(command).await.unwrap();
    }
    let key = gofer_proto::v1::AttemptKey::from(&gofer_domain::AttemptId {
        task: target.clone(),
        attempt: 1,
    });
    let send = |executor: &'static str, data: &'static [u8]| {
        let (node, key) = (node.clone(), key.clone());
        async move {
            node.send_log(keeper, key, executor, futures_util::stream::iter([data.to_vec()]))
                .await
        }
    };
    let path = cluster.logs[&keeper].path(&target, 1).unwrap();
    let stored = || cluster.logs[&keeper].read_at(&path, 0, 1024);

    let forged = send("e2", b"forged\n").await;
    assert!(forged.is_err(), "{forged:?}");
    assert!(stored().await.unwrap().is_empty(), "nothing was stored");
    assert_eq!(send("e1", b"the log\n").await.unwrap(), 8);
    // Stored means archived: a blob on a majority of the nodes, named by the attempt, read anywhere.
    let key = gofer_domain::blobs::task_log_key(&target, 1);
    let (digest, holders) = node
        .read_linearizable(|s| s.blobs.get(&key).map(|(b, c)| (b.digest.clone(), c.holders.clone())))
        .await
        .unwrap()
        .expect("the stored log is a blob");
    assert!(holders.len() >= 2 && holders.contains(&keeper), "{holders:?}");
    for id in [1, 2, 3] {
        let read = StateHandle::from(cluster.nodes[&id].clone())
            .read_blob(&digest, &holders)
            .await
            .unwrap();
        assert_eq!(read, b"the log\n", "through node {id}");
    }
    node.propose(Command::AttemptFinished {
        target: target.clone(),
        attempt: 1,
        executor: "e1".into(),
        outcome: gofer_domain::AttemptOutcome::Exited(0),
        log_node: 0,
        at: 4,
    })
    .await
    .unwrap();
    for executor in ["e2", "e1"] {
        let rewritten = send(executor, b"rewritten\n").await;
        assert!(rewritten.is_err(), "{rewritten:?}");
    }
    assert_eq!(stored().await.unwrap(), b"the log\n");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_writes_and_reads_share_one_connection_to_the_leader() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let node = &cluster.nodes[&follower];
    node.propose(namespace("first")).await.unwrap();
    let before = cluster.accepted[&leader].load(Ordering::SeqCst);
    let calls = 40;
    for n in 0..calls / 2 {
        node.propose(namespace(&format!("n{n}"))).await.unwrap();
        let seen = node
            .read_linearizable(|s| s.namespaces.contains_key(&format!("n{n}")))
            .await
            .unwrap();
        assert!(seen, "the follower reads its own write");
    }
    // Followers never dial the leader for raft; an election on a slow host may open a few connections,
    // one connection per call would open forty.
    let opened = cluster.accepted[&leader].load(Ordering::SeqCst) - before;
    assert!(
        opened < 5,
        "{calls} calls from a follower opened {opened} connections to the leader"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_one_follower_synced_waits_for_the_leaders_own_sync() {
    let cluster = Cluster::start().await;
    let (leader, quick, slow) = cluster.leader_and_followers().await;
    cluster.nodes[&leader].propose(namespace("before")).await.unwrap();
    let index = cluster.nodes[&leader].metrics().last_log_index.unwrap() + 1;

    // The leader's disk and one follower's stop answering: only `quick` syncs the next write.
    cluster.faults.hold_log_syncs(leader);
    cluster.faults.hold_log_syncs(slow);
    let node = cluster.nodes[&leader].clone();
    let mut write = tokio::spawn(async move { node.propose(namespace("held")).await });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let metrics = cluster.nodes[&leader].metrics();
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&quick).cloned().flatten());
        if matched.is_some_and(|m| m.index >= index) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{quick} never synced the write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One member of three has synced it, and the leader knows: that is no majority.
    let acknowledged = tokio::time::timeout(Duration::from_secs(1), &mut write).await;
    assert!(
        acknowledged.is_err(),
        "acknowledged while synced on one member only: {acknowledged:?}"
    );
    assert!(
        cluster.nodes[&leader]
            .metrics()
            .last_applied
            .is_none_or(|a| a.index < index)
    );

    // The leader's disk answers again: it and `quick` make the majority.
    cluster.faults.release_log_syncs();
    let applied = tokio::time::timeout(DEADLINE, write).await.unwrap().unwrap().unwrap();
    assert!(matches!(applied, Applied::Done), "{applied:?}");
    let seen = cluster.nodes[&quick]
        .read_linearizable(|s| s.namespaces.contains_key("held"))
        .await
        .unwrap();
    assert!(seen);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_unsynced_entries_in_a_crash_does_not_lead_again_in_the_same_term() {
    let mut cluster = Cluster::start().await;
    let (leader, _, _) = cluster.leader_and_followers().await;
    cluster.nodes[&leader].propose(namespace("before")).await.unwrap();

    // The leader's disk stops answering; both followers sync the next write, which commits without it.
    cluster.faults.hold_log_syncs(leader);
    let written = tokio::time::timeout(DEADLINE, cluster.nodes[&leader].propose(namespace("synced-elsewhere")))
        .await
        .expect("a majority of followers commits the write")
        .unwrap();
    assert!(matches!(written, Applied::Done), "{written:?}");
    // The leader crashes before its write reaches the disk, and comes back at once.
    cluster.faults.lose_log_syncs(leader);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while cluster.nodes[&leader].metrics().running_state.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "raft went on without its disk");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.faults.release_log_syncs();
    cluster.restart(leader).await;

    // Whoever leads now, every member holds the write and the same state.
    let (now_leading, _, _) = cluster.leader_and_followers().await;
    cluster.nodes[&now_leading].propose(namespace("after")).await.unwrap();
    for id in [1, 2, 3] {
        let held = cluster.nodes[&id]
            .read_linearizable(|s| ["before", "synced-elsewhere", "after"].map(|n| s.namespaces.contains_key(n)))
            .await
            .unwrap();
        assert_eq!(held, [true; 3], "node {id} (the restarted leader was {leader})");
    }
    let state = cluster.nodes[&now_leading].read(|s| s.clone());
    for id in [1, 2, 3] {
        assert_eq!(cluster.nodes[&id].read(|s| s.clone()), state, "node {id}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_written_on_a_majority_read_from_any_holder_and_copied_to_a_node_that_missed_it() {
    let mut cluster = Cluster::start().await;
    let (leader, follower, other) = cluster.leader_and_followers().await;
    let handle = StateHandle::from(cluster.nodes[&follower].clone());
    handle
        .propose(Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .await
        .unwrap();
    // One node is down: the write still has its majority, on the two that are up.
    cluster.kill(other).await;
    let data = Arc::new(vec![7u8; 3 * 1024 * 1024 + 5]);
    let written = handle.write_blob(data.clone()).await.unwrap();
    assert_eq!(written.digest, gofer_state::digest_of(&data));
    let mut majority = vec![leader, follower];
    majority.sort_unstable();
    assert_eq!(written.holders, majority);
    handle
        .propose(Command::PutBlob {
            key: "test/blob".into(),
            digest: written.digest.clone(),
            size: written.size,
            holders: written.holders.clone(),
            at: 2,
        })
        .await
        .unwrap();
    // Read through the leader, which holds it, and through the follower, from its own copy.
    for id in [leader, follower] {
        let read = StateHandle::from(cluster.nodes[&id].clone())
            .read_blob(&written.digest, &written.holders.iter().copied().collect())
            .await
            .unwrap();
        assert_eq!(read, *data);
    }
    // The node that was down comes back and copies the blob from a holder in the background.
    cluster.restart(other).await;
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    for node in cluster.nodes.values() {
        tracker.spawn(gofer_state::keep_blobs(
            node.clone(),
            gofer_clock::Clock::system(),
            shutdown.clone(),
        ));
    }
    let back = cluster.nodes[&other].clone();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let holders = back.read(|s| s.blobs.get("test/blob").map(|(_, c)| c.holders.clone()));
        if holders.as_ref().is_some_and(|h| h.contains(&other)) && back.blobs().holds(&written.digest) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {other} never copied the blob: {holders:?} {:?}",
            back.metrics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back.read(|s| s.blobs.node_blobs(other).backlog), 0);
    // With the two others down, the repaired node serves the blob alone, from its own checked copy.
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    cluster.kill(leader).await;
    cluster.kill(follower).await;
    let alone = StateHandle::from(back)
        .read_blob(&written.digest, &Default::default())
        .await
        .unwrap();
    assert_eq!(alone, *data);
    // And a write now fails: one node of three is no majority.
    let refused = StateHandle::from(cluster.nodes[&other].clone())
        .write_blob(Arc::new(b"more".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            gofer_state::Error::Unavailable(gofer_state::Unavailable::NoBlobMajority {
                stored: 1,
                needed: 2,
                ..
            })
        ),
        "{refused}"
    );
    cluster.stop().await;
}
