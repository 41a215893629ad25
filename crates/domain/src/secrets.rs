//! Secrets as the replicated state keeps them, sealed: pipeline secrets (namespace, pipeline, key) and
//! global secrets (key, and the namespace patterns allowed to use them); the placeholders a task's env
//! names them by (`secret{{db_pass}}`, `global_secret{{name}}`); and the re-sealing a key rotation commits.
//!
//! Nothing here sees a value in the clear. A [`Sealed`] value is AES-256-GCM ciphertext made by
//! `gofer-secrets` outside the domain (which has no randomness), with the secret's identity
//! ([`SecretScope::associated_data`]) as associated data, so a ciphertext moved to another key does not
//! open. What the state keeps beside it is metadata: sizes, times and the id of the sealing key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::access::check_patterns;

/// The largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// The most secrets a cluster keeps, pipeline and global together.
pub const MAX_SECRETS: usize = 10_000;
/// A secret's key is at most this many characters.
pub const MAX_SECRET_KEY_LEN: usize = 64;
/// What a sealed value written into a text field (a secret extension setting) starts with.
pub const SEALED_TEXT_PREFIX: &str = "sealed:v1:";
/// The most base64 characters a sealed value's ciphertext may have: [`MAX_SECRET_BYTES`] and the tag.
const MAX_CIPHERTEXT_CHARS: usize = (MAX_SECRET_BYTES + 16).div_ceil(3) * 4;

/// A value sealed with AES-256-GCM: the id of the key that sealed it, the nonce and the ciphertext with
/// its tag (both base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The first 8 bytes of the SHA-256 of the sealing key, as 16 hex digits.
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl Sealed {
    /// The value as one line of text, for a field that holds text (a secret extension setting):
    /// `sealed:v1:<key id>:<nonce>:<ciphertext>`.
    pub fn to_text(&self) -> String {
        format!("{SEALED_TEXT_PREFIX}{}:{}:{}", self.key_id, self.nonce, self.ciphertext)
    }

    /// Reads [`Sealed::to_text`]'s form; `None` for any other text (a setting stored in the clear by a
    /// Gofer that did not seal settings yet).
    pub fn from_text(text: &str) -> Option<Sealed> {
        let mut parts = text.strip_prefix(SEALED_TEXT_PREFIX)?.splitn(3, ':');
        let sealed = Sealed {
            key_id: parts.next()?.to_string(),
            nonce: parts.next()?.to_string(),
            ciphertext: parts.next()?.to_string(),
        };
        sealed.check("value").ok().map(|()| sealed)
    }

    /// Checks the form (not the cryptography): a 16-hex-digit key id, a 16-character nonce, and a
    /// ciphertext of base64 no longer than the largest value sealed.
    pub fn check(&self, field: &str) -> Result<(), Error> {
        let base64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        };
        if self.key_id.len() != 16 || !self.key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!("{field}.key_id"), "must be 16 hex digits"));
        }
        if self.nonce.len() != 16 || !base64(&self.nonce) {
            return Err(Error::invalid(format!("{field}.nonce"), "must be 12 bytes in base64"));
        }
        if self.ciphertext.len() < 24 || self.ciphertext.len() > MAX_CIPHERTEXT_CHARS || !base64(&self.ciphertext) {
            return Err(Error::invalid(
                format!("{field}.ciphertext"),
                format!("must be base64 of at most {MAX_SECRET_BYTES} bytes and a tag"),
            ));
        }
        Ok(())
    }
}

/// Where a secret lives: with one pipeline, or in the cluster for the namespaces its allow-list matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecretScope {
    Pipeline { namespace: String, pipeline: String },
    Global,
}

impl SecretScope {
    /// The associated data a value under `key` in this scope is sealed with, so that its ciphertext opens
    /// only there: `gofer/secret/pipeline/<namespace>/<pipeline>/<key>` or `gofer/secret/global/<key>`.
    pub fn associated_data(&self, key: &str) -> String {
        match self {
            SecretScope::Pipeline { namespace, pipeline } => {
                format!("gofer/secret/pipeline/{namespace}/{pipeline}/{key}")
            }
            SecretScope::Global => format!("gofer/secret/global/{key}"),
        }
    }
}

impl std::fmt::Display for SecretScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretScope::Pipeline { namespace, pipeline } => write!(f, "pipeline {namespace}/{pipeline}"),
            SecretScope::Global => f.write_str("global"),
        }
    }
}

/// The associated data a secret setting of a subscription is sealed with:
/// `gofer/setting/<namespace>/<pipeline>/<label>/<setting>`.
pub fn setting_associated_data(namespace: &str, pipeline: &str, label: &str, setting: &str) -> String {
    format!("gofer/setting/{namespace}/{pipeline}/{label}/{setting}")
}

/// The associated data an install-time setting of an extension is sealed with:
/// `gofer/extension-setting/<extension>/<setting>`.
pub fn extension_setting_associated_data(extension: &str, setting: &str) -> String {
    format!("gofer/extension-setting/{extension}/{setting}")
}

/// The longest value a sealed setting may have in the clear, so that its sealed text stays within a
/// setting's 4096 bytes.
pub const MAX_SEALED_SETTING_BYTES: usize = 3000;

/// One secret as the state keeps it: sealed, with metadata that never reveals the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub value: Sealed,
    /// The value's length in bytes.
    pub size: u64,
    pub created_at: i64,
    pub updated_at: i64,
    /// A global secret's allow-list: namespace names or patterns (`team-a-*`); empty for a pipeline's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Every secret of the cluster, sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    /// Global secrets, by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub global: BTreeMap<String, SecretRecord>,
    /// Pipeline secrets: namespace → pipeline → key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pipelines: BTreeMap<String, BTreeMap<String, BTreeMap<String, SecretRecord>>>,
}

/// Why a placeholder does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("secret {key:?} of pipeline {namespace}/{pipeline} not found")]
    Missing {
        namespace: String,
        pipeline: String,
        key: String,
    },
    #[error("global secret {key:?} not found")]
    MissingGlobal { key: String },
    #[error("global secret {key:?} is not allowed in namespace {namespace:?}")]
    NotAllowed { key: String, namespace: String },
}

impl Secrets {
    /// Whether the cluster keeps no secret (a snapshot then leaves the table out).
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.pipelines.is_empty()
    }

    /// How many secrets the cluster keeps.
    pub fn len(&self) -> usize {
        self.global.len()
            + self
                .pipelines
                .values()
                .flat_map(|p| p.values())
                .map(BTreeMap::len)
                .sum::<usize>()
    }

    /// The secret `key` in `scope`.
    pub fn get(&self, scope: &SecretScope, key: &str) -> Option<&SecretRecord> {
        match scope {
            SecretScope::Pipeline { namespace, pipeline } => self.pipelines.get(namespace)?.get(pipeline)?.get(key),
            SecretScope::Global => self.global.get(key),
        }
    }

    /// The secrets of one pipeline, by key.
    pub fn of_pipeline(&self, namespace: &str, pipeline: &str) -> impl Iterator<Item = (&str, &SecretRecord)> {
        self.pipelines
            .get(namespace)
            .and_then(|p| p.get(pipeline))
            .into_iter()
            .flatten()
            .map(|(k, r)| (k.as_str(), r))
    }

    /// Every secret, with its scope and key, for a key rotation.
    pub fn all(&self) -> impl Iterator<Item = (SecretScope, &str, &SecretRecord)> {
        let global = self.global.iter().map(|(k, r)| (SecretScope::Global, k.as_str(), r));
        let pipelines = self.pipelines.iter().flat_map(|(ns, p)| {
            p.iter().flat_map(move |(pipeline, keys)| {
                keys.iter().map(move |(k, r)| {
                    let scope = SecretScope::Pipeline {
                        namespace: ns.clone(),
                        pipeline: pipeline.clone(),
                    };
                    (scope, k.as_str(), r)
                })
            })
        });
        global.chain(pipelines)
    }

    /// The record a placeholder in a task of pipeline `namespace`/`pipeline` names, with its scope, if it
    /// exists and (for a global secret) the namespace is on its allow-list.
    pub fn resolve(
        &self,
        namespace: &str,
        pipeline: &str,
        placeholder: &Placeholder<'_>,
    ) -> Result<(SecretScope, &SecretRecord), Unresolved> {
        let key = placeholder.key;
        match placeholder.kind {
            PlaceholderKind::Pipeline => {
                let scope = SecretScope::Pipeline {
                    namespace: namespace.to_string(),
                    pipeline: pipeline.to_string(),
                };
                match self.get(&scope, key) {
                    Some(record) => Ok((scope, record)),
                    None => Err(Unresolved::Missing {
                        namespace: namespace.to_string(),
                        pipeline: pipeline.to_string(),
                        key: key.to_string(),
                    }),
                }
            }
            PlaceholderKind::Global => {
                let record = self
                    .global
                    .get(key)
                    .ok_or_else(|| Unresolved::MissingGlobal { key: key.to_string() })?;
                if !record.namespaces.iter().any(|p| crate::access::matches(p, namespace)) {
                    return Err(Unresolved::NotAllowed {
                        key: key.to_string(),
                        namespace: namespace.to_string(),
                    });
                }
                Ok((SecretScope::Global, record))
            }
        }
    }

    /// `PutSecret`: stores or replaces a value. The scope's pipeline must exist (the caller checks);
    /// a global secret needs an allow-list.
    pub(crate) fn put(
        &mut self,
        scope: &SecretScope,
        key: &str,
        value: &Sealed,
        size: u64,
        namespaces: &[String],
        at: i64,
    ) -> Result<(), Error> {
        validate_key("key", key)?;
        value.check("value")?;
        if size > MAX_SECRET_BYTES as u64 {
            return Err(Error::invalid(
                "value",
                format!("must be at most {MAX_SECRET_BYTES} bytes"),
            ));
        }
        let namespaces = match scope {
            SecretScope::Global => {
                check_patterns(namespaces)?;
                namespaces.to_vec()
            }
            SecretScope::Pipeline { .. } if !namespaces.is_empty() => {
                return Err(Error::invalid("namespaces", "only a global secret has an allow-list"));
            }
            SecretScope::Pipeline { .. } => Vec::new(),
        };
        let created_at = match self.get(scope, key) {
            Some(existing) => existing.created_at,
            None if self.len() >= MAX_SECRETS => {
                return Err(Error::FailedPrecondition(format!(
                    "the cluster keeps at most {MAX_SECRETS} secrets; delete some first"
                )));
            }
            None => at,
        };
        let record = SecretRecord {
            value: value.clone(),
            size,
            created_at,
            updated_at: at,
            namespaces,
        };
        match scope {
            SecretScope::Pipeline { namespace, pipeline } => self
                .pipelines
                .entry(namespace.clone())
                .or_default()
                .entry(pipeline.clone())
                .or_default()
                .insert(key.to_string(), record),
            SecretScope::Global => self.global.insert(key.to_string(), record),
        };
        Ok(())
    }

    /// `DeleteSecret`: forgets a value.
    pub(crate) fn delete(&mut self, scope: &SecretScope, key: &str) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("secret {key:?} ({scope})"));
        match scope {
            SecretScope::Global => self.global.remove(key).map(drop).ok_or_else(not_found),
            SecretScope::Pipeline { namespace, pipeline } => {
                let pipelines = self.pipelines.get_mut(namespace).ok_or_else(not_found)?;
                let keys = pipelines.get_mut(pipeline).ok_or_else(not_found)?;
                keys.remove(key).ok_or_else(not_found)?;
                if keys.is_empty() {
                    pipelines.remove(pipeline);
                }
                if pipelines.is_empty() {
                    self.pipelines.remove(namespace);
                }
                Ok(())
            }
        }
    }

    /// Replaces the sealed value of `key` in `scope` by `value`, if it is still the one sealed with
    /// `previous_nonce`; whether it did.
    pub(crate) fn reseal(&mut self, scope: &SecretScope, key: &str, previous_nonce: &str, value: &Sealed) -> bool {
        let record = match scope {
            SecretScope::Pipeline { namespace, pipeline } => self
                .pipelines
                .get_mut(namespace)
                .and_then(|p| p.get_mut(pipeline))
                .and_then(|k| k.get_mut(key)),
            SecretScope::Global => self.global.get_mut(key),
        };
        match record {
            Some(record) if record.value.nonce == previous_nonce => {
                record.value = value.clone();
                true
            }
            _ => false,
        }
    }
}

/// Checks a secret's key: 1 to 64 of `[A-Za-z0-9_-]`, as env names and ids are written.
pub fn validate_key(field: &str, key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_SECRET_KEY_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_SECRET_KEY_LEN} characters"),
        ));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid(
            field,
            format!("{key:?} has {bad:?}; secret keys may only use A-Z, a-z, 0-9, '_' and '-'"),
        ));
    }
    Ok(())
}

/// Which store a placeholder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderKind {
    /// `secret{{key}}`: a secret of the task's own pipeline.
    Pipeline,
    /// `global_secret{{key}}`: a global secret allowed in the pipeline's namespace.
    Global,
}

/// One placeholder in a task's env value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placeholder<'a> {
    pub kind: PlaceholderKind,
    pub key: &'a str,
    /// The placeholder as written, such as `secret{{db_pass}}`.
    pub text: &'a str,
    /// Where `text` starts in the value.
    pub at: usize,
}

const OPEN: &str = "secret{{";
const GLOBAL: &str = "global_";
const CLOSE: &str = "}}";

/// The placeholders in `value`, in order. A `secret{{` that is not closed by `}}`, or whose key is not
/// a valid secret key, is refused: it is the reason, without the field.
pub fn placeholders(value: &str) -> Result<Vec<Placeholder<'_>>, String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = value[from..].find(OPEN) {
        let open = from + offset;
        let (kind, start) = match value[..open].strip_suffix(GLOBAL) {
            Some(before) => (PlaceholderKind::Global, before.len()),
            None => (PlaceholderKind::Pipeline, open),
        };
        let key_start = open + OPEN.len();
        let Some(length) = value[key_start..].find(CLOSE) else {
            return Err(format!("{:?} is not closed by \"}}}}\"", &value[start..]));
        };
        let key = &value[key_start..key_start + length];
        let end = key_start + length + CLOSE.len();
        if let Err(Error::InvalidArgument { reason, .. }) = validate_key("key", key) {
            return Err(format!("{:?}: {reason}", &value[start..end]));
        }
        found.push(Placeholder {
            kind,
            key,
            text: &value[start..end],
            at: start,
        });
        from = end;
    }
    Ok(found)
}

/// `value` with each of its placeholders replaced by what `resolve` gives for it (left as written when
/// it gives nothing). Malformed placeholders were refused at registration; a value that has any is left
/// as it is.
pub fn substitute<'v>(value: &str, mut resolve: impl FnMut(&Placeholder<'_>) -> Option<&'v str>) -> String {
    let Ok(found) = placeholders(value) else {
        return value.to_string();
    };
    let mut out = String::with_capacity(value.len());
    let mut from = 0;
    for placeholder in &found {
        out.push_str(&value[from..placeholder.at]);
        out.push_str(resolve(placeholder).unwrap_or(placeholder.text));
        from = placeholder.at + placeholder.text.len();
    }
    out.push_str(&value[from..]);
    out
}

/// Checks the placeholders in every task's env of `config`; the error names the task and env key
/// (`tasks[0].env.DB_PASS`). Checked where a pipeline is registered, before it is proposed, not in apply:
/// logs written before secrets existed may hold such text, and must replay alike.
pub fn check_placeholders(config: &crate::PipelineConfig) -> Result<(), Error> {
    for (i, task) in config.tasks.iter().enumerate() {
        for (name, value) in &task.env {
            placeholders(value).map_err(|reason| Error::invalid(format!("tasks[{i}].env.{name}"), reason))?;
        }
    }
    Ok(())
}

/// What a key rotation re-seals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResealTarget {
    /// A secret.
    Secret { scope: SecretScope, key: String },
    /// A secret setting of a subscription (a webhook's `secret`).
    Setting {
        namespace: String,
        pipeline: String,
        label: String,
        name: String,
    },
    /// An install-time setting of an extension (every one is sealed).
    ExtensionSetting { extension: String, name: String },
}

/// One value re-sealed under the current key, replacing the one sealed with `previous_nonce` (empty for
/// a setting stored in the clear by an older Gofer) only if that one is still stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reseal {
    pub target: ResealTarget,
    pub previous_nonce: String,
    pub value: Sealed,
}

/// The most values one `ResealSecrets` command carries.
pub const MAX_RESEALS: usize = 1024;

#[cfg(test)]
mod tests;
