//! `bench/RESULTS.md`: a short header, then one `## <benchmark>` section per benchmark. A benchmark
//! rewrites its own section and leaves every other byte of the file as it was, so results recorded by
//! different benchmarks (or by hand) survive each other's runs.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
mod tests;

/// What a new `bench/RESULTS.md` starts with.
const RESULTS_HEADER: &str = "# Benchmark results

Each benchmark measures Gofer against a raw baseline in the same run, interleaved, because the machines are
shared and noisy (absolute figures move 15–40 % between runs): compare the ratios, not the milliseconds.
Each `## <benchmark>` section is rewritten by its benchmark; the rest of this file is left as it is.
";

/// Prints a benchmark's report, and records it in `bench/RESULTS.md` unless `record` is false (a debug
/// build or `--no-record`), saying on stderr which it did.
pub fn publish(heading: &str, text: &str, record_it: bool) -> anyhow::Result<()> {
    print!("{text}");
    if !record_it {
        eprintln!("not recorded in bench/RESULTS.md");
        return Ok(());
    }
    let path = record(heading, text)?;
    eprintln!("recorded in {}", path.display());
    Ok(())
}

/// Writes `section` as the `heading` section of `bench/RESULTS.md` (made if missing); returns its path.
pub fn record(heading: &str, section: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => RESULTS_HEADER.to_string(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(&path, replace_section(&existing, heading, section))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Returns `document` with the section that starts at the line `heading` (a `## ` heading) replaced by
/// `section`, which should itself start with `heading`. The old section runs up to the next `#` or `##`
/// heading outside a code fence, or to the end. Without such a section, `section` is appended.
pub fn replace_section(document: &str, heading: &str, section: &str) -> String {
    debug_assert!(heading.starts_with("## "), "sections are level-two headings");
    let mut section = section.trim_end().to_string();
    section.push('\n');

    let lines: Vec<&str> = document.split_inclusive('\n').collect();
    let mut in_fence = false;
    let mut start = None;
    let mut end = lines.len();
    for (index, line) in lines.iter().enumerate() {
        let text = line.trim_end();
        if text.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let is_heading = text.starts_with("# ") || text.starts_with("## ");
        match start {
            None if text == heading => start = Some(index),
            Some(_) if is_heading => {
                end = index;
                break;
            }
            _ => {}
        }
    }

    let Some(start) = start else {
        let mut out = document.trim_end().to_string();
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&section);
        return out;
    };
    let mut out: String = lines[..start].concat();
    out.push_str(&section);
    if end < lines.len() {
        out.push('\n');
        out.push_str(&lines[end..].concat());
    }
    out
}

/// `time` as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_timestamp(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let (year, month, day) = civil_from_days(days);
    let minute_of_day = (seconds % 86_400) / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
