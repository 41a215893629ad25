//! The example pipeline, written with the Rust SDK. `goferctl pipeline register examples/hello` runs it
//! with `cargo run --quiet` and registers the JSON it prints.
//!
//! It uses `gofer/toolbox:1`, the small image that `cargo demo` and the tests build locally (there is no
//! registry to pull from) out of the host's own `sh` and coreutils.

use gofer_sdk::{Condition, Pipeline, Task};

const IMAGE: &str = "gofer/toolbox:1";

fn main() {
    Pipeline::new("hello", "Hello, Gofer")
        .description("Says hello, counts, and reports; a failure handler runs only if counting fails")
        .task(Task::new("greet", IMAGE).command(["sh", "-c", "echo \"hello from $GOFER_PIPELINE run $GOFER_RUN\""]))
        .task(
            Task::new("count", IMAGE)
                .command(["sh", "-c", "echo one; sleep 0.2; echo two; sleep 0.2; echo three"])
                .depends_on("greet", Condition::Success),
        )
        .task(
            Task::new("report", IMAGE)
                .command(["sh", "-c", "echo \"counted, greeting was $GREETING\""])
                .env("GREETING", "hello")
                .depends_on("count", Condition::Success),
        )
        .task(
            Task::new("on-failure", IMAGE)
                .command(["sh", "-c", "echo counting failed >&2"])
                .depends_on("count", Condition::Failure),
        )
        .finish();
}
