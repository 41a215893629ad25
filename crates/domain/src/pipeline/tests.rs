//! The DAG rules, each refusal checked for the field it names.

use super::*;

fn parse(json: &str) -> Result<PipelineConfig, Error> {
    PipelineConfig::from_json(json)
}

fn field_of(json: &str) -> String {
    match parse(json).unwrap_err() {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

const HELLO: &str = r#"{"id": "hello", "name": "Hello", "description": "optional", "parallelism": 0,
 "tasks": [
   {"id": "a", "image": "demo/busybox:1", "command": ["sh", "-c", "echo hi"], "env": {"K": "V"}},
   {"id": "b", "image": "demo/busybox:1", "command": ["sh", "-c", "echo after"], "depends_on": {"a": "success"}}
 ]}"#;

#[test]
fn the_documented_example_parses() {
    let config = parse(HELLO).unwrap();
    assert_eq!(config.id, "hello");
    assert_eq!(config.tasks.len(), 2);
    assert_eq!(config.tasks[1].depends_on["a"], Condition::Success);
    assert_eq!(config.tasks[0].env["K"], "V");
    assert_eq!(parse(&config.to_json_pretty()).unwrap(), config);
}

#[test]
fn malformed_json_is_refused() {
    assert_eq!(field_of("{\"id\": "), "id");
    assert_eq!(field_of("[1, 2]"), "pipeline");
    assert_eq!(field_of("{\"id\": \"x\", \"tasks\": []} trailing"), "pipeline");
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "image": "i", "depends_on": {"b": "sometimes"}}]}"#),
        "tasks[0].depends_on.b"
    );
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "imag": "i"}]}"#),
        "tasks[0].imag"
    );
}

#[test]
fn duplicate_and_empty_task_ids_are_refused() {
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "image": "i"}, {"id": "a", "image": "i"}]}"#),
        "tasks[1].id"
    );
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "", "image": "i"}]}"#),
        "tasks[0].id"
    );
}

#[test]
fn unknown_and_self_dependencies_are_refused() {
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "image": "i", "depends_on": {"zz": "any"}}]}"#),
        "tasks[0].depends_on.zz"
    );
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "image": "i", "depends_on": {"a": "any"}}]}"#),
        "tasks[0].depends_on.a"
    );
}

#[test]
fn cycles_are_refused_with_their_path() {
    let err = parse(
        r#"{"id": "x", "tasks": [
        {"id": "a", "image": "i", "depends_on": {"c": "any"}},
        {"id": "b", "image": "i", "depends_on": {"a": "any"}},
        {"id": "c", "image": "i", "depends_on": {"b": "success"}},
        {"id": "d", "image": "i"}]}"#,
    )
    .unwrap_err();
    let text = err.to_string();
    let path = text.strip_prefix("tasks: depends_on forms a cycle: ").expect(&text);
    let hops: Vec<&str> = path.split(" -> ").collect();
    assert_eq!(hops.len(), 4, "{text}");
    assert_eq!(hops.first(), hops.last());
    for task in ["a", "b", "c"] {
        assert!(hops.contains(&task), "{text}");
    }
}

#[test]
fn a_long_chain_is_not_a_cycle() {
    let tasks: Vec<String> = (0..200)
        .map(|i| {
            if i == 0 {
                r#"{"id": "t0", "image": "i"}"#.to_string()
            } else {
                format!(
                    r#"{{"id": "t{i}", "image": "i", "depends_on": {{"t{}": "success"}}}}"#,
                    i - 1
                )
            }
        })
        .collect();
    let json = format!(r#"{{"id": "x", "tasks": [{}]}}"#, tasks.join(","));
    assert_eq!(parse(&json).unwrap().tasks.len(), 200);
}

#[test]
fn empty_image_bad_ids_and_too_many_tasks_are_refused() {
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "image": " "}]}"#),
        "tasks[0].image"
    );
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a", "image": ""}]}"#),
        "tasks[0].image"
    );
    assert_eq!(
        field_of(r#"{"id": "Hello", "tasks": [{"id": "a", "image": "i"}]}"#),
        "id"
    );
    assert_eq!(
        field_of(r#"{"id": "x", "tasks": [{"id": "a.b", "image": "i"}]}"#),
        "tasks[0].id"
    );
    let long = "y".repeat(65);
    assert_eq!(
        field_of(&format!(
            r#"{{"id": "{long}", "tasks": [{{"id": "a", "image": "i"}}]}}"#
        )),
        "id"
    );
    assert_eq!(field_of(r#"{"id": "x", "tasks": []}"#), "tasks");
    let tasks: Vec<String> = (0..201).map(|i| format!(r#"{{"id": "t{i}", "image": "i"}}"#)).collect();
    assert_eq!(
        field_of(&format!(r#"{{"id": "x", "tasks": [{}]}}"#, tasks.join(","))),
        "tasks"
    );
}

#[test]
fn image_references_are_checked() {
    for good in [
        "gofer/toolbox:1",
        "busybox",
        "localhost:5000/a/b:c",
        "Registry.Example.com/x/y",
        "x@sha256:abcd",
        "a_b/c.d-e:1.2-rc_3",
    ] {
        let json = format!(r#"{{"id": "x", "tasks": [{{"id": "a", "image": "{good}"}}]}}"#);
        assert!(parse(&json).is_ok(), "{good}");
    }
    for bad in [
        "UPPER/Case::bad@@",
        "Upper:1",
        "a/B",
        "x:",
        "x@sha256:",
        "a//b",
        "x:bad tag",
    ] {
        let json = format!(r#"{{"id": "x", "tasks": [{{"id": "a", "image": "{bad}"}}]}}"#);
        assert_eq!(field_of(&json), "tasks[0].image", "{bad}");
    }
}

#[test]
fn a_task_user_is_a_name_or_id_with_an_optional_group() {
    for good in [
        "1000",
        "1000:1000",
        "nobody",
        "nobody:nogroup",
        "app_user.1",
        "0:0",
        "4294967294",
    ] {
        let json = format!(r#"{{"id": "x", "tasks": [{{"id": "a", "image": "i", "user": "{good}"}}]}}"#);
        let config = parse(&json).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(config.tasks[0].user, good);
        assert_eq!(parse(&config.to_json_pretty()).unwrap(), config);
    }
    for bad in [
        "",
        ":",
        "1000:",
        ":1000",
        "a:b:c",
        "-rf",
        "has space",
        "4294967295",
        "99999999999",
        "x/y",
        "ünïcode",
        "a-name-that-is-far-too-long-for-linux",
    ] {
        let json = serde_json::json!({"id": "x", "tasks": [{"id": "a", "image": "i", "user": bad}]}).to_string();
        if bad.is_empty() {
            // Empty means the image's own user, as if the field were absent.
            assert_eq!(parse(&json).unwrap().tasks[0].user, "");
            continue;
        }
        assert_eq!(field_of(&json), "tasks[0].user", "{bad:?}");
    }
    // Without a user the JSON form has no `user` key, so configs written before it existed read alike.
    let plain = parse(r#"{"id": "x", "tasks": [{"id": "a", "image": "i"}]}"#).unwrap();
    assert!(!plain.to_json_pretty().contains("user"));
}

#[test]
fn fields_that_would_give_a_task_power_over_the_host_are_refused_saying_why() {
    for (field, value, why) in [
        ("privileged", "true", "tasks never run privileged"),
        ("privileged", "false", "tasks never run privileged"),
        ("volumes", r#"["/:/host"]"#, "host mounts"),
        ("mounts", r#"[{"source": "/var/run/docker.sock"}]"#, "host mounts"),
        (
            "binds",
            r#"["/var/run/docker.sock:/var/run/docker.sock"]"#,
            "host mounts",
        ),
        ("devices", r#"["/dev/sda"]"#, "host devices"),
        ("network", r#""host""#, "host network"),
        ("network_mode", r#""host""#, "host network"),
        ("cap_add", r#"["SYS_ADMIN"]"#, "capabilities"),
        ("security_opt", r#"["seccomp=unconfined"]"#, "no-new-privileges"),
        ("pid", r#""host""#, "host's processes"),
        ("ipc", r#""host""#, "IPC"),
    ] {
        let json = format!(
            r#"{{"id": "x", "tasks": [{{"id": "a", "image": "i"}}, {{"id": "b", "image": "i", "{field}": {value}}}]}}"#
        );
        match parse(&json) {
            Err(Error::InvalidArgument { field: named, reason }) => {
                assert_eq!(named, format!("tasks[1].{field}"));
                assert!(reason.contains(why), "{field}: {reason}");
            }
            other => panic!("{field}: {other:?}"),
        }
        // Clients read pipelines with `parse_json`, which refuses them alike.
        assert!(PipelineConfig::parse_json(&json).is_err(), "{field}");
    }
}
