//! The fire queue checks every fire before it proposes it.

use std::collections::BTreeMap;

use gofer_clock::Clock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::testing::{state_with_pipeline, subscribe};

#[tokio::test]
async fn a_fire_that_fails_its_checks_is_refused_without_reaching_the_log() {
    let (state, _dir) = state_with_pipeline().await;
    subscribe(&state, "interval", "tick", &[("every", "1m")]).await;
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let (clock, _hand) = Clock::manual(1_700_000_000_000);
    let fires = FireQueue::start(state.clone(), clock, &tracker, shutdown.clone());
    let fire = |parameters: BTreeMap<String, String>| Fire {
        namespace: "default".into(),
        pipeline: "p".into(),
        subscription: "tick".into(),
        extension: "interval".into(),
        idempotency_key: "interval:default/p/tick:60000".into(),
        scheduled_at: 60_000,
        delivery: String::new(),
        parameters,
    };
    let applied = *state.subscribe().borrow();
    let too_many: BTreeMap<String, String> = (0..=gofer_domain::inputs::MAX_PARAMETERS)
        .map(|i| (format!("p{i}"), String::new()))
        .collect();
    match fires.fire(fire(too_many)).await {
        Ok(Err(gofer_domain::Error::InvalidArgument { field, .. })) => assert_eq!(field, "parameters"),
        other => panic!("expected a refusal naming parameters, got {other:?}"),
    }
    assert_eq!(*state.subscribe().borrow(), applied, "nothing was proposed");
    // The same fire within the bounds makes its run.
    let ok = fires.fire(fire(BTreeMap::from([("n".into(), "1".into())]))).await;
    assert!(matches!(ok, Ok(Ok((FireOutcome::Started(1), false)))), "{ok:?}");
    shutdown.cancel();
    tracker.close();
    let drained = tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait()).await;
    assert!(drained.is_ok(), "the fire queue did not stop");
}

#[test]
fn a_batch_of_large_fires_is_cut_by_bytes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let value = "v".repeat(60 * 1024);
    let large = |n: usize| Fire {
        namespace: "default".into(),
        pipeline: "p".into(),
        subscription: "s".into(),
        extension: "e".into(),
        idempotency_key: format!("e:{n}"),
        scheduled_at: 0,
        delivery: String::new(),
        parameters: BTreeMap::from([("v".into(), value.clone())]),
    };
    let fire_bytes = serde_json::to_vec(&large(0)).unwrap().len();
    let waiting = 2 * MAX_BATCH_BYTES / fire_bytes;
    assert!(waiting < MAX_BATCH, "the count alone would not cut this batch");
    for n in 1..=waiting {
        tx.send((large(n), oneshot::channel().0)).unwrap();
    }
    let batch = take_batch((large(0), oneshot::channel().0), &mut rx);
    let bytes: usize = batch.iter().map(|(f, _)| serde_json::to_vec(f).unwrap().len()).sum();
    assert!(
        bytes >= MAX_BATCH_BYTES && bytes < MAX_BATCH_BYTES + fire_bytes,
        "{bytes} bytes in {} fires",
        batch.len()
    );
    // The rest wait for the next entry, in order.
    let next = take_batch(rx.try_recv().unwrap(), &mut rx);
    assert_eq!(next[0].0.idempotency_key, format!("e:{}", batch.len()));
}
