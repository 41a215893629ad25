//! How goferctl prints: the output format, JSON values, aligned tables and times, for every command.
//! What a command prints is its own module's business; `json` makes the JSON of a message.

use serde_json::Value;

/// `println!` that ends goferctl quietly when stdout is closed (`goferctl run list | head -1`) instead of
/// panicking, and with one error line when stdout fails otherwise.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::output::stdout_failed(err);
        }
    }};
}

/// The output format of read verbs: `json` and `yaml` carry the same fields, the proto message's.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// The structured format this process prints in, set once by `main` (`-o json` unless `-o yaml`).
static STRUCTURED: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// Makes `print_json` and `print_record` print YAML rather than JSON, for `-o yaml`.
pub fn structured_as(format: Format) {
    let _ = STRUCTURED.set(format);
}

fn yaml() -> bool {
    STRUCTURED.get() == Some(&Format::Yaml)
}

/// Ends the process after stdout failed: quietly when the reader went away, else with one error line.
pub fn stdout_failed(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {err}");
    std::process::exit(1);
}

/// Prints one result: `json` for `-o json`, `table` for people.
pub fn emit(format: Format, json: impl FnOnce(), table: impl FnOnce()) {
    match format {
        Format::Json | Format::Yaml => json(),
        Format::Table => table(),
    }
}

/// Prints a JSON value, pretty; as YAML under `-o yaml`.
pub fn print_json(value: &Value) {
    if yaml() {
        say!("{}", to_yaml(value).trim_end());
    } else {
        say!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values always serialize")
        );
    }
}

/// Prints one record of a stream: a JSON line, or under `-o yaml` a YAML document of its own.
pub fn print_record(value: &Value) {
    if yaml() {
        say!("---\n{}", to_yaml(value).trim_end());
    } else {
        say!("{value}");
    }
}

fn to_yaml(value: &Value) -> String {
    serde_norway::to_string(value).expect("JSON values always serialize as YAML")
}

/// Prints rows under headers, each column as wide as its widest cell.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        say!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// A Unix time in milliseconds as UTC `YYYY-MM-DD HH:MM:SS`, or `-` for unset.
pub fn time(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(at) if millis > 0 => at.format("%Y-%m-%d %H:%M:%S").to_string(),
        _ => "-".to_string(),
    }
}

/// How long from start to end, such as `2.5s`, or `-` when it has not both.
pub fn duration(start: i64, end: i64) -> String {
    if start <= 0 || end < start {
        return "-".to_string();
    }
    format!("{:.1}s", (end - start) as f64 / 1000.0)
}

/// A time with milliseconds, for scheduled instants.
pub fn precise_time(millis: i64) -> String {
    format!("{}.{:03}", time(millis), millis.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_000), "1970-01-01 00:00:01");
        assert_eq!(time(1_709_164_800_000), "2024-02-29 00:00:00");
        assert_eq!(time(1_798_761_599_000), "2026-12-31 23:59:59");
        assert_eq!(time(-1), "-");
        assert_eq!(time(i64::MAX), "-");
    }

    #[test]
    fn precise_times_add_the_milliseconds() {
        assert_eq!(precise_time(1_709_164_800_007), "2024-02-29 00:00:00.007");
    }
}
