//! Tidy checks: the architecture's invariants that a test can see, as in ARCHITECTURE.md.
//!
//! - `gofer-domain` has no async runtime, gRPC, storage, Docker or randomness dependency (it stays pure;
//!   chrono, chrono-tz and croner are allowed: cron maths with the clock passed in).
//! - Only `gofer-state` depends on redb, only `gofer-docker` (and the benchmark's baseline) on bollard.
//! - No service crate (`services/*`) depends on another, except on `gofer-state`, whose handle is how the
//!   roles reach the replicated state: roles speak proto to each other, and what they share (tokens,
//!   Docker) lives in crates of its own.
//! - Every `.rs` file opens with a `//!` comment saying what it owns.
//! - Services and `goferd` spawn tasks only through a `TaskTracker` (no `tokio::spawn`), so shutdown
//!   waits for every one of them; tests may spawn freely.
//! - Services and `goferd` read the time only from an injected `gofer_clock::Clock` (no `SystemTime`, and
//!   `tokio::time::Instant` rather than `std::time::Instant` for waits), so tests can move it.
//! - No two files of the workspace import each other (`imports.rs`): what both need lives in a third.

mod imports;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn metadata() -> serde_json::Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

fn dependencies_of(metadata: &serde_json::Value, package: &str) -> Vec<String> {
    let found = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("package {package} exists"));
    found["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| d["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_domain_stays_pure() {
    let deps = dependencies_of(&metadata(), "gofer-domain");
    for banned in ["tokio", "tonic", "prost", "redb", "openraft", "bollard", "ring", "rand"] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "gofer-domain must not depend on {banned}: {deps:?}"
        );
    }
}

#[test]
fn only_the_state_crate_touches_redb_and_only_the_docker_crate_touches_docker() {
    let metadata = metadata();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        let deps = dependencies_of(&metadata, name);
        if deps.iter().any(|d| d == "redb" || d == "openraft") {
            assert_eq!(name, "gofer-state", "{name} must reach state through gofer-state");
        }
        if deps.iter().any(|d| d == "bollard") {
            assert!(
                name == "gofer-docker" || name == "gofer-bench",
                "{name} must reach Docker through gofer-docker"
            );
        }
    }
}

/// The workspace's service crates: the packages whose manifest sits under `services/`.
fn service_crates(metadata: &serde_json::Value) -> Vec<String> {
    let services = root().join("services");
    let services = services.canonicalize().unwrap_or(services);
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default());
            manifest.canonicalize().unwrap_or(manifest).starts_with(&services)
        })
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn services_reach_each_other_only_through_the_state_crate() {
    let metadata = metadata();
    let services = service_crates(&metadata);
    assert!(services.len() >= 5, "found the service crates: {services:?}");
    for service in &services {
        let others: Vec<String> = dependencies_of(&metadata, service)
            .into_iter()
            .filter(|d| services.contains(d) && d != "gofer-state")
            .collect();
        assert!(
            others.is_empty(),
            "{service} must not depend on other services (only on gofer-state): {others:?}"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_says_what_it_owns() {
    let mut files = Vec::new();
    for dir in ["crates", "goferd", "services", "tests", "bench", "examples"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 20, "found the sources: {}", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a //! header: {missing:#?}");
}

/// The `.rs` files of every service's `src` and of `goferd`'s, but the test files (`tests.rs`).
fn server_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("services")).expect("services/").flatten() {
        rust_files(&entry.path().join("src"), &mut files);
    }
    rust_files(&root().join("goferd/src"), &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "tests.rs"));
    assert!(files.len() > 20, "found the sources: {}", files.len());
    files
}

/// The lines of `text` that are code outside `#[cfg(test)]` items, with their numbers: an item's
/// `mod tests;` or its braces' whole body is left out, and so are comments.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let mut depth = 0i64;
            let mut opened = false;
            for (_, item) in lines.by_ref() {
                let (open, close) = (item.matches('{').count(), item.matches('}').count());
                depth += open as i64 - close as i64;
                opened |= open > 0;
                if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if !line.trim_start().starts_with("//") {
            out.push((index + 1, line));
        }
    }
    out
}

/// Every code line of the services and `goferd` that `bad` finds, as `path:line: text`.
fn offending_lines(bad: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in server_sources() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let relative = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
        for (number, line) in code_lines(&text) {
            if bad(line) {
                found.push(format!("{relative}:{number}: {}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn services_spawn_only_through_a_task_tracker() {
    let spawns = offending_lines(|line| line.contains("tokio::spawn") || line.contains("tokio::task::spawn("));
    assert!(
        spawns.is_empty(),
        "spawn through the TaskTracker the service was given, so shutdown waits for the task: {spawns:#?}"
    );
}

#[test]
fn services_read_the_time_from_their_clock() {
    let clocks = offending_lines(|line| {
        let std_instant = line.contains("std::time::Instant")
            || (line.trim_start().starts_with("use std::time::{") && line.contains("Instant"));
        line.contains("SystemTime") || std_instant
    });
    assert!(
        clocks.is_empty(),
        "read the wall clock from the injected gofer_clock::Clock, and time waits with tokio::time::Instant: \
         {clocks:#?}"
    );
}
