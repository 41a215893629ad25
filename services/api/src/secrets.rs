//! The secret calls: a value is sealed here, on the node that takes it, before anything is proposed, so
//! only ciphertext reaches the log; listing shows metadata alone. Also the sealing of a new
//! subscription's secret settings and of every install-time setting of an extension, and the key rotation, which seals every stored value again under this
//! node's current key.
//!
//! No value, sealed or clear, is ever put into an answer, an error or a log line here.

use std::collections::BTreeMap;

use gofer_domain::secrets::{
    MAX_RESEALS, MAX_SEALED_SETTING_BYTES, MAX_SECRET_BYTES, Reseal, ResealTarget, Sealed, SecretScope,
    extension_setting_associated_data, setting_associated_data, validate_key,
};
use gofer_domain::{Command, Error, State, validate_id};
use gofer_proto::{internal, into_status, secret_to_proto, v1};
use tonic::Status;

use crate::api::ApiService;
use crate::paging::{Page, past};

/// How many passes a rotation makes at most: each seals what the one before left (values put while it
/// ran are sealed under the current key already).
const MAX_ROTATION_PASSES: usize = 64;

impl ApiService {
    /// `PutSecret` in `namespace`, once the caller may.
    pub(crate) async fn put_pipeline_secret(
        &self,
        namespace: String,
        request: v1::PutSecretRequest,
    ) -> Result<v1::Secret, Status> {
        validate_id("pipeline_id", &request.pipeline_id).map_err(into_status)?;
        let scope = SecretScope::Pipeline {
            namespace,
            pipeline: request.pipeline_id,
        };
        self.put_secret(scope, request.key, request.value, Vec::new()).await
    }

    /// `PutGlobalSecret`.
    pub(crate) async fn put_global(&self, request: v1::PutGlobalSecretRequest) -> Result<v1::Secret, Status> {
        gofer_domain::access::check_patterns(&request.namespaces).map_err(into_status)?;
        self.put_secret(SecretScope::Global, request.key, request.value, request.namespaces)
            .await
    }

    async fn put_secret(
        &self,
        scope: SecretScope,
        key: String,
        value: Vec<u8>,
        namespaces: Vec<String>,
    ) -> Result<v1::Secret, Status> {
        validate_key("key", &key).map_err(into_status)?;
        check_value(&value).map_err(into_status)?;
        let sealed = self
            .keyring
            .seal(&scope.associated_data(&key), &value)
            .map_err(|err| internal("sealing a secret", &err))?;
        let size = value.len() as u64;
        drop(value);
        self.propose(Command::PutSecret {
            scope: scope.clone(),
            key: key.clone(),
            value: sealed,
            size,
            namespaces,
            at: self.clock.now_millis(),
        })
        .await?;
        self.secret_proto(&scope, &key)
    }

    /// A pipeline's secrets, by key (at most the cluster's [`gofer_domain::secrets::MAX_SECRETS`]).
    pub(crate) fn pipeline_secrets(
        &self,
        namespace: &str,
        pipeline: &str,
        page: &Page,
    ) -> Result<(Vec<v1::Secret>, String), Status> {
        let after: Option<String> = page.after()?;
        self.read(|s| {
            s.pipeline(namespace, pipeline)?;
            let scope = SecretScope::Pipeline {
                namespace: namespace.to_string(),
                pipeline: pipeline.to_string(),
            };
            let items = s
                .secrets
                .of_pipeline(namespace, pipeline)
                .filter(|(key, _)| after.as_deref().is_none_or(|after| *key > after))
                .map(|(key, record)| (key.to_string(), secret_to_proto(&scope, key, record)));
            Ok(page.take(items))
        })
    }

    /// The global secrets, by key.
    pub(crate) fn global_secrets(&self, page: &Page) -> Result<(Vec<v1::Secret>, String), Status> {
        let after: Option<String> = page.after()?;
        self.read(|s| {
            let items = past(&s.secrets.global, after.as_deref())
                .map(|(key, record)| (key.clone(), secret_to_proto(&SecretScope::Global, key, record)));
            Ok(page.take(items))
        })
    }

    /// `DeleteSecret` or `DeleteGlobalSecret`.
    pub(crate) async fn remove_secret(&self, scope: SecretScope, key: String) -> Result<(), Status> {
        self.propose(Command::DeleteSecret {
            scope,
            key,
            at: self.clock.now_millis(),
        })
        .await
        .map(drop)
    }

    fn secret_proto(&self, scope: &SecretScope, key: &str) -> Result<v1::Secret, Status> {
        self.read(|s| {
            s.secrets
                .get(scope, key)
                .map(|record| secret_to_proto(scope, key, record))
                .ok_or_else(|| Error::NotFound(format!("secret {key:?} ({scope})")))
        })
    }

    /// `settings` of a new subscription with the values its extension marks secret sealed, each bound to
    /// the subscription and the setting's name.
    pub(crate) fn seal_settings(
        &self,
        (namespace, pipeline, label): (&str, &str, &str),
        extension: &str,
        mut settings: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Status> {
        let secret: Vec<String> = self.state.read(|s| {
            s.extensions
                .get(extension)
                .and_then(|e| e.registration.as_ref())
                .map(|r| r.settings.iter().filter(|s| s.secret).map(|s| s.name.clone()).collect())
                .unwrap_or_default()
        });
        for name in secret {
            if let Some(value) = settings.get_mut(&name) {
                let associated_data = setting_associated_data(namespace, pipeline, label, &name);
                *value = self.seal_setting(&format!("settings.{name}"), &associated_data, value)?;
            }
        }
        Ok(settings)
    }

    /// The install-time `settings` of extension `extension`, every value sealed, each bound to the
    /// extension and the setting's name: they are never shown back, and only the launcher opens them,
    /// for the extension's container.
    pub(crate) fn seal_install_settings(
        &self,
        extension: &str,
        mut settings: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Status> {
        for (name, value) in &mut settings {
            let associated_data = extension_setting_associated_data(extension, name);
            *value = self.seal_setting(&format!("settings.{name}"), &associated_data, value)?;
        }
        Ok(settings)
    }

    /// One setting's value sealed as text; one too long to fit a setting once sealed is refused naming
    /// `field`.
    fn seal_setting(&self, field: &str, associated_data: &str, value: &str) -> Result<String, Status> {
        if value.len() > MAX_SEALED_SETTING_BYTES {
            return Err(into_status(Error::invalid(
                field,
                format!("a secret setting is at most {MAX_SEALED_SETTING_BYTES} bytes"),
            )));
        }
        let sealed = self
            .keyring
            .seal(associated_data, value.as_bytes())
            .map_err(|err| internal("sealing a secret setting", &err))?;
        Ok(sealed.to_text())
    }

    /// `RotateSecretKey`: seals every secret and secret setting not sealed under this node's current key
    /// again under it (settings stored in the clear by an older Gofer too), in commands of at most
    /// [`MAX_RESEALS`] values, until none is left.
    pub(crate) async fn reseal_all(&self) -> Result<v1::RotateSecretKeyResponse, Status> {
        self.linearize().await?;
        let mut resealed = 0u64;
        for _ in 0..MAX_ROTATION_PASSES {
            let reseals = self.read(|s| Ok(self.stale_values(s)))??;
            if reseals.is_empty() {
                return Ok(v1::RotateSecretKeyResponse {
                    key_id: self.keyring.current_id().to_string(),
                    resealed,
                });
            }
            for chunk in reseals.chunks(MAX_RESEALS) {
                self.propose(Command::ResealSecrets {
                    reseals: chunk.to_vec(),
                    at: self.clock.now_millis(),
                })
                .await?;
                resealed += chunk.len() as u64;
            }
            self.linearize().await?;
        }
        Err(Status::aborted(
            "secrets kept changing while they were sealed again; run the rotation again",
        ))
    }

    /// Every stored value not sealed under the current key, sealed under it.
    fn stale_values(&self, state: &State) -> Result<Vec<Reseal>, Status> {
        let cannot = |what: String, err: gofer_secrets::Error| {
            into_status(Error::FailedPrecondition(format!("cannot seal {what} again: {err}")))
        };
        let mut reseals = Vec::new();
        for (scope, key, record) in state.secrets.all() {
            if self.keyring.is_current(&record.value) {
                continue;
            }
            let value = self
                .keyring
                .reseal(&scope.associated_data(key), &record.value)
                .map_err(|err| cannot(format!("secret {key:?} ({scope})"), err))?;
            reseals.push(Reseal {
                target: ResealTarget::Secret {
                    scope,
                    key: key.to_string(),
                },
                previous_nonce: record.value.nonce.clone(),
                value,
            });
        }
        for (namespace, pipeline, label, subscription) in state.subscriptions() {
            let secret_names = state
                .extensions
                .get(&subscription.extension)
                .and_then(|e| e.registration.as_ref())
                .map(|r| {
                    r.settings
                        .iter()
                        .filter(|s| s.secret)
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for name in secret_names {
                let Some(stored) = subscription.settings.get(name) else {
                    continue;
                };
                let what = || format!("setting {name:?} of subscription {namespace}/{pipeline}/{label}");
                let associated_data = setting_associated_data(namespace, pipeline, label, name);
                let Some((previous_nonce, value)) = self.stale_setting(&associated_data, stored, what)? else {
                    continue;
                };
                reseals.push(Reseal {
                    target: ResealTarget::Setting {
                        namespace: namespace.to_string(),
                        pipeline: pipeline.to_string(),
                        label: label.to_string(),
                        name: name.to_string(),
                    },
                    previous_nonce,
                    value,
                });
            }
        }
        for (extension, record) in &state.extensions {
            for (name, stored) in &record.settings {
                let what = || format!("setting {name:?} of extension {extension:?}");
                let associated_data = extension_setting_associated_data(extension, name);
                let Some((previous_nonce, value)) = self.stale_setting(&associated_data, stored, what)? else {
                    continue;
                };
                reseals.push(Reseal {
                    target: ResealTarget::ExtensionSetting {
                        extension: extension.clone(),
                        name: name.clone(),
                    },
                    previous_nonce,
                    value,
                });
            }
        }
        Ok(reseals)
    }

    /// A stored setting sealed again under the current key, with the nonce it replaces (empty for one
    /// stored in the clear by an older Gofer); `None` if it is sealed under the current key already.
    fn stale_setting(
        &self,
        associated_data: &str,
        stored: &str,
        what: impl Fn() -> String,
    ) -> Result<Option<(String, Sealed)>, Status> {
        let cannot = |err: gofer_secrets::Error| {
            into_status(Error::FailedPrecondition(format!(
                "cannot seal {} again: {err}",
                what()
            )))
        };
        Ok(match Sealed::from_text(stored) {
            Some(sealed) if self.keyring.is_current(&sealed) => None,
            Some(sealed) => Some((
                sealed.nonce.clone(),
                self.keyring.reseal(associated_data, &sealed).map_err(cannot)?,
            )),
            None => Some((
                String::new(),
                self.keyring.seal(associated_data, stored.as_bytes()).map_err(cannot)?,
            )),
        })
    }
}

/// Checks a value: at most [`MAX_SECRET_BYTES`], UTF-8 text without NUL (it becomes an env value).
fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid("value", "must not be empty"));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(Error::invalid(
            "value",
            format!("must be at most {MAX_SECRET_BYTES} bytes, got {}", value.len()),
        ));
    }
    if std::str::from_utf8(value).is_err() || value.contains(&0) {
        return Err(Error::invalid(
            "value",
            "must be UTF-8 text without NUL: it is given to tasks as an environment variable",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_value;
    use gofer_domain::Error;

    #[test]
    fn a_value_is_text_without_nul_of_one_byte_to_64_kib_and_a_refusal_never_quotes_it() {
        assert!(check_value(b"hunter2").is_ok());
        assert!(check_value(&vec![b'x'; MAX]).is_ok());
        for bad in [&b""[..], &vec![b'x'; MAX + 1], b"nul\0inside", b"\xff\xfe-not-utf8"] {
            match check_value(bad) {
                Err(Error::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "value");
                    assert!(!reason.contains("nul") && !reason.contains("not-utf8"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    const MAX: usize = gofer_domain::secrets::MAX_SECRET_BYTES;
}
