//! Helpers the unit tests share.

use crate::triggers::{Registration, SettingSpec};
use crate::{Command, PipelineConfig, State};

/// An initialized cluster (id `c`, at 1) with the pipeline `json` registered in `default` at 1.
pub(crate) fn with_pipeline(json: &str) -> State {
    let mut state = State::default();
    state
        .apply(&Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .unwrap();
    state
        .apply(&Command::RegisterPipeline {
            namespace: "default".into(),
            config: PipelineConfig::from_json(json).unwrap(),
            at: 1,
        })
        .unwrap();
    state
}

/// Registers the built-in `interval` extension at `at`, taking `settings` (`every` required).
pub(crate) fn register_interval(state: &mut State, settings: &[&str], at: i64) {
    let settings = settings
        .iter()
        .map(|name| SettingSpec {
            name: name.to_string(),
            required: *name == "every",
            description: String::new(),
            secret: false,
        })
        .collect();
    state
        .apply(&Command::RegisterExtension {
            name: "interval".into(),
            builtin: true,
            registration: Registration {
                version: "1".into(),
                documentation: String::new(),
                settings,
                registered_at: at,
            },
            at,
        })
        .unwrap();
}
