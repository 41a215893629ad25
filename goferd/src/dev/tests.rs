//! When `goferd dev` makes its certificates again: a missing name, a month or less left, or none of the
//! lifetime an older goferd left out.

use super::*;

/// 2023-11-14 22:13:20 UTC.
const NOW: i64 = 1_700_000_000;
const DAY: i64 = 24 * 60 * 60;

fn loopback() -> Vec<String> {
    dev_names("127.0.0.1".parse().unwrap())
}

#[test]
fn the_dev_certificate_names_loopback_and_a_particular_listen_address() {
    assert_eq!(loopback(), ["localhost", "127.0.0.1", "::1"]);
    assert_eq!(dev_names("0.0.0.0".parse().unwrap()), loopback());
    assert_eq!(
        dev_names("192.168.1.5".parse().unwrap()),
        ["localhost", "127.0.0.1", "::1", "192.168.1.5"]
    );
}

#[test]
fn a_dev_certificate_serves_until_a_month_before_it_ends_and_only_for_its_names() {
    let names: Vec<&str> = ["localhost", "127.0.0.1", "::1"].into();
    let pki = gofer_tls::DevPki::generate(&names, NOW).unwrap();
    let pem = &pki.server.cert_pem;
    assert!(dev_certificate_serves(pem, &loopback(), NOW));
    assert!(dev_certificate_serves(pem, &loopback(), NOW + 334 * DAY));
    assert!(
        !dev_certificate_serves(pem, &loopback(), NOW + 336 * DAY),
        "a month left"
    );
    assert!(!dev_certificate_serves(
        pem,
        &dev_names("10.0.0.1".parse().unwrap()),
        NOW
    ));
    assert!(!dev_certificate_serves("garbage", &loopback(), NOW));
    // What an older goferd made: good until 4096.
    let ca = gofer_tls::Ca::generate("old", gofer_tls::Validity::starting(NOW, gofer_tls::CA_LIFETIME)).unwrap();
    let endless = gofer_tls::Validity {
        not_before: 0,
        not_after: 67_000_000_000,
    };
    let old = ca
        .issue(
            &gofer_tls::Subject::new("goferd", &names, gofer_tls::Roles::ALL),
            endless,
        )
        .unwrap();
    assert!(!dev_certificate_serves(&old.cert_pem, &loopback(), NOW));
    // One that records fewer roles than every one `goferd dev` plays.
    let lifetime = gofer_tls::Validity::starting(NOW, gofer_tls::Roles::ALL.lifetime());
    let api_only = gofer_tls::Roles::of(gofer_tls::Role::Api);
    let narrow = ca
        .issue(&gofer_tls::Subject::new("goferd", &names, api_only), lifetime)
        .unwrap();
    assert!(!dev_certificate_serves(&narrow.cert_pem, &loopback(), NOW));
}

#[test]
fn the_dev_pki_is_made_once_and_again_when_it_no_longer_serves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ensure_pki(dir.path(), &loopback(), NOW).unwrap().ca_pem;
    let same = ensure_pki(dir.path(), &loopback(), NOW + DAY).unwrap().ca_pem;
    assert_eq!(ca, same);
    let renewed = ensure_pki(dir.path(), &loopback(), NOW + 340 * DAY).unwrap().ca_pem;
    assert_ne!(ca, renewed);
    let server = std::fs::read_to_string(dir.path().join("tls/server.pem")).unwrap();
    assert!(dev_certificate_serves(&server, &loopback(), NOW + 340 * DAY));
}
