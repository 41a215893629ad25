//! The id rule every user-chosen name follows: namespaces, pipelines and tasks.

use crate::Error;

/// Ids are at most this many characters.
pub const MAX_ID_LEN: usize = 64;

/// Checks that `value` is a valid id: 1 to 64 characters of `[a-z0-9_-]`. `field` names it in the error.
pub fn validate_id(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_ID_LEN} characters, got {}", value.chars().count()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid(
            field,
            format!("{value:?} has {bad:?}; ids may only use a-z, 0-9, '_' and '-'"),
        ));
    }
    Ok(())
}

/// Request ids are at most this many characters.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Checks a client's request id: 1 to 128 printable ASCII characters, no spaces. `field` names it.
pub fn validate_request_id(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_REQUEST_ID_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {MAX_REQUEST_ID_LEN} characters, got {}",
                value.chars().count()
            ),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!("has {bad:?}; request ids may only use printable ASCII without spaces"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_id_alphabet() {
        assert_eq!(validate_id("id", "a-b_c9"), Ok(()));
        assert_eq!(validate_id("id", &"x".repeat(64)), Ok(()));
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        for bad in ["", "Hello", "a b", "a.b", "ü", &"x".repeat(65)] {
            let err = validate_id("tasks[0].id", bad).unwrap_err();
            assert!(err.to_string().starts_with("tasks[0].id: "), "{err}");
        }
    }
}
