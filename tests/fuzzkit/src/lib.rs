//! The fuzz driver Gofer's fuzz targets share, on stable Rust: proptest generates the inputs and shrinks
//! a failing one, a target is a function that must not panic and checks what it can of its answer.
//!
//! Under `cargo test` a target runs [`CASES_IN_TESTS`] cases from a fixed seed, so the tests stay fast
//! and repeatable. With `FUZZ_SECONDS=N` (what `bench/fuzz.sh` sets) it runs random cases until N
//! seconds passed, seeded from the clock or from `FUZZ_SEED`, prints the seed first so a crash can be
//! run again, and ends with one `FUZZ-RESULT` line. A failure panics with the seed, the batch and the
//! shrunk input, which then becomes a named regression test beside the target.
//!
//! The targets live beside the code they reach (the domain's parsers in `gofer-domain`, the webhook in
//! `gofer-extension-host`); this crate knows none of them.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// How many cases a target runs under `cargo test`.
pub const CASES_IN_TESTS: u32 = 256;
/// How many cases one seeded batch of a timed run holds.
const BATCH: u32 = 512;

/// How many inputs of the running target got past its parser; see [`accepted`].
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// A target calls this for an input its parser accepted, so a timed run can tell how much of what it
/// tried reached past the parser (`accepted=` in the `FUZZ-RESULT` line).
pub fn accepted() {
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
}

/// Runs `target` on inputs from `strategy`: [`CASES_IN_TESTS`] of them from a fixed seed, or, with
/// `FUZZ_SECONDS` set, batches of random ones until that many seconds passed.
pub fn fuzz<S>(name: &str, strategy: S, target: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let Some(budget) = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()) else {
        run_batch(name, &strategy, &target, 0, 0, CASES_IN_TESTS);
        return;
    };
    let seed = match std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    eprintln!("fuzz {name}: seed {seed} (FUZZ_SEED={seed} repeats this run)");
    let budget = Duration::from_secs_f64(budget.max(0.0));
    ACCEPTED.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let (mut batch, mut cases) = (0u64, 0u64);
    while started.elapsed() < budget {
        run_batch(name, &strategy, &target, seed, batch, BATCH);
        batch += 1;
        cases += u64::from(BATCH);
    }
    println!(
        "FUZZ-RESULT target={name} seconds={:.1} cases={cases} accepted={} crashes=0 seed={seed}",
        started.elapsed().as_secs_f64(),
        ACCEPTED.load(Ordering::Relaxed)
    );
}

fn run_batch<S>(
    name: &str,
    strategy: &S,
    target: &impl Fn(S::Value) -> Result<(), TestCaseError>,
    seed: u64,
    batch: u64,
    cases: u32,
) where
    S: Strategy,
    S::Value: Debug,
{
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&batch.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    match runner.run(strategy, target) {
        Ok(()) => {}
        Err(TestError::Fail(reason, input)) => {
            println!("FUZZ-RESULT target={name} crashes=1 seed={seed} batch={batch}");
            panic!("fuzz {name} failed (FUZZ_SEED={seed}, batch {batch}): {reason}\nshrunk input: {input:?}");
        }
        Err(TestError::Abort(reason)) => panic!("fuzz {name} gave up (FUZZ_SEED={seed}, batch {batch}): {reason}"),
    }
}

/// Any bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> + Clone {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// One of `seeds` with a few random edits: bytes replaced, inserted, removed, or a stretch doubled.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> + Clone {
    let edits = proptest::collection::vec((any::<usize>(), 0..4u8, any::<u8>(), 1..16usize), 1..6);
    (proptest::sample::select(seeds), edits).prop_map(|(mut input, edits)| {
        for (at, kind, byte, len) in edits {
            let at = if input.is_empty() { 0 } else { at % (input.len() + 1) };
            match kind {
                0 if at < input.len() => input[at] = byte,
                1 => input.insert(at, byte),
                2 => {
                    let end = (at + len).min(input.len());
                    input.drain(at..end);
                }
                _ => {
                    let end = (at + len).min(input.len());
                    let stretch = input[at..end].to_vec();
                    input.splice(at..at, stretch);
                }
            }
        }
        input
    })
}

/// Text made of `pieces` (the words a parser knows, and ones it should refuse) and random characters.
pub fn text(pieces: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    let part = prop_oneof![
        4 => proptest::sample::select(pieces).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
        1 => (0..10u8).prop_map(|d| d.to_string()),
    ];
    proptest::collection::vec(part, 0..8).prop_map(|parts| parts.concat())
}

/// JSON values whose object keys are drawn from `keys` and whose strings from `strings`, nested a few
/// levels: documents shaped like what a parser expects, with the wrong types in the right places.
pub fn json(
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = serde_json::Value> + Clone {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-3i64..300).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text(strings).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(keys), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// One of `seeds` (JSON documents) with a few values in it replaced by ones from [`json`], removed, or
/// copied elsewhere: still JSON, still mostly of the right shape, wrong in one place or a few.
pub fn json_edited(
    seeds: Vec<serde_json::Value>,
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = serde_json::Value> + Clone {
    let edits = proptest::collection::vec((any::<usize>(), 0..4u8, json(keys, strings)), 1..4);
    (proptest::sample::select(seeds), edits).prop_map(|(mut document, edits)| {
        for (at, kind, value) in edits {
            let mut paths = Vec::new();
            pointers(&document, String::new(), &mut paths);
            let path = paths[at % paths.len()].clone();
            match kind {
                // Remove a field or an element (the root stays).
                0 if !path.is_empty() => {
                    let (parent, last) = path.rsplit_once('/').expect("a child's path has a slash");
                    match document.pointer_mut(parent) {
                        Some(serde_json::Value::Object(map)) => drop(map.remove(&unescape(last))),
                        Some(serde_json::Value::Array(items)) => {
                            if let Ok(i) = last.parse::<usize>() {
                                items.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
                // Copy another value of the document here.
                1 => {
                    let other = paths[(at / 7) % paths.len()].clone();
                    if let Some(copy) = document.pointer(&other).cloned()
                        && let Some(slot) = document.pointer_mut(&path)
                    {
                        *slot = copy;
                    }
                }
                // Add a field under a key the format knows, or an element.
                2 => match document.pointer_mut(&path) {
                    Some(serde_json::Value::Object(map)) => {
                        map.insert(keys[at % keys.len()].to_string(), value);
                    }
                    Some(serde_json::Value::Array(items)) => items.push(value),
                    _ => {}
                },
                _ => {
                    if let Some(slot) = document.pointer_mut(&path) {
                        *slot = value;
                    }
                }
            }
        }
        document
    })
}

/// The JSON pointer of every value in `value`, itself first.
fn pointers(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                pointers(
                    child,
                    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Input for a JSON parser: random bytes, `seeds` with their bytes edited, `seeds` with their values
/// edited (most of these), or documents from [`json`].
pub fn json_input(
    seeds: Vec<Vec<u8>>,
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> + Clone {
    let documents: Vec<serde_json::Value> = seeds
        .iter()
        .filter_map(|seed| serde_json::from_slice(seed).ok())
        .collect();
    prop_oneof![
        1 => bytes(256),
        2 => mutated(seeds),
        6 => json_edited(documents, keys, strings).prop_map(|value| value.to_string().into_bytes()),
        1 => json(keys, strings).prop_map(|value| value.to_string().into_bytes()),
    ]
}

#[cfg(test)]
mod tests;
