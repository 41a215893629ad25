//! Unit tests of the sample summaries.

use std::time::Duration;

use super::Summary;

fn ms(values: &[u64]) -> Vec<Duration> {
    values.iter().map(|v| Duration::from_millis(*v)).collect()
}

#[test]
fn no_samples_have_no_summary() {
    assert_eq!(Summary::of(&[]), None);
}

#[test]
fn an_odd_count_has_the_middle_sample_as_median() {
    let summary = Summary::of(&ms(&[30, 10, 20])).unwrap();
    assert_eq!(summary.count, 3);
    assert_eq!(summary.median, Duration::from_millis(20));
    assert_eq!(summary.mean, Duration::from_millis(20));
    assert_eq!(summary.p95, Duration::from_millis(30));
}

#[test]
fn an_even_count_averages_the_middle_two() {
    let summary = Summary::of(&ms(&[40, 10, 20, 30])).unwrap();
    assert_eq!(summary.median, Duration::from_millis(25));
}

#[test]
fn p95_is_the_nearest_rank() {
    let samples: Vec<u64> = (1..=20).collect();
    assert_eq!(Summary::of(&ms(&samples)).unwrap().p95, Duration::from_millis(19));
    let samples: Vec<u64> = (1..=100).collect();
    assert_eq!(Summary::of(&ms(&samples)).unwrap().p95, Duration::from_millis(95));
    assert_eq!(Summary::of(&ms(&[7])).unwrap().p95, Duration::from_millis(7));
}
