//! Extensions, subscriptions and fires: settings validation, idempotency keys, overlap policies, catch-up
//! skips, and the buffered fire that starts when the previous run ends.

use std::collections::BTreeMap;

use super::*;
use crate::triggers::SettingSpec;
use crate::{Applied, AttemptOutcome, AttemptRef, Command, RunState};

fn spec(name: &str, required: bool) -> SettingSpec {
    SettingSpec {
        name: name.into(),
        required,
        description: String::new(),
        secret: false,
    }
}

fn registration(settings: Vec<SettingSpec>) -> Registration {
    Registration {
        version: "1".into(),
        documentation: String::new(),
        settings,
        registered_at: 1,
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A state with pipeline `p` (one task) and the built-in `interval` extension registered.
fn state() -> State {
    let mut state = crate::testing::with_pipeline(r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#);
    let settings = vec![
        spec("every", true),
        spec("jitter", false),
        spec("overlap", false),
        spec("catchup_window", false),
    ];
    state
        .apply(&Command::RegisterExtension {
            name: "interval".into(),
            builtin: true,
            registration: registration(settings),
            at: 1,
        })
        .unwrap();
    state
}

fn subscribe(state: &mut State, label: &str, settings: &[(&str, &str)]) -> Result<Applied, Error> {
    state.apply(&Command::CreateSubscription {
        namespace: "default".into(),
        pipeline: "p".into(),
        label: label.into(),
        extension: "interval".into(),
        settings: map(settings),
        at: 10,
    })
}

fn fire(label: &str, key: &str, scheduled_at: i64) -> Fire {
    Fire {
        namespace: "default".into(),
        pipeline: "p".into(),
        subscription: label.into(),
        extension: "interval".into(),
        idempotency_key: key.into(),
        scheduled_at,
        delivery: String::new(),
        parameters: BTreeMap::new(),
    }
}

fn apply_fire(state: &mut State, fire: Fire) -> Result<(FireOutcome, bool), Error> {
    match state
        .apply(&Command::Fire {
            fires: vec![fire],
            at: 20,
        })
        .unwrap()
    {
        Applied::Fired(mut results) => results.remove(0),
        other => panic!("{other:?}"),
    }
}

fn finish(state: &mut State, run: u64) {
    let target = AttemptRef {
        namespace: "default".into(),
        pipeline: "p".into(),
        run,
        task: "a".into(),
    };
    state
        .apply(&Command::AssignAttempt {
            target: target.clone(),
            attempt: 1,
            executor: "e".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at: 30,
        })
        .unwrap();
    state
        .apply(&Command::AttemptFinished {
            target,
            attempt: 1,
            executor: String::new(),
            outcome: AttemptOutcome::Exited(0),
            log_node: 0,
            at: 31,
        })
        .unwrap();
}

fn subscription<'a>(state: &'a State, label: &str) -> &'a Subscription {
    &state.pipeline("default", "p").unwrap().subscriptions[label]
}

fn field_of(result: Result<Applied, Error>) -> String {
    match result {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn subscription_settings_are_checked_against_the_registration() {
    let mut state = state();
    let before = state.clone();
    assert_eq!(field_of(subscribe(&mut state, "s", &[])), "settings.every");
    assert_eq!(
        field_of(subscribe(&mut state, "s", &[("every", "1s"), ("colour", "red")])),
        "settings.colour"
    );
    assert_eq!(
        field_of(subscribe(&mut state, "s", &[("every", "100ms")])),
        "settings.every"
    );
    assert_eq!(
        field_of(subscribe(&mut state, "s", &[("every", "1s"), ("overlap", "maybe")])),
        "settings.overlap"
    );
    assert_eq!(
        field_of(subscribe(&mut state, "Bad Label", &[("every", "1s")])),
        "label"
    );
    assert_eq!(state, before, "refused subscriptions store nothing");
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    assert!(matches!(
        subscribe(&mut state, "s", &[("every", "1s")]),
        Err(Error::AlreadyExists(_))
    ));
}

#[test]
fn an_extension_must_be_installed_and_registered_before_it_is_subscribed_to() {
    let mut state = state();
    let custom = Command::RegisterExtension {
        name: "custom".into(),
        builtin: false,
        registration: registration(vec![]),
        at: 2,
    };
    assert!(matches!(state.apply(&custom), Err(Error::NotFound(_))));
    state
        .apply(&Command::InstallExtension {
            name: "custom".into(),
            image: "img:1".into(),
            settings: BTreeMap::new(),
            at: 2,
        })
        .unwrap();
    let early = state.apply(&Command::CreateSubscription {
        namespace: "default".into(),
        pipeline: "p".into(),
        label: "x".into(),
        extension: "custom".into(),
        settings: BTreeMap::new(),
        at: 3,
    });
    assert!(matches!(early, Err(Error::FailedPrecondition(_))), "{early:?}");
    state.apply(&custom).unwrap();
    assert!(state.extensions["custom"].registration.is_some());
    // A built-in cannot be claimed by another name, nor uninstalled.
    let fake = Command::RegisterExtension {
        name: "mine".into(),
        builtin: true,
        registration: registration(vec![]),
        at: 2,
    };
    assert!(state.apply(&fake).is_err());
    assert!(
        state
            .apply(&Command::UninstallExtension {
                name: "interval".into(),
                at: 4
            })
            .is_err()
    );
}

#[test]
fn the_same_key_never_makes_a_second_run() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    let first = apply_fire(&mut state, fire("s", "k1", 1_000)).unwrap();
    assert_eq!(first, (FireOutcome::Started(1), false));
    let again = apply_fire(&mut state, fire("s", "k1", 1_000)).unwrap();
    assert_eq!(again, (FireOutcome::Started(1), true));
    assert_eq!(state.pipeline("default", "p").unwrap().runs.len(), 1);
    let run = &state.pipeline("default", "p").unwrap().runs[&1];
    let trigger = run.trigger.as_ref().unwrap();
    assert_eq!(
        (
            trigger.extension.as_str(),
            trigger.subscription.as_str(),
            trigger.scheduled_at
        ),
        ("interval", "s", 1_000)
    );
    assert_eq!(subscription(&state, "s").fired, 1);
    assert_eq!(subscription(&state, "s").last_scheduled_at, 1_000);
}

#[test]
fn a_fire_from_another_extension_or_for_an_unknown_subscription_is_refused() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    let mut stranger = fire("s", "k", 1);
    stranger.extension = "cron".into();
    assert!(matches!(
        apply_fire(&mut state, stranger),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        apply_fire(&mut state, fire("nope", "k", 1)),
        Err(Error::NotFound(_))
    ));
    assert!(state.pipeline("default", "p").unwrap().runs.is_empty());
}

#[test]
fn overlap_skip_drops_fires_while_the_previous_run_goes() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s"), ("overlap", "skip")]).unwrap();
    assert_eq!(
        apply_fire(&mut state, fire("s", "k1", 1)).unwrap().0,
        FireOutcome::Started(1)
    );
    assert!(matches!(
        apply_fire(&mut state, fire("s", "k2", 2)).unwrap().0,
        FireOutcome::Skipped(_)
    ));
    assert_eq!(subscription(&state, "s").skipped, 1);
    assert!(subscription(&state, "s").recent_skips[0].reason.contains("run 1"));
    finish(&mut state, 1);
    assert_eq!(
        apply_fire(&mut state, fire("s", "k3", 3)).unwrap().0,
        FireOutcome::Started(2)
    );
}

#[test]
fn overlap_buffer_one_starts_one_fire_when_the_previous_run_ends() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s"), ("overlap", "buffer_one")]).unwrap();
    apply_fire(&mut state, fire("s", "k1", 1)).unwrap();
    assert_eq!(
        apply_fire(&mut state, fire("s", "k2", 2)).unwrap().0,
        FireOutcome::Buffered
    );
    assert!(matches!(
        apply_fire(&mut state, fire("s", "k3", 3)).unwrap().0,
        FireOutcome::Skipped(_)
    ));
    assert_eq!(state.pipeline("default", "p").unwrap().runs.len(), 1);
    finish(&mut state, 1);
    let runs = &state.pipeline("default", "p").unwrap().runs;
    assert_eq!(runs.len(), 2, "the buffered fire started when run 1 ended");
    assert_eq!(runs[&2].trigger.as_ref().unwrap().idempotency_key, "k2");
    assert!(subscription(&state, "s").buffered.is_none());
    // The buffered key now says which run it made.
    assert_eq!(
        apply_fire(&mut state, fire("s", "k2", 2)).unwrap(),
        (FireOutcome::Started(2), true)
    );
}

#[test]
fn overlap_cancel_other_replaces_the_previous_run() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s"), ("overlap", "cancel_other")]).unwrap();
    apply_fire(&mut state, fire("s", "k1", 1)).unwrap();
    assert_eq!(
        apply_fire(&mut state, fire("s", "k2", 2)).unwrap().0,
        FireOutcome::Started(2)
    );
    let runs = &state.pipeline("default", "p").unwrap().runs;
    assert_eq!(runs[&1].state, RunState::Cancelled);
    assert!(runs[&1].reason.contains("cancel_other"));
    assert_eq!(runs[&2].state, RunState::Pending);
}

#[test]
fn overlap_allow_runs_side_by_side() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    apply_fire(&mut state, fire("s", "k1", 1)).unwrap();
    assert_eq!(
        apply_fire(&mut state, fire("s", "k2", 2)).unwrap().0,
        FireOutcome::Started(2)
    );
}

#[test]
fn skipped_catch_up_instants_are_counted_once() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    let skip = |last: i64| Command::SkipFires {
        namespace: "default".into(),
        pipeline: "p".into(),
        label: "s".into(),
        count: 5,
        last_scheduled_at: last,
        reason: "older than the catch-up window".into(),
        at: 50,
    };
    state.apply(&skip(40)).unwrap();
    assert_eq!(subscription(&state, "s").skipped, 5);
    assert_eq!(subscription(&state, "s").last_scheduled_at, 40);
    // Replayed by a restarted trigger: the instants are not newer, so nothing is counted twice.
    state.apply(&skip(40)).unwrap();
    assert_eq!(subscription(&state, "s").skipped, 5);
}

#[test]
fn an_extension_with_subscriptions_cannot_be_uninstalled() {
    let mut state = state();
    state
        .apply(&Command::InstallExtension {
            name: "custom".into(),
            image: "img:1".into(),
            settings: BTreeMap::new(),
            at: 2,
        })
        .unwrap();
    state
        .apply(&Command::RegisterExtension {
            name: "custom".into(),
            builtin: false,
            registration: registration(vec![]),
            at: 2,
        })
        .unwrap();
    state
        .apply(&Command::CreateSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "x".into(),
            extension: "custom".into(),
            settings: BTreeMap::new(),
            at: 3,
        })
        .unwrap();
    assert!(matches!(
        state.apply(&Command::UninstallExtension {
            name: "custom".into(),
            at: 4
        }),
        Err(Error::FailedPrecondition(_))
    ));
    state
        .apply(&Command::DeleteSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "x".into(),
            at: 5,
        })
        .unwrap();
    state
        .apply(&Command::UninstallExtension {
            name: "custom".into(),
            at: 6,
        })
        .unwrap();
    assert!(!state.extensions.contains_key("custom"));
}

#[test]
fn skips_count_even_when_caught_up_fires_commit_first() {
    // A restarted trigger sends its catch-up fires and its skip record at once; whichever commits first,
    // the skipped instants are counted once.
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    apply_fire(&mut state, fire("s", "late", 100)).unwrap();
    let skip = Command::SkipFires {
        namespace: "default".into(),
        pipeline: "p".into(),
        label: "s".into(),
        count: 3,
        last_scheduled_at: 40,
        reason: "older than the catch-up window".into(),
        at: 50,
    };
    state.apply(&skip).unwrap();
    state.apply(&skip).unwrap();
    assert_eq!(subscription(&state, "s").skipped, 3);
    assert_eq!(subscription(&state, "s").last_scheduled_at, 100);
}

#[test]
fn a_recreated_subscription_remembers_the_keys_it_fired() {
    let mut state = state();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    apply_fire(&mut state, fire("s", "k1", 1)).unwrap();
    state
        .apply(&Command::DeleteSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "s".into(),
            at: 5,
        })
        .unwrap();
    subscribe(&mut state, "s", &[("every", "1s")]).unwrap();
    assert_eq!(
        apply_fire(&mut state, fire("s", "k1", 1)).unwrap(),
        (FireOutcome::Started(1), true)
    );
    assert_eq!(state.pipeline("default", "p").unwrap().runs.len(), 1);
}

#[test]
fn a_webhook_needs_a_secret_and_well_formed_fields() {
    let mut state = state();
    let webhook = vec![spec("secret", true), spec("fields", false)];
    state
        .apply(&Command::RegisterExtension {
            name: "webhook".into(),
            builtin: true,
            registration: registration(webhook),
            at: 1,
        })
        .unwrap();
    let create = |state: &mut State, settings: &[(&str, &str)]| {
        state.apply(&Command::CreateSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "w".into(),
            extension: "webhook".into(),
            settings: map(settings),
            at: 10,
        })
    };
    assert_eq!(field_of(create(&mut state, &[("secret", "")])), "settings.secret");
    assert_eq!(field_of(create(&mut state, &[("secret", "  ")])), "settings.secret");
    for fields in [",", "a..b", "", "ref,"] {
        assert_eq!(
            field_of(create(&mut state, &[("secret", "k"), ("fields", fields)])),
            "settings.fields",
            "{fields:?}"
        );
    }
    // A new subscription's secret must be long enough, but apply still takes a short one, as logs written
    // before the rule hold them.
    let new = |settings: &[(&str, &str)]| crate::triggers::check_new_subscription("webhook", &map(settings));
    match new(&[("secret", "k")]) {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "settings.secret"),
        other => panic!("{other:?}"),
    }
    assert!(new(&[("secret", "0123456789abcdef")]).is_ok());
    assert!(
        crate::triggers::check_new_subscription("interval", &map(&[("every", "1m")])).is_ok(),
        "only webhooks have a secret"
    );
    create(&mut state, &[("secret", "k"), ("fields", "ref, repository.full_name")]).unwrap();
}

/// The subscriptions' generation moves with a command that may change them, not with the frequent writes
/// (runs, fires), and never makes two states unequal: it is not part of what the state is.
#[test]
fn the_subscriptions_generation_moves_with_subscription_changes_not_with_runs_or_fires() {
    let mut state = state();
    let generation = |s: &State| s.subscriptions_changed.0;
    let before = generation(&state);
    subscribe(&mut state, "s", &[("every", "1m")]).unwrap();
    let subscribed = generation(&state);
    assert!(subscribed > before);
    let copy = state.clone();
    state
        .apply(&Command::Fire {
            fires: vec![fire("s", "k1", 60_000)],
            at: 60_001,
        })
        .unwrap();
    state
        .apply(&Command::CreateNamespace {
            namespace: "other".into(),
            at: 60_002,
        })
        .unwrap();
    assert_eq!(generation(&state), subscribed, "a fire and a namespace leave it");
    state
        .apply(&Command::DeleteSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "s".into(),
            at: 60_003,
        })
        .unwrap();
    assert!(generation(&state) > subscribed);
    // Not part of the state: a decoded state starts at 0 and equals the one it was encoded from.
    let decoded: State = serde_json::from_str(&serde_json::to_string(&copy).unwrap()).unwrap();
    assert_eq!(generation(&decoded), 0);
    assert_eq!(decoded, copy);
}
