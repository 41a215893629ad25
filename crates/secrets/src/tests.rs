//! Sealing and opening: a round trip works, and a wrong key, an altered ciphertext or nonce, another
//! secret's associated data and an unknown key are each refused with their own error.

use super::*;

fn key(byte: u8) -> Key {
    Key::from_bytes(&[byte; 32])
}

#[test]
fn a_value_opens_under_its_key_and_identity_with_a_fresh_nonce_each_time() {
    let ring = Keyring::new(key(1), vec![]);
    let a = ring.seal("gofer/secret/global/k", b"hunter2").unwrap();
    let b = ring.seal("gofer/secret/global/k", b"hunter2").unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
    assert_eq!(a.key_id, ring.current_id());
    assert_eq!(a.key_id.len(), 16);
    assert!(!a.ciphertext.contains("hunter2"));
    assert_eq!(ring.open("gofer/secret/global/k", &a).unwrap(), b"hunter2");
    assert_eq!(ring.open_text("gofer/secret/global/k", &b).unwrap(), "hunter2");
    a.check("value").unwrap();
}

#[test]
fn a_wrong_key_an_altered_value_or_another_identity_is_refused() {
    let ring = Keyring::new(key(1), vec![]);
    let sealed = ring.seal("gofer/secret/global/k", b"hunter2").unwrap();
    // Another identity: the ciphertext moved to another key name.
    assert!(matches!(
        ring.open("gofer/secret/global/other", &sealed),
        Err(Error::Unauthentic)
    ));
    // A flipped bit in the ciphertext, and another nonce.
    let mut altered = sealed.clone();
    let mut bytes = BASE64.decode(&altered.ciphertext).unwrap();
    bytes[0] ^= 1;
    altered.ciphertext = BASE64.encode(bytes);
    assert!(matches!(
        ring.open("gofer/secret/global/k", &altered),
        Err(Error::Unauthentic)
    ));
    let mut renonced = sealed.clone();
    renonced.nonce = BASE64.encode([0u8; 12]);
    assert!(matches!(
        ring.open("gofer/secret/global/k", &renonced),
        Err(Error::Unauthentic)
    ));
    // A different key that claims the same id.
    let other = Keyring::new(key(2), vec![]);
    let mut forged = sealed.clone();
    forged.key_id = other.current_id().to_string();
    assert!(matches!(
        other.open("gofer/secret/global/k", &forged),
        Err(Error::Unauthentic)
    ));
    // A key this keyring does not have.
    match other.open("gofer/secret/global/k", &sealed) {
        Err(Error::UnknownKey { key_id }) => assert_eq!(key_id, sealed.key_id),
        other => panic!("{other:?}"),
    }
    let mut garbled = sealed;
    garbled.nonce = "!!".into();
    assert!(matches!(
        ring.open("gofer/secret/global/k", &garbled),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn an_old_key_opens_what_it_sealed_and_a_reseal_moves_it_to_the_current_key() {
    let before = Keyring::new(key(1), vec![]);
    let sealed = before.seal("ad", b"v").unwrap();
    let after = Keyring::new(key(2), vec![key(1)]);
    assert!(!after.is_current(&sealed));
    assert_eq!(after.open("ad", &sealed).unwrap(), b"v");
    let resealed = after.reseal("ad", &sealed).unwrap();
    assert!(after.is_current(&resealed));
    let only_new = Keyring::new(key(2), vec![]);
    assert_eq!(only_new.open("ad", &resealed).unwrap(), b"v");
    assert!(matches!(only_new.open("ad", &sealed), Err(Error::UnknownKey { .. })));
}

#[test]
fn a_key_file_holds_64_hex_digits_and_a_bad_one_names_its_field_without_quoting_it() {
    let dir = std::env::temp_dir().join(format!("gofer-secrets-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.key");
    let _ = std::fs::remove_file(&good);
    write_new_key_file(&good).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&good).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(write_new_key_file(&good).is_err(), "an existing key is never replaced");
    let ring = Keyring::read_files(&good, &[]).unwrap();
    assert_eq!(ring.current_id().len(), 16);
    let bad = dir.join("bad.key");
    std::fs::write(&bad, "not-a-key-but-a-password").unwrap();
    let error = Keyring::read_files(&good, std::slice::from_ref(&bad))
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("secret_old_key_files: "), "{error}");
    assert!(!error.contains("not-a-key"), "{error}");
    let error = Keyring::read_files(&dir.join("missing"), &[]).unwrap_err().to_string();
    assert!(error.starts_with("secret_key_file: "), "{error}");
    assert!(Key::parse(format!("  {}\n", "ab".repeat(32)).as_bytes()).is_ok());
    assert!(Key::parse("ab".repeat(31).as_bytes()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_token_verifies_for_its_run_alone_and_under_an_old_key_after_rotation() {
    let run = RunScope {
        namespace: "team-a".into(),
        pipeline: "build".into(),
        run: 7,
    };
    let (first, second) = (Key::from_bytes(&[1; 32]), Key::from_bytes(&[2; 32]));
    let keyring = Keyring::new(first, vec![]);
    let token = keyring.run_token(&run);
    assert!(token.starts_with("gofer_run/team-a/build/7/"), "{token}");
    assert_eq!(keyring.verify_run_token(&token), Some(run.clone()));
    // Another run, pipeline or namespace under the same MAC does not pass.
    for forged in [
        token.replace("/7/", "/8/"),
        token.replace("/build/", "/deploy/"),
        token.replace("team-a/", "team-b/"),
    ] {
        assert_eq!(keyring.verify_run_token(&forged), None, "{forged}");
    }
    let mut flipped = token.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    assert_eq!(keyring.verify_run_token(&flipped), None);
    for malformed in [
        "",
        "gofer_run/",
        "gofer_run/a/b/c/d/e",
        "gofer_x",
        &format!("{token}/more"),
    ] {
        assert_eq!(keyring.verify_run_token(malformed), None, "{malformed}");
    }
    // Another keyring does not vouch for it; one that keeps the key as old still does.
    assert_eq!(
        Keyring::new(Key::from_bytes(&[2; 32]), vec![]).verify_run_token(&token),
        None
    );
    let rotated = Keyring::new(second, vec![Key::from_bytes(&[1; 32])]);
    assert_eq!(rotated.verify_run_token(&token), Some(run.clone()));
    assert_ne!(rotated.run_token(&run), token, "a new key signs anew");
}
