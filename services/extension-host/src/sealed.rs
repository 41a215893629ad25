//! Opening the secret settings of subscriptions (a webhook's `secret`) and the install-time settings of
//! extensions, which the api sealed with the cluster's secret key: here, where the signature is checked or
//! the extension is given its settings, and nowhere else. A setting an older Gofer stored in the clear is
//! used as it is.

use std::collections::BTreeMap;

use gofer_domain::secrets::{Sealed, extension_setting_associated_data, setting_associated_data};
use gofer_secrets::Keyring;

/// One subscription: namespace, pipeline, label.
pub(crate) type SubscriptionKey<'a> = (&'a str, &'a str, &'a str);

/// `stored` opened under `associated_data` if it is sealed, as it is if an older Gofer stored it in the
/// clear.
fn open(keyring: &Keyring, associated_data: &str, stored: &str) -> Result<String, gofer_secrets::Error> {
    match Sealed::from_text(stored) {
        Some(sealed) => keyring.open_text(associated_data, &sealed),
        None => Ok(stored.to_string()),
    }
}

/// The value of setting `name` of subscription `key` as `stored`, opened if sealed; `None` (and a warning
/// naming the setting, never its value) if it does not open with this node's keys.
pub(crate) fn open_setting(keyring: &Keyring, key: SubscriptionKey<'_>, name: &str, stored: &str) -> Option<String> {
    let (namespace, pipeline, label) = key;
    open(
        keyring,
        &setting_associated_data(namespace, pipeline, label, name),
        stored,
    )
    .inspect_err(|err| {
        tracing::warn!(%err, namespace, pipeline, label, setting = name, "a secret setting does not open");
    })
    .ok()
}

/// `settings` of subscription `key` with every sealed value opened; one that does not open is left out.
pub(crate) fn open_settings(
    keyring: &Keyring,
    key: SubscriptionKey<'_>,
    settings: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    settings
        .iter()
        .filter_map(|(name, stored)| Some((name.clone(), open_setting(keyring, key, name, stored)?)))
        .collect()
}

/// The install-time `settings` of `extension`, each opened (or used as stored, if an older Gofer stored it
/// in the clear); one that does not open with this node's keys is left out, with a warning naming it.
pub(crate) fn open_install_settings(
    keyring: &Keyring,
    extension: &str,
    settings: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    settings
        .iter()
        .filter_map(|(name, stored)| {
            let value = open(keyring, &extension_setting_associated_data(extension, name), stored)
                .inspect_err(|err| {
                    tracing::warn!(%err, extension, setting = %name, "an extension's setting does not open");
                })
                .ok()?;
            Some((name.clone(), value))
        })
        .collect()
}
