//! The secret commands as apply runs them: `PutSecret` (in a pipeline that exists), and `ResealSecrets`,
//! which a key rotation commits for secrets, the secret settings of subscriptions and the install-time
//! settings of extensions.
//!
//! The store itself and its rules are in `secrets.rs`; this file only knows where the state keeps what a
//! command touches.

use crate::secrets::{Reseal, ResealTarget, SEALED_TEXT_PREFIX, Sealed, SecretScope};
use crate::state::State;
use crate::{Applied, Error};

impl State {
    /// `PutSecret`: a pipeline secret's pipeline must exist; a global secret needs none.
    pub(crate) fn put_secret(
        &mut self,
        scope: &SecretScope,
        key: &str,
        value: &Sealed,
        size: u64,
        namespaces: &[String],
        at: i64,
    ) -> Result<(), Error> {
        if let SecretScope::Pipeline { namespace, pipeline } = scope {
            self.pipeline(namespace, pipeline)?;
        }
        self.secrets.put(scope, key, value, size, namespaces, at)
    }

    /// `ResealSecrets`: each value that is still the one its re-sealing was made from is replaced; the
    /// others (changed or deleted since) are left as they are.
    pub(crate) fn reseal_secrets(&mut self, reseals: &[Reseal]) -> Result<Applied, Error> {
        if reseals.len() > crate::secrets::MAX_RESEALS {
            return Err(Error::invalid(
                "reseals",
                format!("at most {} values at once", crate::secrets::MAX_RESEALS),
            ));
        }
        for (i, reseal) in reseals.iter().enumerate() {
            reseal.value.check(&format!("reseals[{i}].value"))?;
        }
        for reseal in reseals {
            match &reseal.target {
                ResealTarget::Secret { scope, key } => {
                    self.secrets.reseal(scope, key, &reseal.previous_nonce, &reseal.value);
                }
                ResealTarget::Setting {
                    namespace,
                    pipeline,
                    label,
                    name,
                } => {
                    let Ok(record) = self.record_mut(namespace, pipeline) else {
                        continue;
                    };
                    if let Some(setting) = record
                        .subscriptions
                        .get_mut(label)
                        .and_then(|s| s.settings.get_mut(name))
                    {
                        reseal_setting(setting, reseal);
                    }
                }
                ResealTarget::ExtensionSetting { extension, name } => {
                    if let Some(setting) = self
                        .extensions
                        .get_mut(extension)
                        .and_then(|e| e.settings.get_mut(name))
                    {
                        reseal_setting(setting, reseal);
                    }
                }
            }
        }
        Ok(Applied::Done)
    }
}

/// Replaces a stored setting with its re-sealing if it is still the value that was made from.
fn reseal_setting(setting: &mut String, reseal: &Reseal) {
    let previous = Sealed::from_text(setting).map(|s| s.nonce);
    let unchanged = match previous {
        Some(nonce) => nonce == reseal.previous_nonce,
        // Stored in the clear by an older Gofer: sealed now, once.
        None => reseal.previous_nonce.is_empty() && !setting.starts_with(SEALED_TEXT_PREFIX),
    };
    if unchanged {
        *setting = reseal.value.to_text();
    }
}
