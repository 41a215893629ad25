//! Extensions, subscriptions and fires as apply changes them, and the rules a fire follows.
//!
//! A fire becomes a run only through [`crate::Command::Fire`], applied here: its idempotency key is
//! remembered per subscription, so the same key never makes a second run whatever retries, reconnects or
//! restarts happen; and the subscription's `overlap` setting decides what happens while its previous run
//! is still going. A buffered fire starts when that run ends, inside the same apply that ends it, so no
//! component has to remember to do it. Every fire's decision is told in the command's journal.

use std::collections::{BTreeMap, VecDeque};

use crate::events::Journal;
use crate::runs::{NewRun, PipelineMut};
use crate::schedule::{Overlap, ScheduleSettings};
use crate::state::State;
use crate::triggers::{
    BUILTIN_EXTENSIONS, ExtensionRecord, Fire, FireOutcome, Registration, Subscription, Trigger, check_settings,
    check_webhook,
};
use crate::{Error, validate_id};

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
        let pipeline_record = self.record_mut(namespace, pipeline)?;
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
        let record = self.record_mut(namespace, pipeline)?;
        let removed = record
            .subscriptions
            .remove(label)
            .ok_or_else(|| Error::NotFound(format!("subscription {label:?} of pipeline {pipeline:?}")))?;
        record.retired_keys.insert(label.to_string(), removed.keys);
        Ok(())
    }

    /// Applies one fire, telling its decision. A key seen before returns what it did then, and changes
    /// nothing.
    pub(crate) fn fire(&mut self, fire: &Fire, at: i64, journal: &mut Journal) -> Result<(FireOutcome, bool), Error> {
        let mut changing = self.pipeline_mut(&fire.namespace, &fire.pipeline, journal)?;
        let record = &*changing.record;
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
            let outcome = outcome.clone();
            changing.journal.fired(fire, &outcome, true);
            return Ok((outcome, true));
        }
        let previous = subscription
            .last_run
            .filter(|run| record.runs.get(run).is_some_and(|r| !r.state.is_terminal()));
        let overlap = subscription.overlap();
        let outcome = match (previous, overlap) {
            (None, _) | (Some(_), Overlap::Allow) => FireOutcome::Started(changing.start_triggered(fire, at)),
            (Some(run), Overlap::Skip) => {
                let sub = changing.subscription_mut(&fire.subscription);
                sub.skip(at, fire.scheduled_at, format!("overlap skip: run {run} is still going"))
            }
            (Some(run), Overlap::BufferOne) => {
                let sub = changing.subscription_mut(&fire.subscription);
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
                changing.cancel_run(run, "cancelled by a newer fire (overlap cancel_other)", None, at)?;
                FireOutcome::Started(changing.start_triggered(fire, at))
            }
        };
        changing
            .subscription_mut(&fire.subscription)
            .remember(fire.idempotency_key.clone(), outcome.clone());
        changing.journal.fired(fire, &outcome, false);
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
        journal: &mut Journal,
    ) -> Result<(), Error> {
        let record = self.record_mut(namespace, pipeline)?;
        let sub = record
            .subscriptions
            .get_mut(label)
            .ok_or_else(|| Error::NotFound(format!("subscription {label:?} of pipeline {pipeline:?}")))?;
        // Told even when it counts nothing new, as every applied SkipFires always was.
        journal.fires_skipped((namespace, pipeline, label), count, last_scheduled_at, reason);
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

impl PipelineMut<'_> {
    /// Subscription `label`, which the caller found.
    fn subscription_mut(&mut self, label: &str) -> &mut Subscription {
        self.record
            .subscriptions
            .get_mut(label)
            .expect("the caller found the subscription")
    }

    /// Starts a run of the newest version for `fire`, and records it on the fire's subscription.
    fn start_triggered(&mut self, fire: &Fire, at: i64) -> u64 {
        let trigger = Trigger {
            extension: fire.extension.clone(),
            subscription: fire.subscription.clone(),
            idempotency_key: fire.idempotency_key.clone(),
            scheduled_at: fire.scheduled_at,
            delivery: fire.delivery.clone(),
            parameters: fire.parameters.clone(),
        };
        let run = self.start_run(NewRun {
            version: self.record.versions.len() as u64,
            trigger: Some(trigger),
            request_id: String::new(),
            parameters: BTreeMap::new(),
            retry_of: 0,
            at,
        });
        let sub = self.subscription_mut(&fire.subscription);
        sub.last_run = Some(run);
        sub.fired += 1;
        sub.last_scheduled_at = sub.last_scheduled_at.max(fire.scheduled_at);
        run
    }

    /// Starts the buffered fires whose previous run has ended.
    pub(crate) fn start_buffered(&mut self, at: i64) {
        let record = &*self.record;
        let ready: Vec<Fire> = record
            .subscriptions
            .values()
            .filter(|s| s.buffered.is_some())
            .filter(|s| {
                s.last_run
                    .is_none_or(|run| record.runs.get(&run).is_none_or(|r| r.state.is_terminal()))
            })
            .filter_map(|s| s.buffered.clone())
            .collect();
        for fire in ready {
            let run = self.start_triggered(&fire, at);
            let sub = self.subscription_mut(&fire.subscription);
            sub.buffered = None;
            if let Some(entry) = sub.keys.iter_mut().find(|(k, _)| k == &fire.idempotency_key) {
                entry.1 = FireOutcome::Started(run);
            }
        }
    }
}

#[cfg(test)]
mod tests;
