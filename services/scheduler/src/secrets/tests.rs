//! A Start gets the values of the secrets its task's own env names, and nothing when one is missing or
//! not allowed; run parameters are never resolved.

use std::collections::BTreeMap;

use gofer_domain::secrets::SecretScope;
use gofer_domain::{AttemptRef, Command, PipelineConfig, State};
use gofer_secrets::{Key, Keyring};

use super::resolve;

fn keyring() -> Keyring {
    Keyring::new(Key::from_bytes(&[3; 32]), vec![])
}

/// A cluster with pipeline `p` in `namespace`, whose task `a` has `env`, one run started with
/// `parameters`, and the attempt assigned.
fn state(namespace: &str, env: &str, parameters: &[(&str, &str)]) -> State {
    let mut state = State::default();
    let json = format!(r#"{{"id": "p", "tasks": [{{"id": "a", "image": "i", "env": {env}}}]}}"#);
    let mut commands = vec![Command::Init {
        cluster_id: "c".into(),
        at: 1,
    }];
    if namespace != "default" {
        commands.push(Command::CreateNamespace {
            namespace: namespace.into(),
            at: 1,
        });
    }
    commands.extend([
        Command::RegisterPipeline {
            namespace: namespace.into(),
            config: PipelineConfig::from_json(&json).unwrap(),
            at: 2,
        },
        Command::StartRun {
            namespace: namespace.into(),
            pipeline: "p".into(),
            request_id: String::new(),
            parameters: parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            retry_of: 0,
            at: 3,
        },
        Command::AssignAttempt {
            target: AttemptRef {
                namespace: namespace.into(),
                pipeline: "p".into(),
                run: 1,
                task: "a".into(),
            },
            attempt: 1,
            executor: "e1".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at: 4,
        },
    ]);
    for command in &commands {
        state.apply(command).unwrap();
    }
    state
}

fn put(state: &mut State, scope: SecretScope, key: &str, value: &str, namespaces: &[&str]) {
    let sealed = keyring().seal(&scope.associated_data(key), value.as_bytes()).unwrap();
    state
        .apply(&Command::PutSecret {
            scope,
            key: key.into(),
            value: sealed,
            size: value.len() as u64,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            at: 5,
        })
        .unwrap();
}

fn start_of(state: &State) -> gofer_proto::v1::StartAttempt {
    let mut live = crate::reconcile::live_attempts(state);
    assert_eq!(live.len(), 1);
    let mut attempt = live.remove(0);
    resolve(state, &keyring(), "https://node1:7443", &attempt.id, &mut attempt.start);
    attempt.start
}

fn pipeline(namespace: &str) -> SecretScope {
    SecretScope::Pipeline {
        namespace: namespace.into(),
        pipeline: "p".into(),
    }
}

#[test]
fn a_start_carries_the_values_its_own_env_names_and_the_env_keeps_the_placeholders() {
    let env = r#"{"DB": "pg://u:secret{{db_pass}}@h", "HOOK": "global_secret{{slack}}", "PLAIN": "x"}"#;
    let mut state = state("team-a", env, &[("P", "secret{{db_pass}}")]);
    put(&mut state, pipeline("team-a"), "db_pass", "hunter2-db", &[]);
    put(&mut state, SecretScope::Global, "slack", "xoxb-slack", &["team-*"]);
    let start = start_of(&state);
    assert_eq!(start.secret_error, "");
    assert_eq!(
        start
            .secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<BTreeMap<_, _>>(),
        BTreeMap::from([
            ("global_secret{{slack}}", "xoxb-slack"),
            ("secret{{db_pass}}", "hunter2-db")
        ])
    );
    let mut names = start.secret_env.clone();
    names.sort();
    assert_eq!(names, ["DB", "HOOK"], "a run parameter is never resolved");
    assert_eq!(start.env["DB"], "pg://u:secret{{db_pass}}@h");
    assert_eq!(start.env["P"], "secret{{db_pass}}");
}

#[test]
fn a_missing_or_not_allowed_secret_sends_no_value_and_names_the_key() {
    let env = r#"{"A": "secret{{present}}", "B": "secret{{absent}}"}"#;
    let mut state = state("default", env, &[]);
    put(&mut state, pipeline("default"), "present", "value-present", &[]);
    let start = start_of(&state);
    assert!(start.secrets.is_empty(), "no value travels when one is missing");
    assert!(start.secret_env.is_empty());
    assert_eq!(
        start.secret_error,
        "env B: secret \"absent\" of pipeline default/p not found"
    );

    let mut state = state_with_global("default");
    put(&mut state, SecretScope::Global, "g", "value-global", &["team-*"]);
    let start = start_of(&state);
    assert!(start.secrets.is_empty());
    assert_eq!(
        start.secret_error,
        "env G: global secret \"g\" is not allowed in namespace \"default\""
    );
    assert!(!start.secret_error.contains("value-global"));
}

fn state_with_global(namespace: &str) -> State {
    state(namespace, r#"{"G": "global_secret{{g}}"}"#, &[])
}

#[test]
fn a_value_sealed_under_a_key_the_scheduler_lacks_fails_the_start_without_its_value() {
    let mut state = state_with_global("default");
    let other = Keyring::new(Key::from_bytes(&[9; 32]), vec![]);
    let sealed = other
        .seal(&SecretScope::Global.associated_data("g"), b"elsewhere")
        .unwrap();
    state
        .apply(&Command::PutSecret {
            scope: SecretScope::Global,
            key: "g".into(),
            value: sealed,
            size: 9,
            namespaces: vec!["*".into()],
            at: 5,
        })
        .unwrap();
    let start = start_of(&state);
    assert!(start.secrets.is_empty());
    assert!(
        start
            .secret_error
            .starts_with("env G: secret \"g\" (global) cannot be opened"),
        "{}",
        start.secret_error
    );
}

/// A task with `inject_api_token` gets its run's token, as a secret so that its output masks it, and the
/// API address; one without gets neither.
#[test]
fn a_task_that_asks_gets_its_runs_token_and_the_api_address() {
    let asking = state("team-a", r#"{"X": "1"}, "inject_api_token": true"#, &[]);
    let start = start_of(&asking);
    assert_eq!(
        start.env.get("GOFER_HOST").map(String::as_str),
        Some("https://node1:7443")
    );
    let placeholder = start.env.get("GOFER_API_TOKEN").expect("the token's env entry");
    assert_eq!(
        placeholder, "secret{{GOFER_API_TOKEN}}",
        "the Start's env holds no token"
    );
    assert!(start.secret_env.contains(&"GOFER_API_TOKEN".to_string()));
    assert!(
        start.api_gateway,
        "the executor is asked to give the task its relay to the API"
    );
    let token = &start.secrets[placeholder];
    let run = keyring()
        .verify_run_token(token)
        .expect("a token the keyring vouches for");
    assert_eq!(
        (run.namespace.as_str(), run.pipeline.as_str(), run.run),
        ("team-a", "p", 1)
    );

    let plain = start_of(&state("team-a", r#"{"X": "1"}"#, &[]));
    assert!(!plain.env.contains_key("GOFER_API_TOKEN") && !plain.env.contains_key("GOFER_HOST"));
    assert!(plain.secrets.is_empty() && !plain.api_gateway);
}
