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
