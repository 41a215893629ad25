//! Tidy checks: the architecture's invariants that a test can see, as in ARCHITECTURE.md.
//!
//! - `gofer-domain` has no async runtime, gRPC, storage, Docker or randomness dependency (it stays pure;
//!   chrono, chrono-tz and croner are allowed: cron maths with the clock passed in).
//! - Only `gofer-state` depends on redb, only `gofer-executor` (and the benchmark's baseline) on bollard.
//! - Every `.rs` file opens with a `//!` comment saying what it owns.

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
fn only_the_state_crate_touches_redb_and_only_the_executor_touches_docker() {
    let metadata = metadata();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        let deps = dependencies_of(&metadata, name);
        if deps.iter().any(|d| d == "redb" || d == "openraft") {
            assert_eq!(name, "gofer-state", "{name} must reach state through gofer-state");
        }
        if deps.iter().any(|d| d == "bollard") {
            assert!(
                name == "gofer-executor" || name == "gofer-bench",
                "{name} must reach Docker through gofer-executor"
            );
        }
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
    for dir in ["crates", "services", "tests", "bench", "examples"] {
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
