//! Unit tests of the testkit's own helpers that need neither Docker nor a build: the workspace root, and
//! `wait_until`, which returns what it waited for and on timeout says what its last look saw.

use super::*;

#[test]
fn workspace_root_is_two_levels_above_testkit() {
    let root = workspace_root();
    assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
    assert!(root.join("tests/testkit/Cargo.toml").is_file(), "{}", root.display());
}

#[test]
fn a_check_that_holds_returns_its_value_whether_it_says_option_or_seen() {
    let mut looks = 0;
    let found = wait_until("the third look", Duration::from_secs(60), || {
        looks += 1;
        Ok((looks == 3).then_some(looks))
    });
    assert_eq!(found.unwrap(), 3);
    let seen = wait_until("a value", Duration::from_secs(60), || Ok(Seen::check(7, |n| *n == 7)));
    assert_eq!(seen.unwrap(), 7);
}

#[test]
fn a_timeout_says_what_the_last_look_saw_or_how_it_failed() {
    let mut looks = 0;
    let error = wait_until("the state to be DONE", Duration::ZERO, || {
        looks += 1;
        Ok(Seen::check(format!("RUNNING, look {looks}"), |state| state == "DONE"))
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("the state to be DONE"), "{error}");
    assert!(error.contains("RUNNING, look 1"), "{error}");

    let error = wait_until::<(), Option<()>>("a reply", Duration::ZERO, || anyhow::bail!("connection refused"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("connection refused"), "{error}");
}
