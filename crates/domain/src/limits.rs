//! A task's guardrails as the pipeline format spells them: `timeout` (a duration), `cpu` (a number of
//! CPUs, such as `0.5`), `memory` (a size, such as `256MiB`), and how each is checked.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::schedule::parse_duration;

/// The longest `timeout` a task may set.
pub const MAX_TIMEOUT_MS: i64 = 7 * 24 * 3_600_000;
/// The least `memory` a task may set: below it Docker refuses to create the container.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// The most `cpu` a task may set.
pub const MAX_CPUS: f64 = 256.0;

/// A CPU limit in thousandths of a CPU, written in the pipeline format as a number of CPUs (`0.5`).
/// Any number reads; [`Cpus::check`] says whether it is a limit a task may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(pub i64);

impl Cpus {
    /// The limit in the units Docker's `NanoCpus` takes.
    pub fn nano_cpus(self) -> i64 {
        self.0.saturating_mul(1_000_000)
    }

    /// From a number of CPUs, as the wire carries it.
    pub fn from_cpus(cpus: f64) -> Cpus {
        Cpus(if cpus.is_finite() {
            (cpus * 1000.0).round() as i64
        } else {
            -1
        })
    }

    /// Checks that it is above 0 (at least a thousandth) and at most [`MAX_CPUS`].
    pub fn check(self, field: &str) -> Result<(), Error> {
        if self.0 < 1 || self.0 > (MAX_CPUS * 1000.0) as i64 {
            return Err(Error::invalid(
                field,
                format!(
                    "must be a number of CPUs from 0.001 to {MAX_CPUS}, got {}",
                    self.0 as f64 / 1000.0
                ),
            ));
        }
        Ok(())
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0 as f64 / 1000.0)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Cpus::from_cpus(f64::deserialize(deserializer)?))
    }
}

/// Parses a task's `timeout` into milliseconds: a duration above zero and at most 7 days.
pub fn parse_timeout(field: &str, text: &str) -> Result<i64, Error> {
    let ms = parse_duration(field, text)?;
    if ms <= 0 || ms > MAX_TIMEOUT_MS {
        return Err(Error::invalid(field, "must be above 0s and at most 7d"));
    }
    Ok(ms)
}

/// Parses a task's `memory` (see [`parse_size`]) into bytes, at least [`MIN_MEMORY_BYTES`].
pub fn parse_memory(field: &str, text: &str) -> Result<u64, Error> {
    let bytes = parse_size(field, text)?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(Error::invalid(
            field,
            format!("must be at least 6MiB (Docker refuses less), got {}", text.trim()),
        ));
    }
    Ok(bytes)
}

/// Parses a size such as `256MiB`, `1GiB`, `512MB`, `64KiB` or `67108864` (bytes) into bytes.
pub fn parse_size(field: &str, text: &str) -> Result<u64, Error> {
    let bad = || Error::invalid(field, format!("{text:?} is not a size such as 256MiB, 1GiB or 512MB"));
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return Err(bad());
    }
    let value: u64 = text[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match &text[digits..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    value.checked_mul(unit).ok_or_else(bad)
}

/// Checks a task's `workdir`: an absolute path of at most 1024 bytes, without NUL.
pub fn check_workdir(field: &str, path: &str) -> Result<(), Error> {
    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
        return Err(Error::invalid(
            field,
            "must be an absolute path such as /work, at most 1024 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_cpus_parse_and_bad_ones_name_the_field() {
        assert_eq!(parse_memory("m", "256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_memory("m", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("m", "512MB").unwrap(), 512_000_000);
        assert_eq!(parse_memory("m", "8388608").unwrap(), 8 << 20);
        for bad in [
            "",
            "lots",
            "5MiB",
            "1.5GiB",
            "-1MiB",
            "12 parsecs",
            "99999999999999999999TiB",
        ] {
            match parse_memory("tasks[0].memory", bad) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "tasks[0].memory", "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(parse_timeout("t", "5m").unwrap(), 300_000);
        assert!(parse_timeout("t", "0s").is_err());
        assert!(parse_timeout("t", "-5s").is_err());
        assert!(parse_timeout("t", "8d").is_err());
        let cpus: Cpus = serde_json::from_str("0.5").unwrap();
        assert_eq!((cpus, cpus.nano_cpus()), (Cpus(500), 500_000_000));
        assert_eq!(serde_json::to_string(&cpus).unwrap(), "0.5");
        for bad in ["0", "-1", "1000", "0.0001"] {
            let cpus: Cpus = serde_json::from_str(bad).unwrap();
            match cpus.check("tasks[0].cpu") {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "tasks[0].cpu"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_workdir("w", "/work").is_ok());
        assert!(check_workdir("w", "relative").is_err());
    }
}
