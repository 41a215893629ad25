//! Gofer's keyring: the operator's AES-256-GCM key (and older ones kept for opening only), which seals
//! secret values before they are proposed and opens them where they are used, and nowhere else.
//!
//! Each value gets a fresh random nonce, and is sealed with its identity as associated data (see
//! `gofer_domain::secrets::SecretScope::associated_data`), so a ciphertext copied to another secret does
//! not open. A [`Sealed`] records the id of the key that sealed it (the first 8 bytes of the key's
//! SHA-256, in hex), so a node finds the key to open it with and a rotation finds what to re-seal.
//! A key file holds 64 hex digits (32 bytes); surrounding whitespace is ignored. This crate never logs
//! and never puts a value or a key into an error.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gofer_domain::access::{RUN_TOKEN_PREFIX, RunScope};
use gofer_domain::secrets::Sealed;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// What the key that signs run tokens is derived for, so that it is used for nothing else.
const RUN_TOKEN_PURPOSE: &[u8] = b"gofer run task tokens v1";

fn run_token_subject(run: &RunScope) -> String {
    format!("{}/{}/{}", run.namespace, run.pipeline, run.run)
}

/// Why a key could not be read, or a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value was sealed with a key this node was not given.
    #[error(
        "the value was sealed with key {key_id}, which this node does not have (give it with --secret-old-key-file)"
    )]
    UnknownKey { key_id: String },
    /// The value does not open under its key: it was altered, or sealed for another secret.
    #[error("the sealed value does not open: it was altered, or sealed for another secret")]
    Unauthentic,
    /// The sealed value is not one this keyring made.
    #[error("the sealed value is malformed: {0}")]
    Malformed(&'static str),
    /// The system gave no randomness for a nonce or a key.
    #[error("the system gave no randomness")]
    NoRandomness,
    /// A key file could not be read or holds no key; `field` is the flag or setting that named it.
    #[error("{field}: {path}: {reason}")]
    KeyFile {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// One 256-bit key and its id.
pub struct Key {
    id: String,
    key: LessSafeKey,
    /// Signs run task tokens: HMAC-SHA256 keyed with a key derived from this one for that use alone.
    run_tokens: ring::hmac::Key,
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Key {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let derived = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes), RUN_TOKEN_PURPOSE);
        Key {
            id: hex(&digest.as_ref()[..8]),
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key")),
            run_tokens: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// Reads a key file's text: 64 hex digits, surrounding whitespace ignored. The reason never quotes
    /// the text.
    pub fn parse(text: &[u8]) -> Result<Key, &'static str> {
        let text = std::str::from_utf8(text).map_err(|_| "must hold 64 hex digits (32 bytes), not binary")?;
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("must hold exactly 64 hex digits (32 bytes), such as `openssl rand -hex 32` makes");
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| "not hex")?;
        }
        Ok(Key::from_bytes(&bytes))
    }

    /// Reads the key file at `path`, which `field` (a flag or setting) named.
    pub fn read_file(field: &'static str, path: &Path) -> Result<Key, Error> {
        let bad = |reason: String| Error::KeyFile {
            field,
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|err| bad(err.to_string()))?;
        Key::parse(&text).map_err(|reason| bad(reason.to_string()))
    }

    /// A new random key, as a key file holds it (64 hex digits and a newline).
    pub fn generate_text() -> Result<String, Error> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| Error::NoRandomness)?;
        Ok(format!("{}\n", hex(&bytes)))
    }

    /// The key's id: the first 8 bytes of its SHA-256, as 16 hex digits.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The key that seals, and older keys that still open what they sealed.
#[derive(Debug)]
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

impl Keyring {
    /// A keyring sealing with `current` and opening with it and `old`.
    pub fn new(current: Key, old: Vec<Key>) -> Keyring {
        Keyring { current, old }
    }

    /// Reads the current key file and the old ones, naming the flag of a file that is wrong.
    pub fn read_files(current: &Path, old: &[PathBuf]) -> Result<Keyring, Error> {
        let current = Key::read_file("secret_key_file", current)?;
        let old = old
            .iter()
            .map(|path| Key::read_file("secret_old_key_files", path))
            .collect::<Result<_, _>>()?;
        Ok(Keyring::new(current, old))
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Whether `sealed` was sealed with the current key.
    pub fn is_current(&self, sealed: &Sealed) -> bool {
        sealed.key_id == self.current.id
    }

    /// Seals `plaintext` under the current key with a fresh nonce, bound to `associated_data`.
    pub fn seal(&self, associated_data: &str, plaintext: &[u8]) -> Result<Sealed, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| Error::NoRandomness)?;
        let mut data = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data.as_bytes()),
                &mut data,
            )
            .map_err(|_| Error::Malformed("too long to seal"))?;
        Ok(Sealed {
            key_id: self.current.id.clone(),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(data),
        })
    }

    /// Opens `sealed`, which must have been sealed with `associated_data` by a key of this keyring.
    pub fn open(&self, associated_data: &str, sealed: &Sealed) -> Result<Vec<u8>, Error> {
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| Error::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let nonce: [u8; NONCE_LEN] = BASE64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(Error::Malformed("the nonce is not 12 bytes of base64"))?;
        let mut data = BASE64
            .decode(&sealed.ciphertext)
            .map_err(|_| Error::Malformed("the ciphertext is not base64"))?;
        let plaintext = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data.as_bytes()),
                &mut data,
            )
            .map_err(|_| Error::Unauthentic)?;
        Ok(plaintext.to_vec())
    }

    /// Opens `sealed` as text (every value Gofer seals is UTF-8).
    pub fn open_text(&self, associated_data: &str, sealed: &Sealed) -> Result<String, Error> {
        String::from_utf8(self.open(associated_data, sealed)?).map_err(|_| Error::Malformed("the value is not UTF-8"))
    }

    /// A task token for `run` (`inject_api_token`): `gofer_run/NAMESPACE/PIPELINE/RUN/KEY_ID/MAC`, where
    /// MAC is HMAC-SHA256 over the run, keyed by a key derived from the current one. Nothing is stored:
    /// any node with the keyring checks it ([`Keyring::verify_run_token`]), and the API admits it only
    /// while the run is not over.
    pub fn run_token(&self, run: &RunScope) -> String {
        let mac = ring::hmac::sign(&self.current.run_tokens, run_token_subject(run).as_bytes());
        format!(
            "{RUN_TOKEN_PREFIX}{}/{}/{}/{}/{}",
            run.namespace,
            run.pipeline,
            run.run,
            self.current.id,
            hex(mac.as_ref())
        )
    }

    /// The run `token` speaks for, if it is a run token signed by a key of this keyring.
    pub fn verify_run_token(&self, token: &str) -> Option<RunScope> {
        let rest = token.strip_prefix(RUN_TOKEN_PREFIX)?;
        let mut parts = rest.split('/');
        let (namespace, pipeline, run, key_id, mac) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || mac.len() != 64 {
            return None;
        }
        let run = RunScope {
            namespace: namespace.to_string(),
            pipeline: pipeline.to_string(),
            run: run.parse().ok()?,
        };
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == key_id)?;
        let mut tag = [0u8; 32];
        for (i, byte) in tag.iter_mut().enumerate() {
            *byte = u8::from_str_radix(mac.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        ring::hmac::verify(&key.run_tokens, run_token_subject(&run).as_bytes(), &tag).ok()?;
        Some(run)
    }

    /// `sealed` opened and sealed again under the current key.
    pub fn reseal(&self, associated_data: &str, sealed: &Sealed) -> Result<Sealed, Error> {
        self.seal(associated_data, &self.open(associated_data, sealed)?)
    }
}

/// Writes a new random key to `path`, readable by its owner alone (0600); refuses to replace a file.
pub fn write_new_key_file(path: &Path) -> Result<(), Error> {
    use std::io::Write;
    let bad = |err: std::io::Error| Error::KeyFile {
        field: "secret_key_file",
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(bad)?;
    file.write_all(Key::generate_text()?.as_bytes()).map_err(bad)?;
    file.sync_all().map_err(bad)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
