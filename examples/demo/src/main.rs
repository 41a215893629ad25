//! `cargo demo`: the quick start in one command. Builds Gofer and the local task image, starts
//! `goferd dev` on a temp dir, registers the example pipeline (`examples/hello`, written with the Rust
//! SDK), runs it, streams each task's logs as it runs, prints the result, stops the server and exits 0
//! when the run succeeded.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gofer_testkit::{GoferDev, task_image, workspace_root};

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn demo() -> Result<()> {
    step("building goferd, goferctl and the local task image (there is no registry to pull from)");
    gofer_testkit::bin_dir()?;
    let image = task_image()?;
    println!("image {image} is ready");

    step("starting goferd dev on a temp data dir");
    let mut dev = GoferDev::start()?;
    println!("goferd dev is serving {} (cluster {})", dev.host, dev.cluster);

    let example = workspace_root().join("examples").join("hello");
    let example = example.to_str().context("the workspace path is not UTF-8")?;
    step("goferctl pipeline register examples/hello");
    print!("{}", dev.ctl_ok(&["pipeline", "register", example])?);
    print!("{}", dev.ctl_ok(&["pipeline", "get", "hello"])?);

    step("goferctl run start hello");
    let run = dev.ctl_ok(&["run", "start", "hello"])?.trim().to_string();
    println!("started run {run}");

    let tasks = dev.ctl_json(&["task", "list", "hello", &run])?;
    for task in tasks.as_array().context("task list is an array")? {
        let id = task["task_id"].as_str().context("task_id")?;
        step(&format!("goferctl task logs hello {run} {id} --follow"));
        let output = dev.ctl(&["task", "logs", "hello", &run, id, "--follow"])?;
        print!("{}", String::from_utf8_lossy(&output.stdout));
        if !output.status.success() {
            bail!("following {id}: {}", String::from_utf8_lossy(&output.stderr));
        }
    }

    step(&format!(
        "goferctl run get hello {run} && goferctl task list hello {run}"
    ));
    let finished = gofer_testkit::wait_until("the run to end", std::time::Duration::from_secs(60), || {
        let run = dev.ctl_json(&["run", "get", "hello", &run])?;
        let state = run["state"].as_str().unwrap_or_default().to_string();
        Ok(matches!(state.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED").then_some(state))
    })?;
    print!("{}", dev.ctl_ok(&["run", "get", "hello", &run])?);
    print!("{}", dev.ctl_ok(&["task", "list", "hello", &run])?);

    step("stopping goferd dev");
    dev.stop()?;
    if finished != "SUCCEEDED" {
        bail!("run {run} ended {finished}");
    }
    println!("\nrun {run} of hello SUCCEEDED. Next: run `goferd dev` yourself and try goferctl's verbs (README.md).");
    Ok(())
}
