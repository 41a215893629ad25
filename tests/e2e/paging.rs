//! goferctl's list commands follow every page: a list longer than the server's page (100) shows in full,
//! in order and each item once, and `--limit` stops early.

use anyhow::{Context, Result, ensure};
use gofer_testkit::GoferDev;

/// The ids a `-o json` list printed.
fn ids(list: &serde_json::Value) -> Result<Vec<String>> {
    let items = list.as_array().context("a JSON array")?;
    items
        .iter()
        .map(|item| item["id"].as_str().map(str::to_string).context("an id"))
        .collect()
}

#[test]
fn a_list_longer_than_a_page_shows_in_full_and_limit_stops_it_early() -> Result<()> {
    let dev = GoferDev::start()?;
    let mut expected = vec!["default".to_string()];
    for i in 0..150 {
        let id = format!("page-{i:03}");
        dev.ctl_ok(&["namespace", "create", &id])?;
        expected.push(id);
    }
    expected.sort();

    let all = ids(&dev.ctl_json(&["namespace", "list"])?)?;
    ensure!(all == expected, "listed {} namespaces: {all:?}", all.len());
    let table = dev.ctl_ok(&["namespace", "list"])?;
    ensure!(table.lines().count() == 152, "a header and 151 rows: {table}");

    let first = ids(&dev.ctl_json(&["namespace", "list", "--limit", "120"])?)?;
    ensure!(first == expected[..120], "--limit 120 listed {first:?}");
    let one = ids(&dev.ctl_json(&["namespace", "list", "--limit", "1"])?)?;
    ensure!(one == ["default"], "--limit 1 listed {one:?}");

    let zero = dev.ctl(&["namespace", "list", "--limit", "0"])?;
    ensure!(zero.status.code() == Some(2), "--limit 0 is a usage error: {zero:?}");
    Ok(())
}
