//! The certificates as rustls's own verifier sees them: their names (DNS and IP), their lifetimes, their
//! chain to the CA; and what reading one back gives.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap()
}

fn node(ca: &Ca, common_name: &str, names: &[&str]) -> CertifiedKey {
    ca.issue(
        &Subject::new(common_name, names, Role::Node),
        Validity::starting(now(), Role::Node.lifetime()),
    )
    .unwrap()
}

fn test_ca() -> Ca {
    Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap()
}

/// rustls's verdict on `cert` as the server `name` (a DNS name or an IP address) now.
fn verify(ca_der: &[u8], cert: &CertifiedKey, name: &str) -> Result<(), rustls::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            &CertificateDer::from(cert.cert_der.clone()),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[test]
fn the_dev_server_certificate_names_loopback_by_name_and_by_ip_address() {
    let pki = DevPki::generate(&["localhost", "127.0.0.1", "::1"], now()).unwrap();
    assert!(pki.ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(pki.server.key_pem.contains("PRIVATE KEY"));
    for name in ["localhost", "127.0.0.1", "::1"] {
        assert!(
            matches!(ServerName::try_from(name).unwrap(), ServerName::IpAddress(_)) == (name != "localhost"),
            "{name} is checked as what it is"
        );
        verify(&pki.ca.cert_der, &pki.server, name).unwrap();
    }
    assert!(verify(&pki.ca.cert_der, &pki.server, "127.0.0.2").is_err());
    let issued = parse_certificate(&pki.server.cert_pem).unwrap();
    assert_eq!(issued.names, ["localhost", "127.0.0.1", "::1"]);
    assert_eq!(issued.role, Some(Role::Node));
}

#[test]
fn a_certificate_is_good_for_exactly_the_names_it_was_issued_for() {
    let ca = test_ca();
    let by_ip = node(&ca, "node1", &["node1", "127.0.0.1"]);
    verify(&ca.certified().cert_der, &by_ip, "node1").unwrap();
    verify(&ca.certified().cert_der, &by_ip, "127.0.0.1").unwrap();
    for other in ["localhost", "node2", "::1"] {
        assert!(verify(&ca.certified().cert_der, &by_ip, other).is_err(), "{other}");
    }
    let by_name = node(&ca, "node1", &["localhost"]);
    assert!(
        verify(&ca.certified().cert_der, &by_name, "127.0.0.1").is_err(),
        "localhost is no stand-in for 127.0.0.1"
    );
}

#[test]
fn a_reloaded_ca_issues_certificates_that_chain_to_it_and_knows_its_own() {
    let ca = test_ca();
    let ca_der = ca.certified().cert_der.clone();
    let reloaded = Ca::load(CLUSTER_CA_NAME, &ca.certified().cert_pem, &ca.certified().key_pem).unwrap();
    assert_eq!(reloaded.certified().cert_der, ca_der);
    let issued = node(&reloaded, "node1", &["node1"]);
    verify(&ca_der, &issued, "node1").unwrap();
    assert!(ca.signed(&issued.cert_pem).unwrap());
    let stranger = node(&test_ca(), "node1", &["node1"]);
    assert!(
        verify(&ca_der, &stranger, "node1").is_err(),
        "another CA's certificate does not chain"
    );
    assert!(!ca.signed(&stranger.cert_pem).unwrap());
    assert!(ca.signed("not a certificate").is_err());
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused() {
    use rustls::CertificateError::{ExpiredContext, NotValidYetContext};
    let ca = test_ca();
    let subject = Subject::new("node1", &["node1"], Role::Node);
    let day = 24 * 60 * 60;
    let (past, future) = ((now() - 2 * day, now() - day), (now() + day, now() + 2 * day));
    for (not_before, not_after) in [past, future] {
        let validity = Validity { not_before, not_after };
        let refused = verify(
            &ca.certified().cert_der,
            &ca.issue(&subject, validity).unwrap(),
            "node1",
        );
        let expected = match refused {
            Err(rustls::Error::InvalidCertificate(ExpiredContext { .. })) => not_after < now(),
            Err(rustls::Error::InvalidCertificate(NotValidYetContext { .. })) => not_before > now(),
            _ => false,
        };
        assert!(expected, "{validity:?}: {refused:?}");
    }
}

#[test]
fn a_certificate_reads_back_as_issued_with_its_role_and_lifetime() {
    let ca = test_ca();
    let at = now();
    for role in [Role::Node, Role::Executor] {
        let validity = Validity::starting(at, role.lifetime());
        let subject = Subject::new("exec-1", &["exec-1", "10.0.0.7", "::1", "exec.example"], role);
        let issued = parse_certificate(&ca.issue(&subject, validity).unwrap().cert_pem).unwrap();
        assert_eq!(
            issued,
            Issued {
                common_name: "exec-1".into(),
                names: subject.names.clone(),
                role: Some(role),
                validity,
            }
        );
        assert_eq!(validity.not_after - at, role.lifetime().as_secs() as i64);
        assert!(validity.not_before < at, "it starts early, for clocks a little behind");
    }
    assert!(Role::Executor.lifetime() < Role::Node.lifetime());
    assert!(Role::Node.lifetime() < CA_LIFETIME);
    let ca_read = parse_certificate(&ca.certified().cert_pem).unwrap();
    assert_eq!(ca_read.common_name, CLUSTER_CA_NAME);
    assert_eq!(ca_read.validity.not_after - at, CA_LIFETIME.as_secs() as i64);
    assert!(parse_certificate("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
}

#[test]
fn validity_lasts_only_inside_its_span_and_margin() {
    let validity = Validity {
        not_before: 100,
        not_after: 1_000,
    };
    assert!(validity.lasts(100, Duration::from_secs(900)));
    assert!(!validity.lasts(101, Duration::from_secs(900)));
    assert!(!validity.lasts(99, Duration::ZERO));
    assert!(!validity.lasts(1_001, Duration::ZERO));
}

#[test]
fn a_certificate_names_only_what_it_was_issued_for() {
    let ca = test_ca();
    let issued = node(&ca, "exec1", &["exec1"]);
    assert!(certificate_names(&issued.cert_der, "exec1"));
    assert!(!certificate_names(&issued.cert_der, "exec2"));
    assert!(!certificate_names(&issued.cert_der, "localhost"));
    assert!(!certificate_names(b"not a certificate", "exec1"));
    assert!(!certificate_names(&issued.cert_der, "bad name!"));
}
