//! Attempt identities: the text form reads back, and anything else is refused naming the field.

use super::*;

#[test]
fn an_attempt_id_reads_back_from_its_text() {
    let id = AttemptId::new(
        AttemptRef {
            namespace: "ns".into(),
            pipeline: "p-1".into(),
            run: 42,
            task: "build_x".into(),
        },
        3,
    );
    assert_eq!(id.to_string(), "ns/p-1/42/build_x/3");
    assert_eq!("ns/p-1/42/build_x/3".parse::<AttemptId>(), Ok(id));
}

#[test]
fn text_that_is_not_an_attempt_id_is_refused_naming_the_part() {
    for (bad, field) in [
        ("", "attempt"),
        ("a/b/c/d", "attempt"),
        ("a/b/1/d/1/extra", "attempt"),
        ("a/b/x/d/1", "attempt.run"),
        ("a/b/1/d/-1", "attempt.attempt"),
        ("a/b/1/d/+1", "attempt.attempt"),
        ("a/b/1/d/4294967296", "attempt"),
        ("A/b/1/d/1", "attempt.namespace"),
        ("a//1/d/1", "attempt.pipeline"),
        ("a/b/1/d d/1", "attempt.task"),
    ] {
        match bad.parse::<AttemptId>() {
            Err(Error::InvalidArgument { field: named, .. }) => assert_eq!(named, field, "{bad:?}"),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}
