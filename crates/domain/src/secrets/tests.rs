//! The secret store's rules, the placeholders of a task's env, and re-sealing.

use super::*;
use crate::testing::with_pipeline;
use crate::{Command, PipelineConfig, State};

fn sealed(nonce_char: char) -> Sealed {
    Sealed {
        key_id: "0123456789abcdef".into(),
        nonce: nonce_char.to_string().repeat(16),
        ciphertext: "A".repeat(40),
    }
}

fn pipeline_scope() -> SecretScope {
    SecretScope::Pipeline {
        namespace: "default".into(),
        pipeline: "p".into(),
    }
}

fn put(
    state: &mut State,
    scope: SecretScope,
    key: &str,
    value: Sealed,
    namespaces: &[&str],
    at: i64,
) -> Result<(), Error> {
    state
        .apply(&Command::PutSecret {
            scope,
            key: key.into(),
            value,
            size: 7,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            at,
        })
        .map(drop)
}

const PIPELINE: &str = r#"{"id":"p","tasks":[{"id":"a","image":"x"}]}"#;

#[test]
fn a_pipeline_secret_is_put_replaced_listed_and_deleted_keeping_its_creation_time() {
    let mut state = with_pipeline(PIPELINE);
    put(&mut state, pipeline_scope(), "db_pass", sealed('a'), &[], 10).unwrap();
    put(&mut state, pipeline_scope(), "db_pass", sealed('b'), &[], 20).unwrap();
    let record = state.secrets.get(&pipeline_scope(), "db_pass").unwrap();
    assert_eq!((record.created_at, record.updated_at, record.size), (10, 20, 7));
    assert_eq!(record.value, sealed('b'));
    assert_eq!(
        state
            .secrets
            .of_pipeline("default", "p")
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        ["db_pass"]
    );
    state
        .apply(&Command::DeleteSecret {
            scope: pipeline_scope(),
            key: "db_pass".into(),
            at: 30,
        })
        .unwrap();
    assert!(state.secrets.is_empty(), "an emptied pipeline leaves nothing behind");
    let again = state.apply(&Command::DeleteSecret {
        scope: pipeline_scope(),
        key: "db_pass".into(),
        at: 31,
    });
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
}

#[test]
fn a_secret_is_refused_for_a_missing_pipeline_a_bad_key_a_malformed_value_or_a_misplaced_allow_list() {
    let mut state = with_pipeline(PIPELINE);
    let elsewhere = SecretScope::Pipeline {
        namespace: "default".into(),
        pipeline: "nope".into(),
    };
    assert!(matches!(
        put(&mut state, elsewhere, "k", sealed('a'), &[], 1),
        Err(Error::NotFound(_))
    ));
    let field = |r: Result<(), Error>| match r {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(put(&mut state, pipeline_scope(), "bad key", sealed('a'), &[], 1)),
        "key"
    );
    assert_eq!(field(put(&mut state, pipeline_scope(), "", sealed('a'), &[], 1)), "key");
    let mut short = sealed('a');
    short.key_id = "xyz".into();
    assert_eq!(
        field(put(&mut state, pipeline_scope(), "k", short, &[], 1)),
        "value.key_id"
    );
    assert_eq!(
        field(put(&mut state, pipeline_scope(), "k", sealed('a'), &["team-a"], 1)),
        "namespaces"
    );
    assert_eq!(
        field(put(&mut state, SecretScope::Global, "k", sealed('a'), &[], 1)),
        "namespaces"
    );
    let too_big = state.apply(&Command::PutSecret {
        scope: pipeline_scope(),
        key: "k".into(),
        value: sealed('a'),
        size: (MAX_SECRET_BYTES + 1) as u64,
        namespaces: vec![],
        at: 1,
    });
    assert!(matches!(too_big, Err(Error::InvalidArgument { ref field, .. }) if field == "value"));
    assert!(state.secrets.is_empty(), "nothing refused was stored");
}

#[test]
fn a_global_secret_resolves_only_in_the_namespaces_its_allow_list_matches() {
    let mut state = with_pipeline(PIPELINE);
    put(
        &mut state,
        SecretScope::Global,
        "slack",
        sealed('a'),
        &["team-a-*", "default"],
        1,
    )
    .unwrap();
    let global = Placeholder {
        kind: PlaceholderKind::Global,
        key: "slack",
        text: "global_secret{{slack}}",
        at: 0,
    };
    assert!(state.secrets.resolve("default", "p", &global).is_ok());
    assert!(state.secrets.resolve("team-a-x", "p", &global).is_ok());
    assert_eq!(
        state.secrets.resolve("team-b", "p", &global).unwrap_err(),
        Unresolved::NotAllowed {
            key: "slack".into(),
            namespace: "team-b".into()
        }
    );
    let missing = Placeholder {
        kind: PlaceholderKind::Pipeline,
        key: "db_pass",
        text: "secret{{db_pass}}",
        at: 0,
    };
    let error = state.secrets.resolve("default", "p", &missing).unwrap_err();
    assert_eq!(error.to_string(), "secret \"db_pass\" of pipeline default/p not found");
}

#[test]
fn placeholders_are_found_anywhere_in_a_value_and_substituted_once() {
    let value = "postgres://u:secret{{db_pass}}@h/global_secret{{db}}?x={{y}}";
    let found = placeholders(value).unwrap();
    assert_eq!(
        found.iter().map(|p| (p.kind, p.key, p.text)).collect::<Vec<_>>(),
        [
            (PlaceholderKind::Pipeline, "db_pass", "secret{{db_pass}}"),
            (PlaceholderKind::Global, "db", "global_secret{{db}}"),
        ]
    );
    let out = substitute(value, |p| match p.key {
        "db_pass" => Some("pw"),
        // A value that looks like a placeholder is not resolved again.
        "db" => Some("secret{{db_pass}}"),
        _ => None,
    });
    assert_eq!(out, "postgres://u:pw@h/secret{{db_pass}}?x={{y}}");
    assert_eq!(substitute("plain", |_| Some("x")), "plain");
    assert_eq!(
        substitute("secret{{k}}", |_| None),
        "secret{{k}}",
        "unresolved stays written"
    );
}

#[test]
fn a_malformed_placeholder_is_refused_naming_the_task_and_env_key() {
    for bad in ["secret{{db_pass", "secret{{}}", "secret{{a b}}", "x global_secret{{k"] {
        assert!(placeholders(bad).is_err(), "{bad}");
        let json = format!(
            r#"{{"id":"p","tasks":[{{"id":"a","image":"x"}},{{"id":"b","image":"x","env":{{"OK":"1","DB_PASS":{}}}}}]}}"#,
            serde_json::to_string(bad).unwrap()
        );
        let config = PipelineConfig::from_json(&json).unwrap();
        match check_placeholders(&config) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "tasks[1].env.DB_PASS", "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let fine = PipelineConfig::from_json(
        r#"{"id":"p","tasks":[{"id":"a","image":"x","env":{"A":"secret{{a}}","B":"{{b}}"}}]}"#,
    )
    .unwrap();
    assert_eq!(check_placeholders(&fine), Ok(()));
}

#[test]
fn a_sealed_value_travels_as_text_and_nothing_else_reads_as_one() {
    let value = sealed('z');
    assert_eq!(Sealed::from_text(&value.to_text()), Some(value));
    for other in ["hunter2hunter2hunter2", "sealed:v1:", "sealed:v1:zz:yy:xx", ""] {
        assert_eq!(Sealed::from_text(other), None, "{other}");
    }
}

#[test]
fn resealing_replaces_only_values_unchanged_since_and_seals_clear_settings_once() {
    let mut state = with_pipeline(PIPELINE);
    put(&mut state, pipeline_scope(), "k", sealed('a'), &[], 1).unwrap();
    put(&mut state, pipeline_scope(), "changed", sealed('b'), &[], 1).unwrap();
    // A subscription whose secret setting an older Gofer stored in the clear.
    state.record_mut("default", "p").unwrap().subscriptions.insert(
        "hook".into(),
        serde_json::from_value(serde_json::json!({
            "extension": "webhook",
            "settings": {"secret": "in-the-clear-0123456789"},
            "created_at": 1,
            "last_scheduled_at": 1,
            "last_run": null,
            "fired": 0,
            "skipped": 0,
            "recent_skips": [],
            "buffered": null,
            "keys": [],
        }))
        .unwrap(),
    );
    let secret = |key: &str| ResealTarget::Secret {
        scope: pipeline_scope(),
        key: key.into(),
    };
    let setting = ResealTarget::Setting {
        namespace: "default".into(),
        pipeline: "p".into(),
        label: "hook".into(),
        name: "secret".into(),
    };
    let reseal = |target, previous: char, to: char| Reseal {
        target,
        previous_nonce: if previous == ' ' {
            String::new()
        } else {
            previous.to_string().repeat(16)
        },
        value: sealed(to),
    };
    state
        .apply(&Command::ResealSecrets {
            reseals: vec![
                reseal(secret("k"), 'a', 'c'),
                reseal(secret("changed"), 'x', 'd'),
                reseal(secret("gone"), 'a', 'e'),
                reseal(setting.clone(), ' ', 'f'),
            ],
            at: 2,
        })
        .unwrap();
    assert_eq!(state.secrets.get(&pipeline_scope(), "k").unwrap().value, sealed('c'));
    assert_eq!(
        state.secrets.get(&pipeline_scope(), "changed").unwrap().value,
        sealed('b')
    );
    let stored =
        |state: &State| state.pipeline("default", "p").unwrap().subscriptions["hook"].settings["secret"].clone();
    assert_eq!(stored(&state), sealed('f').to_text());
    // Sealed now, a setting is replaced only from its own nonce, never again as "clear".
    state
        .apply(&Command::ResealSecrets {
            reseals: vec![reseal(setting.clone(), ' ', 'g')],
            at: 3,
        })
        .unwrap();
    assert_eq!(stored(&state), sealed('f').to_text());
    state
        .apply(&Command::ResealSecrets {
            reseals: vec![reseal(setting, 'f', 'h')],
            at: 4,
        })
        .unwrap();
    assert_eq!(stored(&state), sealed('h').to_text());
}

#[test]
fn secret_commands_round_trip_and_a_state_without_secrets_serializes_as_before() {
    let command = Command::PutSecret {
        scope: SecretScope::Global,
        key: "k".into(),
        value: sealed('a'),
        size: 3,
        namespaces: vec!["*".into()],
        at: 5,
    };
    let json = serde_json::to_string(&command).unwrap();
    assert!(
        json.starts_with(r#"{"type":"put_secret","scope":{"kind":"global"}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    let state = with_pipeline(PIPELINE);
    assert!(!serde_json::to_string(&state).unwrap().contains("secrets"));
    let mut with = state.clone();
    put(&mut with, pipeline_scope(), "k", sealed('a'), &[], 1).unwrap();
    let back: State = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
    assert_eq!(back, with);
}

#[test]
fn an_extensions_install_settings_are_resealed_like_a_subscriptions() {
    let mut state = State::default();
    let settings = [
        ("api_key".to_string(), sealed('a').to_text()),
        ("legacy".to_string(), "stored-in-the-clear".to_string()),
    ]
    .into();
    state
        .apply(&Command::InstallExtension {
            name: "chat".into(),
            image: "gofer-test/chat:1".into(),
            settings,
            at: 1,
        })
        .unwrap();
    let target = |name: &str| ResealTarget::ExtensionSetting {
        extension: "chat".into(),
        name: name.into(),
    };
    let reseal = |name: &str, previous: &str, to: char| Reseal {
        target: target(name),
        previous_nonce: previous.to_string(),
        value: sealed(to),
    };
    state
        .apply(&Command::ResealSecrets {
            reseals: vec![
                reseal("api_key", &"x".repeat(16), 'b'),
                reseal("legacy", "", 'c'),
                reseal("missing", "", 'd'),
            ],
            at: 2,
        })
        .unwrap();
    let stored = |state: &State, name: &str| state.extensions["chat"].settings.get(name).cloned();
    assert_eq!(
        stored(&state, "api_key"),
        Some(sealed('a').to_text()),
        "changed since: kept"
    );
    assert_eq!(
        stored(&state, "legacy"),
        Some(sealed('c').to_text()),
        "clear: sealed once"
    );
    assert_eq!(stored(&state, "missing"), None, "nothing is added");
    state
        .apply(&Command::ResealSecrets {
            reseals: vec![reseal("api_key", &"a".repeat(16), 'e')],
            at: 3,
        })
        .unwrap();
    assert_eq!(stored(&state, "api_key"), Some(sealed('e').to_text()));
    let json = serde_json::to_string(&target("api_key")).unwrap();
    assert_eq!(serde_json::from_str::<ResealTarget>(&json).unwrap(), target("api_key"));
}
