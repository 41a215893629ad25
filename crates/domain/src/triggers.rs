//! Extensions, subscriptions and fires: the state behind triggers, and the rules a fire follows.
//!
//! A fire becomes a run only through [`crate::Command::Fire`], applied here: its idempotency key is
//! remembered per subscription, so the same key never makes a second run whatever retries, reconnects or
//! restarts happen; and the subscription's `overlap` setting decides what happens while its previous run
//! is still going. A buffered fire starts when that run ends, inside the same apply that ends it, so no
//! component has to remember to do it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::schedule::{Overlap, ScheduleSettings};
use crate::{Error, PipelineRecord, State, validate_id};

/// How many idempotency keys a subscription remembers; older ones are forgotten first.
pub const REMEMBERED_KEYS: usize = 1024;
/// How many recent skipped fires a subscription keeps for people to read.
pub const RECENT_SKIPS: usize = 20;
/// The most settings a subscription or an installation may carry.
const MAX_SETTINGS: usize = 64;

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

    fn skip(&mut self, at: i64, scheduled_at: i64, reason: String) -> FireOutcome {
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

    fn remember(&mut self, key: String, outcome: FireOutcome) {
        self.keys.push_back((key, outcome));
        while self.keys.len() > REMEMBERED_KEYS {
            self.keys.pop_front();
        }
    }
}

/// The webhook's own rules: a secret to sign with, and well-formed field paths.
fn check_webhook(settings: &BTreeMap<String, String>) -> Result<(), Error> {
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

fn check_settings(field: &str, settings: &BTreeMap<String, String>) -> Result<(), Error> {
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

impl State {
    pub(crate) fn install_extension(
        &mut self,
        name: &str,
        image: &str,
        settings: &BTreeMap<String, String>,
        at: i64,
    ) -> Result<(), Error> {
        validate_id("name", name)?;
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "image",
                "must be a non-empty image name without whitespace",
            ));
        }
        crate::pipeline::check_image_reference("image", image)?;
        check_settings("settings", settings)?;
        if self.extensions.contains_key(name) {
            return Err(Error::AlreadyExists(format!("extension {name:?}")));
        }
        self.extensions.insert(
            name.to_string(),
            ExtensionRecord {
                image: image.to_string(),
                builtin: false,
                settings: settings.clone(),
                installed_at: at,
                registration: None,
            },
        );
        Ok(())
    }

    pub(crate) fn uninstall_extension(&mut self, name: &str) -> Result<(), Error> {
        let record = self
            .extensions
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("extension {name:?}")))?;
        if record.builtin {
            return Err(Error::FailedPrecondition(format!("extension {name:?} is built in")));
        }
        let users: Vec<String> = self
            .subscriptions()
            .filter(|(_, _, _, s)| s.extension == name)
            .map(|(ns, p, label, _)| format!("{ns}/{p}/{label}"))
            .collect();
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "extension {name:?} still has subscriptions: {}; delete them first",
                users.join(", ")
            )));
        }
        self.extensions.remove(name);
        Ok(())
    }

    pub(crate) fn register_extension(
        &mut self,
        name: &str,
        builtin: bool,
        registration: &Registration,
        at: i64,
    ) -> Result<(), Error> {
        validate_id("name", name)?;
        if builtin && !BUILTIN_EXTENSIONS.contains(&name) {
            return Err(Error::invalid("name", format!("{name:?} is not a built-in extension")));
        }
        for (i, spec) in registration.settings.iter().enumerate() {
            if spec.name.is_empty() || spec.name.len() > 64 {
                return Err(Error::invalid(format!("settings[{i}].name"), "must be 1-64 bytes"));
            }
        }
        let record = match self.extensions.get_mut(name) {
            Some(record) if record.builtin != builtin => {
                return Err(Error::FailedPrecondition(format!("extension {name:?} is built in")));
            }
            Some(record) => record,
            None if builtin => self.extensions.entry(name.to_string()).or_insert(ExtensionRecord {
                image: String::new(),
                builtin: true,
                settings: BTreeMap::new(),
                installed_at: at,
                registration: None,
            }),
            None => return Err(Error::NotFound(format!("extension {name:?} (install it first)"))),
        };
        record.registration = Some(registration.clone());
        Ok(())
    }

    pub(crate) fn create_subscription(
        &mut self,
        namespace: &str,
        pipeline: &str,
        label: &str,
        extension: &str,
        settings: &BTreeMap<String, String>,
        at: i64,
    ) -> Result<(), Error> {
        validate_id("label", label)?;
        check_settings("settings", settings)?;
        let record = self
            .extensions
            .get(extension)
            .ok_or_else(|| Error::NotFound(format!("extension {extension:?}")))?;
        let registration = record.registration.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "extension {extension:?} has not registered yet; try again shortly"
            ))
        })?;
        for key in settings.keys() {
            if !registration.settings.iter().any(|s| &s.name == key) {
                let known: Vec<&str> = registration.settings.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::invalid(
                    format!("settings.{key}"),
                    format!(
                        "extension {extension:?} has no such setting (it takes: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        for spec in registration.settings.iter().filter(|s| s.required) {
            if !settings.contains_key(&spec.name) {
                return Err(Error::invalid(format!("settings.{}", spec.name), "is required"));
            }
        }
        if let Some(overlap) = settings.get("overlap") {
            Overlap::parse("settings.overlap", overlap)?;
        }
        if record.builtin {
            match extension {
                "interval" => drop(ScheduleSettings::interval(settings, at)?),
                "cron" => drop(ScheduleSettings::cron(settings)?),
                "webhook" => check_webhook(settings)?,
                _ => {}
            }
        }
        let pipeline_record = self.pipeline_mut(namespace, pipeline)?;
        if pipeline_record.subscriptions.contains_key(label) {
            return Err(Error::AlreadyExists(format!(
                "subscription {label:?} of pipeline {pipeline:?}"
            )));
        }
        pipeline_record.subscriptions.insert(
            label.to_string(),
            Subscription {
                extension: extension.to_string(),
                settings: settings.clone(),
                created_at: at,
                last_scheduled_at: at,
                last_run: None,
                fired: 0,
                skipped: 0,
                skipped_through: 0,
                recent_skips: VecDeque::new(),
                buffered: None,
                // The keys of a deleted subscription of the same label come back with it: a delivery or an
                // instant fired before the delete still makes no second run.
                keys: pipeline_record.retired_keys.remove(label).unwrap_or_default(),
            },
        );
        Ok(())
    }

    pub(crate) fn delete_subscription(&mut self, namespace: &str, pipeline: &str, label: &str) -> Result<(), Error> {
        let record = self.pipeline_mut(namespace, pipeline)?;
        let removed = record
            .subscriptions
            .remove(label)
            .ok_or_else(|| Error::NotFound(format!("subscription {label:?} of pipeline {pipeline:?}")))?;
        record.retired_keys.insert(label.to_string(), removed.keys);
        Ok(())
    }

    /// Applies one fire. A key seen before returns what it did then, and changes nothing.
    pub(crate) fn fire(&mut self, fire: &Fire, at: i64) -> Result<(FireOutcome, bool), Error> {
        let record = self.pipeline_mut(&fire.namespace, &fire.pipeline)?;
        let subscription = record.subscriptions.get(&fire.subscription).ok_or_else(|| {
            Error::NotFound(format!(
                "subscription {:?} of pipeline {:?}",
                fire.subscription, fire.pipeline
            ))
        })?;
        if subscription.extension != fire.extension {
            return Err(Error::FailedPrecondition(format!(
                "subscription {:?} belongs to extension {:?}, not {:?}",
                fire.subscription, subscription.extension, fire.extension
            )));
        }
        if fire.idempotency_key.is_empty() || fire.idempotency_key.len() > 256 {
            return Err(Error::invalid("idempotency_key", "must be 1-256 bytes"));
        }
        if let Some((_, outcome)) = subscription.keys.iter().find(|(k, _)| k == &fire.idempotency_key) {
            return Ok((outcome.clone(), true));
        }
        let previous = subscription
            .last_run
            .filter(|run| record.runs.get(run).is_some_and(|r| !r.state.is_terminal()));
        let overlap = subscription.overlap();
        let outcome = match (previous, overlap) {
            (None, _) | (Some(_), Overlap::Allow) => FireOutcome::Started(record.start_triggered(fire, at)),
            (Some(run), Overlap::Skip) => {
                let sub = record.subscriptions.get_mut(&fire.subscription).expect("checked above");
                sub.skip(at, fire.scheduled_at, format!("overlap skip: run {run} is still going"))
            }
            (Some(run), Overlap::BufferOne) => {
                let sub = record.subscriptions.get_mut(&fire.subscription).expect("checked above");
                if sub.buffered.is_some() {
                    sub.skip(
                        at,
                        fire.scheduled_at,
                        format!("overlap buffer_one: run {run} is still going and a fire is already buffered"),
                    )
                } else {
                    sub.buffered = Some(fire.clone());
                    sub.last_scheduled_at = sub.last_scheduled_at.max(fire.scheduled_at);
                    FireOutcome::Buffered
                }
            }
            (Some(run), Overlap::CancelOther) => {
                record.cancel_run(run, "cancelled by a newer fire (overlap cancel_other)", at)?;
                FireOutcome::Started(record.start_triggered(fire, at))
            }
        };
        let sub = record.subscriptions.get_mut(&fire.subscription).expect("checked above");
        sub.remember(fire.idempotency_key.clone(), outcome.clone());
        Ok((outcome, false))
    }

    /// Records instants a trigger skipped without firing (missed beyond the catch-up window).
    pub(crate) fn skip_fires(
        &mut self,
        (namespace, pipeline, label): (&str, &str, &str),
        count: u64,
        last_scheduled_at: i64,
        reason: &str,
        at: i64,
    ) -> Result<(), Error> {
        let record = self.pipeline_mut(namespace, pipeline)?;
        let sub = record
            .subscriptions
            .get_mut(label)
            .ok_or_else(|| Error::NotFound(format!("subscription {label:?} of pipeline {pipeline:?}")))?;
        if count == 0 || last_scheduled_at <= sub.skipped_through {
            return Ok(());
        }
        sub.skipped_through = last_scheduled_at;
        sub.skip(at, last_scheduled_at, format!("{count} missed fire(s): {reason}"));
        sub.skipped += count - 1;
        Ok(())
    }

    /// Every subscription: (namespace, pipeline, label, subscription).
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, &str, &str, &Subscription)> {
        self.namespaces.iter().flat_map(|(ns, n)| {
            n.pipelines.iter().flat_map(move |(p, record)| {
                record
                    .subscriptions
                    .iter()
                    .map(move |(label, s)| (ns.as_str(), p.as_str(), label.as_str(), s))
            })
        })
    }
}

impl PipelineRecord {
    fn start_triggered(&mut self, fire: &Fire, at: i64) -> u64 {
        let trigger = Trigger {
            extension: fire.extension.clone(),
            subscription: fire.subscription.clone(),
            idempotency_key: fire.idempotency_key.clone(),
            scheduled_at: fire.scheduled_at,
            delivery: fire.delivery.clone(),
            parameters: fire.parameters.clone(),
        };
        let run = self.start_run(at, Some(trigger));
        let sub = self
            .subscriptions
            .get_mut(&fire.subscription)
            .expect("the fire's subscription exists");
        sub.last_run = Some(run);
        sub.fired += 1;
        sub.last_scheduled_at = sub.last_scheduled_at.max(fire.scheduled_at);
        run
    }

    /// Starts the buffered fires whose previous run has ended.
    pub(crate) fn start_buffered(&mut self, at: i64) {
        let ready: Vec<Fire> = self
            .subscriptions
            .values()
            .filter(|s| s.buffered.is_some())
            .filter(|s| {
                s.last_run
                    .is_none_or(|run| self.runs.get(&run).is_none_or(|r| r.state.is_terminal()))
            })
            .filter_map(|s| s.buffered.clone())
            .collect();
        for fire in ready {
            let run = self.start_triggered(&fire, at);
            let sub = self
                .subscriptions
                .get_mut(&fire.subscription)
                .expect("the fire's subscription exists");
            sub.buffered = None;
            if let Some(entry) = sub.keys.iter_mut().find(|(k, _)| k == &fire.idempotency_key) {
                entry.1 = FireOutcome::Started(run);
            }
        }
    }
}

#[cfg(test)]
mod tests;
