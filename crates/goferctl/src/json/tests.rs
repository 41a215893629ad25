//! The generated `-o json` against golden files: `golden/*.json` is what the hand-written output of
//! goferctl before it printed for the messages in `samples.rs` (commit b95ddca checked it against that
//! code), so every key and value it had must come out the same.

use serde_json::{Value, json};

use super::{pool, samples, value, values};

fn golden(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/json/golden/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn namespaces_pipelines_and_runs_print_as_before() {
    assert_eq!(value(&samples::namespace()), golden("namespace"));
    assert_eq!(value(&samples::pipeline()), golden("pipeline"));
    let register = gofer_proto::v1::RegisterPipelineResponse {
        pipeline: Some(samples::pipeline()),
        version: 4,
    };
    assert_eq!(value(&register), golden("pipeline_register"));
    assert_eq!(value(&samples::run()), golden("run"));
    assert_eq!(value(&samples::manual_run()), golden("run_manual"));
}

#[test]
fn a_started_run_prints_as_before_with_created() {
    let mut started = value(&samples::run());
    started["created"] = false.into();
    assert_eq!(started, golden("run_started"));
}

#[test]
fn a_pipeline_with_its_config_prints_as_before_and_with_the_fields_the_old_output_left_out() {
    let mut printed = value(&samples::pipeline());
    printed["config"] = value(&samples::config());
    // The hand-written output had no keep_runs and only five of a task's fields: these proto fields
    // were added after it was written, and showing them is what generating the output is for.
    let mut expected = golden("pipeline_get");
    expected["config"]["keep_runs"] = json!(50);
    let tasks = expected["config"]["tasks"]
        .as_array_mut()
        .expect("the golden config has tasks");
    for (task, cpu) in tasks.iter_mut().zip([json!(0.5), Value::Null]) {
        let missed = json!({
            "retries": 2, "backoff": "5s", "timeout": "5m", "cpu": cpu, "memory": "256MiB", "workdir": "/work",
            "user": "1000:1000", "inject_api_token": false, "executor_labels": {"zone": "a"},
        });
        for (key, value) in missed.as_object().expect("an object") {
            task[key] = value.clone();
        }
    }
    assert_eq!(printed, expected);
}

#[test]
fn tasks_extensions_subscriptions_and_the_cluster_print_as_before() {
    assert_eq!(values(&samples::tasks()), golden("tasks"));
    assert_eq!(value(&samples::extension()), golden("extension"));
    assert_eq!(value(&samples::subscription()), golden("subscription"));
    assert_eq!(value(&samples::cluster_status()), golden("cluster_status"));
}

#[test]
fn events_print_as_before_with_their_kind_named() {
    assert_eq!(values(&samples::events()), golden("events"));
}

#[test]
fn a_log_chunk_prints_its_bytes_as_text() {
    assert_eq!(value(&samples::log_chunk()), golden("log_chunk"));
}

/// Every field of every message shows, even at its default: a field added to the proto needs no code.
#[test]
fn every_field_of_every_message_has_a_key() {
    let mut checked = 0;
    for descriptor in pool().all_messages().filter(|m| !m.is_map_entry()) {
        let printed = super::dynamic_value(&prost_reflect::DynamicMessage::new(descriptor.clone()));
        let object = printed.as_object().expect("a message prints as an object");
        for field in descriptor.fields() {
            let in_oneof = field.containing_oneof().is_some_and(|o| !o.is_synthetic());
            assert!(
                in_oneof || object.contains_key(field.name()),
                "{} has no key {}: {printed}",
                descriptor.full_name(),
                field.name()
            );
        }
        for oneof in descriptor.oneofs().filter(|o| !o.is_synthetic()) {
            assert_eq!(object[oneof.name()], "unknown", "{}", descriptor.full_name());
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} messages in the descriptor set");
}

#[test]
fn enum_prefixes_follow_the_type_name() {
    assert_eq!(super::upper_snake_case("RunState"), "RUN_STATE");
    assert_eq!(super::upper_snake_case("DependencyCondition"), "DEPENDENCY_CONDITION");
}
