//! What the unit tests share: a single state node with pipeline `p` and the built-in extensions.

use gofer_domain::{Command, PipelineConfig};
use gofer_state::{StateHandle, StateNode};

/// A single initialized state node under a temporary directory (removed when the returned guard drops),
/// with pipeline `p` (one task) in `default` and the built-in extensions registered.
pub(crate) async fn state_with_pipeline() -> (StateHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateHandle::from(StateNode::open_single(&dir.path().join("state")).await.unwrap());
    let config = PipelineConfig::from_json(r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#).unwrap();
    let mut commands = vec![
        Command::Init {
            cluster_id: "c".into(),
            at: 1,
        },
        Command::RegisterPipeline {
            namespace: "default".into(),
            config,
            at: 1,
        },
    ];
    commands.extend(crate::builtin_registrations(1).into_iter().map(|(name, registration)| {
        Command::RegisterExtension {
            name: name.into(),
            builtin: true,
            registration,
            at: 1,
        }
    }));
    for command in commands {
        state.propose(command).await.unwrap();
    }
    (state, dir)
}

/// Subscribes pipeline `p` to `extension` as `label` with `settings`.
pub(crate) async fn subscribe(state: &StateHandle, extension: &str, label: &str, settings: &[(&str, &str)]) {
    state
        .propose(Command::CreateSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: label.into(),
            extension: extension.into(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            at: 2,
        })
        .await
        .unwrap();
}
