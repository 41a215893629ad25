//! Objects through `goferctl object`: a pipeline's cache and a run's, stored whole in chunks, read back
//! byte for byte, listed, deleted, kept within the size and count the cluster was given (the oldest
//! evicted, as an event), reached by a task with its run token, and gone with a pruned run.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gofer_testkit::{DEFAULT_LOG_FILTER, GoferDev, Seen, TASK_IMAGE, bin_dir, task_image, wait_until};

use crate::task_tokens::{GOFERCTL_IMAGE, goferctl_image};
use crate::{tasks, wait_for_end};

/// Bytes no text tool would leave alone: every byte value, in a pseudo-random order.
fn binary(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn failed_with(output: &std::process::Output, words: &[&str]) -> Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "exit {:?}: {stderr}",
        output.status.code()
    );
    for word in words {
        ensure!(stderr.contains(word), "{word:?} not in {stderr:?}");
    }
    Ok(())
}

#[test]
fn objects_are_stored_whole_read_back_listed_deleted_and_kept_within_their_limits() -> Result<()> {
    task_image()?;
    let dev = GoferDev::start_with_args(
        bin_dir()?,
        DEFAULT_LOG_FILTER,
        &["--object-max-size", "4MiB", "--object-max-count", "3"],
    )?;
    let id = format!("cached-{}", std::process::id());
    dev.register(&crate::pipeline(&id, &[("a", "true", &[])]))?;
    let dir = tempfile::tempdir()?;

    // Three chunks and a bit, every byte value: read back exactly.
    let big = binary(3 * 1024 * 1024 + 17);
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &big)?;
    let file = file.to_str().context("utf-8 path")?;
    let stored = dev.ctl_json(&["object", "put", &id, "data/big.bin", file])?;
    ensure!(stored["object"]["size"] == big.len() as u64, "{stored}");
    ensure!(
        stored["object"]["digest"].as_str().map(str::len) == Some(64),
        "{stored}"
    );
    let got = dev.ctl(&["object", "get", &id, "data/big.bin"])?;
    ensure!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    ensure!(
        got.stdout == big,
        "read back {} bytes, not the {} stored",
        got.stdout.len(),
        big.len()
    );

    // From stdin.
    let mut put = dev
        .goferctl()
        .args(["object", "put", &id, "small"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    put.stdin.take().context("stdin")?.write_all(b"hello\n")?;
    let put = put.wait_with_output()?;
    ensure!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    ensure!(dev.ctl(&["object", "get", &id, "small"])?.stdout == b"hello\n");

    // Bad input is refused by name and stores nothing.
    failed_with(
        &dev.ctl(&["object", "put", &id, "no spaces", file])?,
        &["key", "(InvalidArgument)"],
    )?;
    failed_with(&dev.ctl(&["object", "put", &id, &"k".repeat(129), file])?, &["key"])?;
    let too_big = dir.path().join("too-big.bin");
    std::fs::write(&too_big, binary(4 * 1024 * 1024 + 1))?;
    failed_with(
        &dev.ctl(&["object", "put", &id, "too-big", too_big.to_str().context("utf-8")?])?,
        &["at most 4194304 bytes", "(InvalidArgument)"],
    )?;
    failed_with(
        &dev.ctl(&["object", "put", "no-such-pipeline", "k", file])?,
        &["(NotFound)"],
    )?;
    failed_with(&dev.ctl(&["object", "get", &id, "too-big"])?, &["(NotFound)"])?;
    let keys = |dev: &GoferDev| -> Result<Vec<String>> {
        let list = dev.ctl_json(&["object", "list", &id])?;
        Ok(list
            .as_array()
            .context("a list")?
            .iter()
            .filter_map(|o| o["key"].as_str().map(str::to_string))
            .collect())
    };
    ensure!(keys(&dev)? == ["data/big.bin", "small"], "{:?}", keys(&dev)?);

    // Past the count of three, the oldest goes, and the event stream says so.
    dev.ctl_ok(&["object", "put", &id, "third", file])?;
    let fourth = dev.ctl_ok(&["object", "put", &id, "fourth", file])?;
    ensure!(fourth.contains("object data/big.bin evicted"), "{fourth}");
    ensure!(keys(&dev)? == ["fourth", "small", "third"], "{:?}", keys(&dev)?);
    let events = dev.ctl_ok(&["event", "list", "-o", "json"])?;
    ensure!(
        events
            .lines()
            .any(|l| l.contains("object_evicted") && l.contains("data/big.bin")),
        "{events}"
    );

    // Delete, once.
    dev.ctl_ok(&["object", "delete", &id, "small"])?;
    failed_with(&dev.ctl(&["object", "delete", &id, "small"])?, &["(NotFound)"])?;
    ensure!(keys(&dev)? == ["fourth", "third"], "{:?}", keys(&dev)?);
    Ok(())
}

#[test]
fn a_task_reaches_its_runs_and_its_pipelines_objects_and_a_pruned_runs_objects_go() -> Result<()> {
    goferctl_image()?;
    task_image()?;
    let dev = GoferDev::start()?;
    let id = format!("cache-user-{}", std::process::id());
    let other = format!("cache-other-{}", std::process::id());
    dev.register(&crate::pipeline(&other, &[("a", "true", &[])]))?;
    let task = |task: &str, command: &[&str], after: &[&str]| {
        let deps: serde_json::Map<String, serde_json::Value> =
            after.iter().map(|d| (d.to_string(), "success".into())).collect();
        serde_json::json!({"id": task, "image": GOFERCTL_IMAGE, "command": command,
            "inject_api_token": true, "depends_on": deps})
    };
    let json = serde_json::json!({"id": id, "keep_runs": 1, "tasks": [
        task("run-object", &["object", "put", &id, "kernel", "/proc/version", "--run", "1"], &[]),
        task("pipeline-object", &["object", "put", &id, "boot/cmdline", "/proc/cmdline"], &[]),
        task("reads", &["object", "get", &id, "kernel", "--run", "1"], &["run-object"]),
        task("elsewhere", &["object", "put", &other, "x", "/proc/version"], &[]),
    ]});
    dev.register(&json.to_string())?;
    dev.ctl_ok(&["run", "start", &id])?;
    wait_for_end(&dev, &id, "1")?;
    let ran = tasks(&dev, &id, "1")?;
    for ok in ["run-object", "pipeline-object", "reads"] {
        ensure!(ran[ok]["state"] == "SUCCEEDED", "{ok}: {}", ran[ok]);
    }
    ensure!(ran["elsewhere"]["state"] == "FAILED", "{}", ran["elsewhere"]);
    let refused = dev.ctl(&["task", "logs", &id, "1", "elsewhere"])?;
    ensure!(
        String::from_utf8_lossy(&refused.stdout).contains("cannot PutObject"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    // The container's /proc/version is the host kernel's.
    let version = std::fs::read("/proc/version")?;
    ensure!(dev.ctl(&["object", "get", &id, "kernel", "--run", "1"])?.stdout == version);
    ensure!(dev.ctl(&["task", "logs", &id, "1", "reads"])?.stdout == version);
    ensure!(dev.ctl(&["object", "get", &id, "boot/cmdline"])?.stdout == std::fs::read("/proc/cmdline")?);
    let listed = dev.ctl_json(&["object", "list", &id, "--run", "1"])?;
    let digest = listed[0]["digest"].as_str().context("a digest")?.to_string();

    // Run 2 prunes run 1 (keep_runs 1): its objects go, on disk too; the pipeline's stay.
    dev.register(
        &serde_json::json!({"id": id, "keep_runs": 1, "tasks": [
        {"id": "a", "image": TASK_IMAGE, "command": ["true"]}]})
        .to_string(),
    )?;
    dev.ctl_ok(&["run", "start", &id])?;
    wait_for_end(&dev, &id, "2")?;
    let gone = dev.ctl(&["object", "list", &id, "--run", "1"])?;
    failed_with(&gone, &["(NotFound)"])?;
    let file = dev.data_dir().join("state/blobs").join(&digest[..2]).join(&digest);
    wait_until(
        "the pruned run's blob to leave the disk",
        Duration::from_secs(30),
        || Ok(Seen::check(file.exists(), |exists| !exists)),
    )?;
    ensure!(dev.ctl(&["object", "get", &id, "boot/cmdline"])?.status.success());
    Ok(())
}

#[test]
fn with_an_s3_blob_store_logs_and_objects_live_in_the_bucket_and_not_on_the_node() -> Result<()> {
    task_image()?;
    let s3 = gofer_testkit::S3Server::start()?;
    s3.create_bucket("gofer-e2e")?;
    let endpoint = s3.endpoint();
    let dev = GoferDev::start_with_env(
        bin_dir()?,
        DEFAULT_LOG_FILTER,
        &[
            "--blob-store",
            "s3://gofer-e2e/cluster-a",
            "--blob-store-endpoint",
            &endpoint,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ],
    )?;
    let id = format!("s3-cached-{}", std::process::id());
    dev.register(&crate::pipeline(&id, &[("a", "echo logged in s3", &[])]))?;
    dev.ctl_ok(&["run", "start", &id, "--wait"])?;
    let logs = dev.ctl(&["task", "logs", &id, "1", "a"])?;
    ensure!(String::from_utf8_lossy(&logs.stdout) == "logged in s3\n", "{logs:?}");
    let dir = tempfile::tempdir()?;
    let data = binary(2 * 1024 * 1024 + 3);
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data)?;
    let stored = dev.ctl_json(&["object", "put", &id, "blob.bin", file.to_str().context("utf-8")?])?;
    let digest = stored["object"]["digest"].as_str().context("a digest")?.to_string();
    ensure!(dev.ctl(&["object", "get", &id, "blob.bin"])?.stdout == data);
    // The bytes are in the bucket, under the prefix, by digest; none is on the node's disk.
    let keys = s3.keys("gofer-e2e")?;
    ensure!(
        keys.contains(&format!("cluster-a/{}/{digest}", &digest[..2])),
        "{keys:?}"
    );
    ensure!(keys.len() == 2, "the log and the object: {keys:?}");
    let blobs = dev.data_dir().join("state/blobs");
    let local = std::fs::read_dir(&blobs)?.count();
    ensure!(local == 0, "{local} blob shards on the node's disk");
    let status = dev.ctl_json(&["cluster", "status"])?;
    ensure!(status["shared_blob_count"] == 2, "{status}");
    // A deleted object goes from the bucket.
    dev.ctl_ok(&["object", "delete", &id, "blob.bin"])?;
    wait_until(
        "the deleted object to leave the bucket",
        Duration::from_secs(30),
        || {
            let keys = s3.keys("gofer-e2e")?;
            Ok(Seen::check(keys, |keys| keys.len() == 1))
        },
    )?;
    Ok(())
}
