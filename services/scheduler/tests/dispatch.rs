//! The dispatch stream's hello and welcome, served over a real loopback connection, and the scheduler
//! lease between two schedulers on a manual clock.

use gofer_clock::Clock;
use gofer_domain::Command;
use gofer_domain::lease::Role;
use gofer_proto::v1::dispatch_service_client::DispatchServiceClient;
use gofer_proto::v1::{self, dispatch_request, dispatch_response};
use gofer_state::{LeaseHolder, LogStore, StateHandle, StateNode};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod common;
use common::{initialized_state, manual_clock, serve_dispatch, stop, wait_for};

async fn hello(
    client: &mut DispatchServiceClient<tonic::transport::Channel>,
) -> Result<v1::DispatchResponse, tonic::Status> {
    let hello = v1::DispatchRequest {
        kind: Some(dispatch_request::Kind::Hello(v1::ExecutorHello {
            executor_id: "node1".into(),
            ..Default::default()
        })),
    };
    // The stream stays open (pending) after the hello, as an executor's does.
    let outbound = tokio_stream::iter([hello]).chain(tokio_stream::pending());
    let mut inbound = client.dispatch(outbound).await?.into_inner();
    match inbound.message().await? {
        Some(first) => Ok(first),
        None => Err(tonic::Status::internal("the stream closed without a message")),
    }
}

/// Runs and serves a scheduler that contends for the lease as `holder`; returns its client and lease.
async fn serve(
    state: &StateHandle,
    holder: &str,
    logs: LogStore,
    clock: &Clock,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> (DispatchServiceClient<tonic::transport::Channel>, LeaseHolder) {
    let config = gofer_scheduler::Config {
        holder: holder.into(),
        address: String::new(),
    };
    let deps = gofer_scheduler::Deps {
        state: state.clone(),
        logs: Some(logs),
        clock: clock.clone(),
        keyring: std::sync::Arc::new(gofer_secrets::Keyring::new(
            gofer_secrets::Key::from_bytes(&[1; 32]),
            vec![],
        )),
    };
    let handler = gofer_scheduler::run(config, deps, tracker, shutdown).await;
    let lease = handler.lease().clone();
    (serve_dispatch(handler, shutdown).await, lease)
}

#[tokio::test]
async fn an_executor_is_welcomed_only_once_the_cluster_has_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateHandle::from(StateNode::open_single(&dir.path().join("state")).await.unwrap());
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let (clock, _) = manual_clock();
    let logs = LogStore::new(dir.path().join("logs"));
    let (mut client, lease) = serve(&state, "a", logs, &clock, &tracker, &shutdown).await;
    wait_for("the lease", || lease.epoch(), Option::is_some).await;

    // Before Init, a welcome would carry an empty cluster id, and "this cluster's containers" would
    // match every cluster's on the Docker host: the hello is refused as retryable instead.
    let refused = hello(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    state
        .propose(Command::Init {
            cluster_id: "c0ffee".into(),
            at: 1,
        })
        .await
        .unwrap();
    let welcomed = hello(&mut client).await.unwrap();
    match welcomed.kind {
        Some(dispatch_response::Kind::Welcome(welcome)) => {
            assert_eq!(welcome.cluster_id, "c0ffee");
            assert!(welcome.live_attempts.is_empty());
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    stop(&tracker, &shutdown).await;
}

#[tokio::test]
async fn one_scheduler_acts_a_standby_refuses_executors_and_takes_over_in_the_next_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let state = initialized_state(dir.path()).await;
    let logs = LogStore::new(dir.path().join("logs"));
    let (clock, hand) = manual_clock();
    let (first_tracker, first_stop) = (TaskTracker::new(), CancellationToken::new());
    let (mut first, first_lease) = serve(&state, "a", logs.clone(), &clock, &first_tracker, &first_stop).await;
    wait_for("the first scheduler's lease", || first_lease.epoch(), Option::is_some).await;
    let (second_tracker, second_stop) = (TaskTracker::new(), CancellationToken::new());
    let (mut second, second_lease) = serve(&state, "b", logs, &clock, &second_tracker, &second_stop).await;
    // Two lease periods pass, a third of a lease at a time: after each step the holder renews at the new
    // time, and the standby, which sees the lease unexpired at every step, never gets it.
    let ttl = gofer_state::LEASE_TTL;
    for _ in 0..6 {
        let now = hand.advance(ttl / 3);
        let renewed_until = now + ttl.as_millis() as i64;
        let lease = || state.read(|s| s.leases.roles.get(&Role::Scheduler).cloned());
        wait_for("the holder to renew at the new time", lease, |lease| {
            lease.as_ref().is_some_and(|l| l.expires_at >= renewed_until)
        })
        .await;
    }
    assert_eq!(first_lease.epoch(), Some(1));
    assert_eq!(second_lease.epoch(), None);
    let refused = hello(&mut second).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(matches!(
        hello(&mut first).await.unwrap().kind,
        Some(dispatch_response::Kind::Welcome(_))
    ));
    // What the standby would commit is refused by the fence.
    let fenced = second_lease
        .propose(Command::CreateNamespace {
            namespace: "x".into(),
            at: 2,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&fenced, gofer_state::Error::Rejected(e) if e.is_fenced()),
        "{fenced:?}"
    );

    // The holder stops (and releases): the standby takes over in epoch 2, and the old epoch is fenced.
    stop(&first_tracker, &first_stop).await;
    wait_for(
        "the standby to take over",
        || second_lease.epoch(),
        |epoch| *epoch == Some(2),
    )
    .await;
    let stale = state
        .propose(Command::Fenced {
            role: Role::Scheduler,
            holder: first_lease.holder().to_string(),
            epoch: 1,
            command: Box::new(Command::CreateNamespace {
                namespace: "y".into(),
                at: 3,
            }),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, gofer_state::Error::Rejected(e) if e.is_fenced()),
        "{stale:?}"
    );
    second_lease
        .propose(Command::CreateNamespace {
            namespace: "z".into(),
            at: 4,
        })
        .await
        .unwrap();
    assert!(matches!(
        hello(&mut second).await.unwrap().kind,
        Some(dispatch_response::Kind::Welcome(_))
    ));
    let namespaces: Vec<String> = state.read(|s| s.namespaces.keys().cloned().collect());
    assert_eq!(namespaces, ["default", "z"]);
    stop(&second_tracker, &second_stop).await;
}

#[tokio::test]
async fn a_standby_and_a_process_without_a_scheduler_point_executors_at_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = initialized_state(dir.path()).await;
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let (clock, _) = manual_clock();
    let active = LeaseHolder::spawn_advertising(
        state.clone(),
        Role::Scheduler,
        "a".into(),
        "https://scheduler-a.example:7443".into(),
        clock.clone(),
        &tracker,
        shutdown.clone(),
    );
    wait_for("the lease", || active.epoch(), Option::is_some).await;
    let logs = LogStore::new(dir.path().join("logs"));
    let (mut standby, _) = serve(&state, "b", logs, &clock, &tracker, &shutdown).await;

    let redirect = gofer_scheduler::DispatchRedirect::new(state.clone());
    let mut no_scheduler = serve_dispatch(redirect, &shutdown).await;

    for client in [&mut standby, &mut no_scheduler] {
        let refused = hello(client).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        let pointed = refused
            .metadata()
            .get(gofer_proto::SCHEDULER_ADDRESS_METADATA)
            .and_then(|v| v.to_str().ok());
        assert_eq!(pointed, Some("https://scheduler-a.example:7443"), "{refused:?}");
        assert!(
            refused.message().contains("https://scheduler-a.example:7443"),
            "{refused:?}"
        );
    }
    stop(&tracker, &shutdown).await;
}
