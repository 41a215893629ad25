//! Resolving the secret placeholders of a Start, at dispatch and only there: the values of the secrets
//! the task's own env names are opened with the cluster's keys and put into the Start, which travels on
//! the executor's mutual-TLS dispatch stream and is never stored or logged. A placeholder that does not
//! resolve (a missing secret, a global secret not allowed in the namespace, a value that does not open)
//! sends no value at all, and a reason naming the key for the executor to fail the attempt with.
//!
//! Run parameters are never resolved: they may come from a webhook's sender, who must not be able to
//! ask for a secret by writing its placeholder.

use std::collections::BTreeMap;

use gofer_domain::access::RunScope;
use gofer_domain::secrets::placeholders;
use gofer_domain::{AttemptId, State};
use gofer_proto::v1;
use gofer_secrets::Keyring;

/// Fills `start`'s secrets from the env of the task `attempt` runs, as registered, and gives a task with
/// `inject_api_token` its run's task token (as a secret, so that it is masked in the task's output) and
/// `api_host`, the API address that admits it.
pub(crate) fn resolve(
    state: &State,
    keyring: &Keyring,
    api_host: &str,
    attempt: &AttemptId,
    start: &mut v1::StartAttempt,
) {
    let task = &attempt.task;
    let Ok((_, config)) = state.run(&task.namespace, &task.pipeline, task.run) else {
        return;
    };
    let Some(spec) = config.tasks.iter().find(|t| t.id == task.task) else {
        return;
    };
    let mut values = BTreeMap::new();
    let mut names = Vec::new();
    let mut error = None;
    for (name, value) in &spec.env {
        // A malformed placeholder is refused at registration; one registered before secrets existed is
        // left as it was written.
        let Ok(found) = placeholders(value) else { continue };
        if found.is_empty() {
            continue;
        }
        names.push(name.clone());
        for placeholder in found {
            if values.contains_key(placeholder.text) || error.is_some() {
                continue;
            }
            let opened = state
                .secrets
                .resolve(&task.namespace, &task.pipeline, &placeholder)
                .map_err(|err| err.to_string())
                .and_then(|(scope, record)| {
                    keyring
                        .open_text(&scope.associated_data(placeholder.key), &record.value)
                        .map_err(|err| format!("secret {:?} ({scope}) cannot be opened: {err}", placeholder.key))
                });
            match opened {
                Ok(value) => {
                    values.insert(placeholder.text.to_string(), value);
                }
                Err(reason) => error = Some(format!("env {name}: {reason}")),
            }
        }
    }
    match error {
        Some(reason) => {
            start.secrets.clear();
            start.secret_env.clear();
            start.secret_error = reason;
        }
        None => {
            start.secrets = values.into_iter().collect();
            start.secret_env = names;
            if spec.inject_api_token {
                inject_api_token(keyring, api_host, attempt, start);
            }
        }
    }
}

/// The env a task with `inject_api_token` gets.
pub(crate) const API_TOKEN_ENV: &str = "GOFER_API_TOKEN";
pub(crate) const API_HOST_ENV: &str = "GOFER_HOST";

fn inject_api_token(keyring: &Keyring, api_host: &str, attempt: &AttemptId, start: &mut v1::StartAttempt) {
    let run = RunScope {
        namespace: attempt.task.namespace.clone(),
        pipeline: attempt.task.pipeline.clone(),
        run: attempt.task.run,
    };
    let placeholder = format!("secret{{{{{API_TOKEN_ENV}}}}}");
    start.env.insert(API_TOKEN_ENV.to_string(), placeholder.clone());
    start.env.insert(API_HOST_ENV.to_string(), api_host.to_string());
    start.api_gateway = true;
    start.secrets.insert(placeholder, keyring.run_token(&run));
    start.secret_env.retain(|name| name != API_TOKEN_ENV);
    start.secret_env.push(API_TOKEN_ENV.to_string());
}

#[cfg(test)]
mod tests;
