//! Helpers the unit tests share.

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
