//! What the flags of `goferd dev` and `goferd server` (and the server's config file) share: reading an
//! event retention and a task log cap, checked against the bounds the cluster accepts. It reads no
//! environment and opens no file.

/// Reads an event retention such as `2h` or `7d` (days are allowed here) into milliseconds, checked
/// against the bounds the cluster accepts.
pub(crate) fn parse_retention(text: &str) -> Result<u64, BadValue> {
    use gofer_domain::events::{MAX_EVENT_RETENTION_MS, MIN_EVENT_RETENTION_MS};
    let field = "event_retention";
    let millis = match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => days.saturating_mul(86_400_000),
        _ => {
            let millis = gofer_domain::schedule::parse_duration(field, text)?;
            u64::try_from(millis).map_err(|_| BadValue::Negative { field })?
        }
    };
    if !(MIN_EVENT_RETENTION_MS..=MAX_EVENT_RETENTION_MS).contains(&millis) {
        return Err(BadValue::out_of_bounds(field, text, "1s", "365d"));
    }
    Ok(millis)
}

/// Reads a task log cap such as `10MiB` into bytes: at least 4 KiB, at most 1 GiB.
pub(crate) fn parse_log_cap(text: &str) -> Result<u64, BadValue> {
    let field = "task_log_cap";
    let bytes = gofer_domain::limits::parse_size(field, text)?;
    if !(4 << 10..=1 << 30).contains(&bytes) {
        return Err(BadValue::out_of_bounds(field, text, "4KiB", "1GiB"));
    }
    Ok(bytes)
}

/// Why a flag's value was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum BadValue {
    /// Not a duration or a size at all.
    #[error(transparent)]
    Malformed(#[from] gofer_domain::Error),
    #[error("{field}: must not be negative")]
    Negative { field: &'static str },
    #[error("{field}: {text:?} is not between {low} and {high}")]
    OutOfBounds {
        field: &'static str,
        text: String,
        low: &'static str,
        high: &'static str,
    },
}

impl BadValue {
    fn out_of_bounds(field: &'static str, text: &str, low: &'static str, high: &'static str) -> BadValue {
        BadValue::OutOfBounds {
            field,
            text: text.to_string(),
            low,
            high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_log_cap, parse_retention};

    #[test]
    fn a_log_cap_reads_sizes_within_the_bounds() {
        assert_eq!(parse_log_cap("10MiB"), Ok(10 << 20));
        assert_eq!(parse_log_cap("4096"), Ok(4096));
        for bad in ["4095", "2GiB", "10 furlongs", "-1MiB"] {
            let error = parse_log_cap(bad).unwrap_err().to_string();
            assert!(error.starts_with("task_log_cap: "), "{bad}: {error}");
        }
    }

    #[test]
    fn a_retention_reads_durations_and_days_within_the_bounds() {
        assert_eq!(parse_retention("90s"), Ok(90_000));
        assert_eq!(parse_retention("1h30m"), Ok(5_400_000));
        assert_eq!(parse_retention("7d"), Ok(7 * 86_400_000));
        for bad in ["0s", "500ms", "366d", "-5s", "soon", ""] {
            let error = parse_retention(bad).unwrap_err().to_string();
            assert!(error.starts_with("event_retention: "), "{bad}: {error}");
        }
    }
}
