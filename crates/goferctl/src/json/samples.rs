//! Fully populated sample messages, one for each message `-o json` prints, for the golden tests: every
//! field is set to something other than its default, so a key that goes missing or a value printed
//! another way shows.

use gofer_proto::v1;
use std::collections::HashMap;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn namespace() -> v1::Namespace {
    v1::Namespace {
        id: "team-a".into(),
        created_unix_millis: 1_700_000_000_123,
    }
}

pub fn pipeline() -> v1::Pipeline {
    v1::Pipeline {
        namespace_id: "team-a".into(),
        id: "nightly".into(),
        name: "Nightly build".into(),
        description: "builds and tests".into(),
        latest_version: 4,
        created_unix_millis: 1_700_000_000_123,
        updated_unix_millis: 1_700_000_500_456,
    }
}

/// A config whose tasks name every dependency condition, the unspecified one and an unknown number too.
pub fn config() -> v1::PipelineConfig {
    let task = |id: &str, depends_on: &[(&str, i32)], cpu: Option<f64>| v1::Task {
        id: id.into(),
        image: "alpine:3".into(),
        command: vec!["sh".into(), "-c".into(), format!("echo {id}")],
        env: map(&[("A", "1"), ("B", "two")]),
        depends_on: depends_on.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        retries: 2,
        backoff: "5s".into(),
        timeout: "5m".into(),
        cpu,
        memory: "256MiB".into(),
        workdir: "/work".into(),
        user: "1000:1000".into(),
        inject_api_token: false,
        executor_labels: map(&[("zone", "a")]),
    };
    v1::PipelineConfig {
        id: "nightly".into(),
        name: "Nightly build".into(),
        description: "builds and tests".into(),
        parallelism: 3,
        keep_runs: 50,
        tasks: vec![
            task("build", &[], Some(0.5)),
            task(
                "test",
                &[
                    ("build", v1::DependencyCondition::Success as i32),
                    ("lint", v1::DependencyCondition::Any as i32),
                    ("notify", v1::DependencyCondition::Failure as i32),
                    ("zero", v1::DependencyCondition::Unspecified as i32),
                ],
                None,
            ),
        ],
    }
}

pub fn trigger() -> v1::RunTrigger {
    v1::RunTrigger {
        extension: "cron".into(),
        subscription: "every-night".into(),
        idempotency_key: "cron/every-night/1700000000000".into(),
        scheduled_unix_millis: 1_700_000_000_000,
        delivery_id: "d-17".into(),
        parameters: map(&[("DAY", "mon")]),
    }
}

/// A run started by a trigger, a retry with parameters.
pub fn run() -> v1::Run {
    v1::Run {
        namespace_id: "team-a".into(),
        pipeline_id: "nightly".into(),
        id: 7,
        version: 4,
        state: v1::RunState::Succeeded as i32,
        state_reason: "all tasks succeeded".into(),
        created_unix_millis: 1_700_000_000_123,
        started_unix_millis: 1_700_000_001_000,
        ended_unix_millis: 1_700_000_009_500,
        trigger: Some(trigger()),
        request_id: "0123456789abcdef0123456789abcdef".into(),
        parameters: map(&[("DAY", "mon"), ("LEVEL", "3")]),
        retry_of: 6,
    }
}

/// A run started by hand (no trigger) in a state this goferctl does not know.
pub fn manual_run() -> v1::Run {
    v1::Run {
        id: u64::MAX,
        state: 99,
        trigger: None,
        ..run()
    }
}

pub fn attempt(attempt: u32, exit_code: Option<i64>) -> v1::Attempt {
    v1::Attempt {
        attempt,
        executor: "exec-1".into(),
        scheduler: "sched-1".into(),
        scheduler_epoch: 3,
        assigned_unix_millis: 1_700_000_001_000,
        started_unix_millis: 1_700_000_001_200,
        ended_unix_millis: 1_700_000_002_000,
        state: "LOST".into(),
        exit_code,
        reason: "executor lease ran out".into(),
        retried: true,
        late_report: "exit 0".into(),
    }
}

/// A task that ran (an exit code, two ended attempts) and one that never did (no exit code).
pub fn tasks() -> Vec<v1::TaskExecution> {
    let ran = v1::TaskExecution {
        namespace_id: "team-a".into(),
        pipeline_id: "nightly".into(),
        run_id: 7,
        task_id: "build".into(),
        state: v1::TaskState::Failed as i32,
        state_reason: "exit code 3".into(),
        attempt: 3,
        exit_code: Some(-3),
        started_unix_millis: 1_700_000_003_000,
        ended_unix_millis: 1_700_000_004_000,
        executor: "exec-2".into(),
        scheduler: "sched-1".into(),
        scheduler_epoch: 3,
        attempts: vec![attempt(1, None), attempt(2, Some(137))],
        not_before_unix_millis: 1_700_000_002_500,
    };
    let never_ran = v1::TaskExecution {
        task_id: "test".into(),
        state: v1::TaskState::Skipped as i32,
        state_reason: "build failed".into(),
        attempt: 0,
        exit_code: None,
        attempts: Vec::new(),
        ..ran.clone()
    };
    vec![ran, never_ran]
}

pub fn extension() -> v1::Extension {
    let setting = |name: &str, required: bool, secret: bool| v1::ExtensionSetting {
        name: name.into(),
        required,
        description: format!("the {name}"),
        secret,
    };
    v1::Extension {
        name: "ticker".into(),
        image: "gofer/ticker:1".into(),
        builtin: true,
        installed_unix_millis: 1_700_000_000_123,
        registered: true,
        version: "1.2.3".into(),
        documentation: "Fires every tick.".into(),
        settings: vec![setting("every", true, false), setting("token", false, true)],
        connected: true,
        last_error: "image not found".into(),
    }
}

pub fn subscription() -> v1::Subscription {
    v1::Subscription {
        namespace_id: "team-a".into(),
        pipeline_id: "nightly".into(),
        label: "every-night".into(),
        extension: "cron".into(),
        settings: map(&[("expression", "0 3 * * *"), ("secret", "********")]),
        created_unix_millis: 1_700_000_000_123,
        fired: 12,
        skipped: 2,
        last_scheduled_unix_millis: 1_700_000_000_000,
        last_run_id: 7,
        buffered: true,
        recent_skips: vec![v1::SkippedFire {
            at_unix_millis: 1_700_000_100_000,
            scheduled_unix_millis: 1_700_000_090_000,
            reason: "the last run had not ended".into(),
        }],
        webhook_url: "https://gofer.example/hooks/abc".into(),
    }
}

pub fn cluster_status() -> v1::GetClusterStatusResponse {
    v1::GetClusterStatusResponse {
        node_id: 1,
        leader_id: 2,
        term: 5,
        last_log_index: 120,
        applied_index: 119,
        nodes: vec![v1::ClusterNode {
            id: 2,
            address: "https://node2:7444".into(),
            role: "LEADER".into(),
            matched_index: 120,
            blob_count: 12,
            blob_bytes: 40960,
            blob_backlog: 1,
        }],
        cluster_id: "c-0f3a".into(),
        leases: vec![v1::RoleLease {
            role: "scheduler".into(),
            holder: "node2".into(),
            epoch: 3,
            expires_unix_millis: 1_700_000_010_000,
            commands: 44,
            address: "https://node2:7443".into(),
        }],
        state_digest: "9f86d081884c7d65".into(),
        shared_blob_count: 0,
        shared_blob_bytes: 0,
        executors: vec![v1::ExecutorStatus {
            id: "exec-1".into(),
            capacity: 4,
            labels: map(&[("zone", "a")]),
            expires_unix_millis: 1_700_000_010_000,
            lost_unix_millis: 1_700_000_020_000,
            live_attempts: 2,
        }],
    }
}

/// One event of each kind, one whose kind this goferctl does not know, and one fire with a decision it
/// does not know.
pub fn events() -> Vec<v1::Event> {
    use v1::event::Kind;
    let event = |id: u64, kind: Option<Kind>| v1::Event {
        id,
        emitted_unix_millis: 1_700_000_000_000 + id as i64,
        namespace_id: "team-a".into(),
        pipeline_id: "nightly".into(),
        kind,
    };
    let fire = |decision: i32| v1::FireEvent {
        subscription_label: "every-night".into(),
        extension: "cron".into(),
        idempotency_key: "cron/every-night/1700000000000".into(),
        scheduled_unix_millis: 1_700_000_000_000,
        decision,
        run_id: 7,
        reason: "the last run had not ended".into(),
    };
    vec![
        event(
            1,
            Some(Kind::Run(v1::RunEvent {
                run_id: 7,
                state: v1::RunState::Failed as i32,
                reason: "task build failed".into(),
            })),
        ),
        event(
            2,
            Some(Kind::Task(v1::TaskEvent {
                run_id: 7,
                task_id: "build".into(),
                attempt: 2,
                state: v1::TaskState::Pending as i32,
                reason: "retrying".into(),
            })),
        ),
        event(3, Some(Kind::Fire(fire(v1::FireDecision::Buffered as i32)))),
        event(4, Some(Kind::Fire(fire(42)))),
        event(
            5,
            Some(Kind::FiresSkipped(v1::FiresSkippedEvent {
                subscription_label: "every-night".into(),
                count: 3,
                last_scheduled_unix_millis: 1_700_000_000_000,
                reason: "goferd was down".into(),
            })),
        ),
        event(6, None),
    ]
}

/// A log chunk that is not valid UTF-8 throughout.
pub fn log_chunk() -> v1::GetTaskLogsResponse {
    v1::GetTaskLogsResponse {
        data: b"hello \xff world\n".to_vec(),
    }
}
