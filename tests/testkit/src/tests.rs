//! Unit tests of the testkit's own helpers that need neither Docker nor a build.

use super::*;

#[test]
fn workspace_root_is_two_levels_above_testkit() {
    let root = workspace_root();
    assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
    assert!(root.join("tests/testkit/Cargo.toml").is_file(), "{}", root.display());
}
