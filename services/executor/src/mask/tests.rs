//! Masking across every split of the output, values inside values, and short values.

use super::*;

fn masked(values: &[&str], pieces: &[&[u8]]) -> String {
    let mut masker = Masker::new(values.iter().copied());
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(masker.push(piece));
    }
    out.extend(masker.finish());
    String::from_utf8(out).unwrap()
}

#[test]
fn a_value_is_masked_wherever_the_output_is_split() {
    let output = b"user=admin pass=hunter2-pw; again hunter2-pw and hunter2 alone\n";
    let expected = "user=admin pass=********; again ******** and hunter2 alone\n";
    for split in 0..=output.len() {
        let (a, b) = output.split_at(split);
        assert_eq!(masked(&["hunter2-pw"], &[a, b]), expected, "split at {split}");
    }
    // One byte at a time.
    let bytes: Vec<&[u8]> = output.chunks(1).collect();
    assert_eq!(masked(&["hunter2-pw"], &bytes), expected);
}

#[test]
fn the_longer_of_two_overlapping_values_is_masked_whole_even_across_a_split() {
    let values = ["abcd", "abcdefgh"];
    for split in 0..=12 {
        let output = b"xxabcdefghyy";
        let (a, b) = output.split_at(split);
        assert_eq!(masked(&values, &[a, b]), "xx********yy", "split at {split}");
    }
    assert_eq!(
        masked(&values, &[b"abcdefg"]),
        "********efg",
        "the shorter alone, at the end"
    );
}

#[test]
fn values_shorter_than_four_bytes_and_output_without_values_pass_unchanged() {
    assert_eq!(masked(&["abc"], &[b"abc abc"]), "abc abc");
    assert_eq!(masked(&[], &[b"plain ", b"output"]), "plain output");
    assert_eq!(
        masked(&["secret-value"], &[b"secret-valu"]),
        "secret-valu",
        "a partial value at the end is not one"
    );
    let mut masker = Masker::new(["secret-value"]);
    assert!(
        masker.push(b"secret-").is_empty(),
        "held back while it may begin the value"
    );
    assert_eq!(masker.push(b"value!"), b"********!");
}
