//! Unit tests of the RESULTS.md section replacement and the date format.

use std::time::{Duration, UNIX_EPOCH};

use super::{replace_section, utc_timestamp};

const HEADING: &str = "## dispatch-latency";

#[test]
fn a_missing_section_is_appended_after_a_blank_line() {
    let out = replace_section("# Results\n\nintro\n", HEADING, "## dispatch-latency\nnew\n");
    assert_eq!(out, "# Results\n\nintro\n\n## dispatch-latency\nnew\n");
}

#[test]
fn only_the_named_section_is_replaced() {
    let document = "# Results\n\n## other\nkeep\n\n## dispatch-latency\nold\nold\n\n## later\nkeep too\n";
    let out = replace_section(document, HEADING, "## dispatch-latency\nnew");
    assert_eq!(
        out,
        "# Results\n\n## other\nkeep\n\n## dispatch-latency\nnew\n\n## later\nkeep too\n"
    );
}

#[test]
fn the_last_section_runs_to_the_end() {
    let document = "# Results\n\n## dispatch-latency\nold\n";
    let out = replace_section(document, HEADING, "## dispatch-latency\nnew\n");
    assert_eq!(out, "# Results\n\n## dispatch-latency\nnew\n");
}

#[test]
fn headings_inside_code_fences_do_not_end_a_section() {
    let document = "## dispatch-latency\n```\n## not a heading\n```\nold\n## next\nkept\n";
    let out = replace_section(document, HEADING, "## dispatch-latency\nnew\n");
    assert_eq!(out, "## dispatch-latency\nnew\n\n## next\nkept\n");
}

#[test]
fn a_longer_heading_with_the_same_prefix_is_another_section() {
    let document = "## dispatch-latency-old\nkept\n";
    let out = replace_section(document, HEADING, "## dispatch-latency\nnew\n");
    assert_eq!(out, "## dispatch-latency-old\nkept\n\n## dispatch-latency\nnew\n");
}

#[test]
fn timestamps_are_utc_calendar_dates() {
    assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00 UTC");
    // 2024-02-29 13:45:59 UTC, a leap day.
    assert_eq!(
        utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_709_214_359)),
        "2024-02-29 13:45 UTC"
    );
}
