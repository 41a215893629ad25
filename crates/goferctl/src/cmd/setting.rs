//! `key=value` arguments, as `--setting` takes them for extensions and subscriptions.

use std::collections::HashMap;

/// A `key=value` setting.
#[derive(Clone)]
pub struct Setting(String, String);

/// A `--setting` that is not `key=value`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not key=value")]
pub struct NotKeyValue(String);

/// Parses `key=value`; the key must not be blank, the value may be empty or hold `=`.
pub fn parse_setting(text: &str) -> Result<Setting, NotKeyValue> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok(Setting(key.trim().to_string(), value.to_string())),
        _ => Err(NotKeyValue(text.to_string())),
    }
}

/// The settings as the request's map; a key given twice keeps its last value.
pub fn settings_map(settings: Vec<Setting>) -> HashMap<String, String> {
    settings.into_iter().map(|Setting(k, v)| (k, v)).collect()
}
