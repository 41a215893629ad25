//! The bounds on what callers put in the log: a run's or a fire's parameters, a fire's delivery id, an
//! executor's reason and an extension's registration.
//!
//! Run parameters are checked in apply, as they always were. The others come from senders Gofer does not
//! trust (executors, extensions, webhooks) and are checked at the edge that receives them, before they
//! are proposed, never newly in apply: apply refusing what an older Gofer accepted would replay an old
//! log differently, and nodes of two versions would disagree while a cluster is upgraded.

use std::collections::BTreeMap;

use crate::Error;
use crate::triggers::{Fire, Registration};

/// The most parameters a run or a fire takes.
pub const MAX_PARAMETERS: usize = 64;
/// The most bytes a run's or a fire's parameters take in all, names and values.
pub const MAX_PARAMETER_BYTES: usize = 64 * 1024;
/// The longest parameter name, in bytes.
const MAX_PARAMETER_NAME_BYTES: usize = 128;
/// The longest reason an attempt keeps, in characters.
pub const MAX_REASON_CHARS: usize = 4096;
/// The longest delivery id a fire carries, in bytes.
pub const MAX_DELIVERY_BYTES: usize = 128;
/// The longest idempotency key a fire carries, in bytes (apply refuses longer ones too).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// The most settings an extension registers.
pub const MAX_REGISTERED_SETTINGS: usize = 64;
/// The longest version an extension registers with, in bytes.
pub const MAX_VERSION_BYTES: usize = 128;
/// The longest documentation an extension registers, in bytes.
pub const MAX_DOCUMENTATION_BYTES: usize = 16 * 1024;
/// The longest description of one registered setting, in bytes.
pub const MAX_SETTING_DESCRIPTION_BYTES: usize = 1024;

/// Which names a set of parameters may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParameterNames {
    /// A run's: env names, given to tasks as they are.
    Env,
    /// A fire's: any text without control characters (a webhook's are JSON paths such as
    /// `repository.full_name`), given to tasks as `GOFER_PARAM_<NAME>`.
    Trigger,
}

impl ParameterNames {
    fn allows(self, name: &str) -> bool {
        let mut chars = name.chars();
        let shape = match self {
            ParameterNames::Env => {
                chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            ParameterNames::Trigger => !name.is_empty() && !name.chars().any(char::is_control),
        };
        shape && name.len() <= MAX_PARAMETER_NAME_BYTES
    }

    fn rule(self) -> &'static str {
        match self {
            ParameterNames::Env => "names are env names: letters, digits and '_', not starting with a digit",
            ParameterNames::Trigger => "names are 1-128 bytes without control characters",
        }
    }
}

/// Checks parameters: at most [`MAX_PARAMETERS`], names that `names` allows (at most 128 bytes), values
/// without NUL, and [`MAX_PARAMETER_BYTES`] in all. Errors name `parameters` or `parameters.NAME`.
pub(crate) fn check_parameters(parameters: &BTreeMap<String, String>, names: ParameterNames) -> Result<(), Error> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(Error::invalid(
            "parameters",
            format!("at most {MAX_PARAMETERS} parameters"),
        ));
    }
    let mut bytes = 0;
    for (name, value) in parameters {
        let field = format!("parameters.{name}");
        if !names.allows(name) {
            return Err(Error::invalid(field, names.rule()));
        }
        if value.contains('\0') {
            return Err(Error::invalid(field, "values must not contain NUL"));
        }
        bytes += name.len() + value.len();
    }
    if bytes > MAX_PARAMETER_BYTES {
        return Err(Error::invalid("parameters", "at most 64 KiB in all"));
    }
    Ok(())
}

/// Checks a fire from a trigger before it is proposed: its idempotency key (1-256 bytes), its delivery id
/// (at most 128 bytes, no control characters) and its parameters (as a run's, but any names without
/// control characters).
pub fn check_fire(fire: &Fire) -> Result<(), Error> {
    if fire.idempotency_key.is_empty() || fire.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(Error::invalid("idempotency_key", "must be 1-256 bytes"));
    }
    if fire.delivery.len() > MAX_DELIVERY_BYTES || fire.delivery.chars().any(char::is_control) {
        return Err(Error::invalid(
            "delivery_id",
            "must be at most 128 bytes without control characters",
        ));
    }
    check_parameters(&fire.parameters, ParameterNames::Trigger)
}

/// Cuts an attempt's reason to [`MAX_REASON_CHARS`] characters, as apply keeps it.
pub fn truncate_reason(reason: &mut String) {
    if let Some((end, _)) = reason.char_indices().nth(MAX_REASON_CHARS) {
        reason.truncate(end);
    }
}

/// Checks what an extension registers before it is proposed: its version, documentation, and at most
/// [`MAX_REGISTERED_SETTINGS`] settings with short descriptions.
pub fn check_registration(registration: &Registration) -> Result<(), Error> {
    if registration.version.len() > MAX_VERSION_BYTES {
        return Err(Error::invalid("version", "must be at most 128 bytes"));
    }
    if registration.documentation.len() > MAX_DOCUMENTATION_BYTES {
        return Err(Error::invalid("documentation", "must be at most 16 KiB"));
    }
    if registration.settings.len() > MAX_REGISTERED_SETTINGS {
        return Err(Error::invalid(
            "settings",
            format!("at most {MAX_REGISTERED_SETTINGS} settings"),
        ));
    }
    // Setting names are apply's to check, as they always were.
    for (i, spec) in registration.settings.iter().enumerate() {
        if spec.description.len() > MAX_SETTING_DESCRIPTION_BYTES {
            return Err(Error::invalid(
                format!("settings[{i}].description"),
                "must be at most 1024 bytes",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
