//! Extensions, subscriptions and fires: the records behind triggers and the checks on their settings.
//!
//! How a fire becomes a run is in `subscriptions.rs`; these are the records it reads and keeps, part of
//! the snapshot format.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::schedule::Overlap;

/// How many idempotency keys a subscription remembers; older ones are forgotten first.
pub const REMEMBERED_KEYS: usize = 1024;
/// How many recent skipped fires a subscription keeps for people to read.
pub const RECENT_SKIPS: usize = 20;
/// The most settings a subscription or an installation may carry.
const MAX_SETTINGS: usize = 64;

/// The shortest webhook secret a new subscription may have, in bytes.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// The built-in extensions, which run inside the extension host rather than as containers.
pub const BUILTIN_EXTENSIONS: [&str; 3] = ["interval", "cron", "webhook"];

/// A setting an extension accepts, as it registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingSpec {
    pub name: String,
    pub required: bool,
    pub description: String,
    /// A secret setting (such as a webhook's HMAC key) is never shown back.
    #[serde(default)]
    pub secret: bool,
}

/// What an extension said about itself when it last registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub version: String,
    pub documentation: String,
    pub settings: Vec<SettingSpec>,
    pub registered_at: i64,
}

/// An installed extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionRecord {
    /// The container image the host runs; empty for a built-in.
    pub image: String,
    pub builtin: bool,
    /// Settings given at install time, passed to the extension's container as env.
    pub settings: BTreeMap<String, String>,
    pub installed_at: i64,
    pub registration: Option<Registration>,
}

/// What started a run, recorded on the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub extension: String,
    pub subscription: String,
    pub idempotency_key: String,
    /// The scheduled instant (interval, cron), or 0.
    pub scheduled_at: i64,
    /// The delivery id (webhook), or empty.
    pub delivery: String,
    pub parameters: BTreeMap<String, String>,
}

/// One fire, as an extension sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    pub namespace: String,
    pub pipeline: String,
    pub subscription: String,
    /// The extension the fire comes from; it must own the subscription.
    pub extension: String,
    pub idempotency_key: String,
    pub scheduled_at: i64,
    pub delivery: String,
    pub parameters: BTreeMap<String, String>,
}

/// What a fire did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FireOutcome {
    /// A run was made.
    Started(u64),
    /// The fire waits for the subscription's previous run to end.
    Buffered,
    /// The fire was dropped; the reason says why.
    Skipped(String),
}

/// A fire that was skipped, kept for people to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipEvent {
    pub at: i64,
    pub scheduled_at: i64,
    pub reason: String,
}

/// A pipeline's link to an extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub extension: String,
    pub settings: BTreeMap<String, String>,
    pub created_at: i64,
    /// The newest scheduled instant fired or skipped; catch-up starts after it.
    pub last_scheduled_at: i64,
    /// The run the newest fire made.
    pub last_run: Option<u64>,
    pub fired: u64,
    pub skipped: u64,
    /// The newest instant a `SkipFires` counted; a repeated `SkipFires` up to it counts nothing.
    #[serde(default)]
    pub skipped_through: i64,
    pub recent_skips: VecDeque<SkipEvent>,
    /// A fire waiting for `last_run` to end (overlap `buffer_one`).
    pub buffered: Option<Fire>,
    /// Recent idempotency keys and what they did, oldest first.
    pub keys: VecDeque<(String, FireOutcome)>,
}

impl Subscription {
    /// The overlap policy in its settings; `allow` when it names none.
    pub fn overlap(&self) -> Overlap {
        self.settings
            .get("overlap")
            .and_then(|o| Overlap::parse("overlap", o).ok())
            .unwrap_or(Overlap::Allow)
    }

    pub(crate) fn skip(&mut self, at: i64, scheduled_at: i64, reason: String) -> FireOutcome {
        self.skipped += 1;
        self.last_scheduled_at = self.last_scheduled_at.max(scheduled_at);
        self.recent_skips.push_back(SkipEvent {
            at,
            scheduled_at,
            reason: reason.clone(),
        });
        while self.recent_skips.len() > RECENT_SKIPS {
            self.recent_skips.pop_front();
        }
        FireOutcome::Skipped(reason)
    }

    pub(crate) fn remember(&mut self, key: String, outcome: FireOutcome) {
        self.keys.push_back((key, outcome));
        while self.keys.len() > REMEMBERED_KEYS {
            self.keys.pop_front();
        }
    }
}

/// The webhook's own rules: a secret to sign with, and well-formed field paths.
pub(crate) fn check_webhook(settings: &BTreeMap<String, String>) -> Result<(), Error> {
    if settings.get("secret").is_none_or(|s| s.trim().is_empty()) {
        return Err(Error::invalid(
            "settings.secret",
            "must not be empty: it is the key deliveries are signed with",
        ));
    }
    if let Some(fields) = settings.get("fields") {
        let paths: Vec<&str> = fields.split(',').map(str::trim).collect();
        if paths.iter().any(|p| p.is_empty() || p.split('.').any(str::is_empty)) {
            return Err(Error::invalid(
                "settings.fields",
                "must be comma-separated JSON paths such as ref,repository.full_name",
            ));
        }
    }
    Ok(())
}

/// The rules a subscription must meet when it is made now, beyond those apply checks: a webhook's secret
/// is at least [`MIN_WEBHOOK_SECRET_BYTES`] long. Checked where a subscription is asked for, before it is
/// proposed, and not in apply: logs written before the rule hold shorter secrets and must replay alike.
pub fn check_new_subscription(extension: &str, settings: &BTreeMap<String, String>) -> Result<(), Error> {
    let secret = settings.get("secret").map_or("", |s| s.trim());
    if extension == "webhook" && !secret.is_empty() && secret.len() < MIN_WEBHOOK_SECRET_BYTES {
        return Err(Error::invalid(
            "settings.secret",
            format!("must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes, so that signatures cannot be guessed"),
        ));
    }
    Ok(())
}

pub(crate) fn check_settings(field: &str, settings: &BTreeMap<String, String>) -> Result<(), Error> {
    if settings.len() > MAX_SETTINGS {
        return Err(Error::invalid(field, format!("at most {MAX_SETTINGS} settings")));
    }
    for (key, value) in settings {
        if key.is_empty() || key.len() > 64 || value.len() > 4096 {
            return Err(Error::invalid(
                format!("{field}.{key}"),
                "names are 1-64 bytes and values at most 4096",
            ));
        }
    }
    Ok(())
}
