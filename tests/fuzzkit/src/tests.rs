//! The driver reports a target that panics or fails a check, with the seed to repeat it and the shrunk
//! input; the input strategies give what they promise.

use proptest::strategy::ValueTree;

use super::*;

fn failure_of(target: impl Fn(Vec<u8>) -> Result<(), TestCaseError> + std::panic::RefUnwindSafe) -> String {
    let outcome = std::panic::catch_unwind(|| fuzz("planted", bytes(64), &target));
    let payload = outcome.expect_err("the driver reports the failure");
    payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[test]
fn a_target_that_panics_fails_with_its_seed_and_shrunk_input() {
    let message = failure_of(|input| {
        assert!(!input.contains(&7), "planted crash");
        Ok(())
    });
    assert!(message.contains("fuzz planted failed (FUZZ_SEED="), "{message}");
    assert!(message.contains("shrunk input: [7]"), "{message}");
}

#[test]
fn a_target_that_fails_a_check_fails_with_it() {
    let message = failure_of(|input| {
        prop_assert!(input.len() < 3, "too long");
        Ok(())
    });
    assert!(message.contains("too long"), "{message}");
    assert!(message.contains("shrunk input: [0, 0, 0]"), "{message}");
}

#[test]
fn edited_json_stays_json() {
    let seeds = vec![br#"{"a":[1,{"b":"c"}],"d":null}"#.to_vec()];
    let strategy = json_input(seeds, &["a", "b"], &["x"]);
    let mut runner = TestRunner::deterministic();
    let mut json = 0;
    for _ in 0..200 {
        let input = strategy.new_tree(&mut runner).expect("an input").current();
        json += usize::from(serde_json::from_slice::<serde_json::Value>(&input).is_ok());
    }
    assert!(json > 100, "only {json} of 200 inputs were JSON");
}
