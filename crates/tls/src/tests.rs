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
        &Subject::new(common_name, names, Roles::ALL),
        Validity::starting(now(), Roles::ALL.lifetime()),
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
    assert_eq!(issued.roles, Roles::ALL);
    assert_eq!(issued.legacy_roles, None);
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
    let subject = Subject::new("node1", &["node1"], Roles::of(Role::State));
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
    let executor = Roles::of(Role::Executor);
    let scheduler_and_executor = Roles::of(Role::Scheduler).with(Role::Executor);
    for roles in [Roles::ALL, executor, scheduler_and_executor, Roles::NONE] {
        let validity = Validity::starting(at, roles.lifetime());
        let subject = Subject::new("exec-1", &["exec-1", "10.0.0.7", "::1", "exec.example"], roles);
        let der = ca.issue(&subject, validity).unwrap().cert_der;
        assert_eq!(roles_of(&der), roles);
        assert_eq!(common_name_of(&der).as_deref(), Some("exec-1"));
        let issued = parse_certificate(&ca.issue(&subject, validity).unwrap().cert_pem).unwrap();
        assert_eq!(
            issued,
            Issued {
                common_name: "exec-1".into(),
                names: subject.names.clone(),
                roles,
                legacy_roles: None,
                validity,
            }
        );
        assert_eq!(validity.not_after - at, roles.lifetime().as_secs() as i64);
        assert!(validity.not_before < at, "it starts early, for clocks a little behind");
    }
    assert!(executor.lifetime() < Roles::ALL.lifetime());
    assert_eq!(scheduler_and_executor.lifetime(), Roles::ALL.lifetime());
    assert!(Roles::ALL.lifetime() < CA_LIFETIME);
    assert_eq!(roles_of(b"not a certificate"), Roles::NONE);
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

#[test]
fn roles_are_named_and_listed_as_the_flags_spell_them() {
    for role in Role::ALL {
        assert_eq!(Role::from_name(role.as_str()), Some(role));
    }
    assert_eq!(Role::from_name("node"), None);
    assert_eq!(Roles::ALL.to_string(), "state,api,scheduler,extension-host,executor");
    assert_eq!(Roles::NONE.to_string(), "none");
    let two: Roles = [Role::Executor, Role::Api].into_iter().collect();
    assert_eq!(two.to_string(), "api,executor");
    assert!(Roles::ALL.covers(two) && !two.covers(Roles::ALL) && two.covers(Roles::NONE));
}

/// A certificate from before roles were URI names records its role as its organizational unit: it has no
/// roles (and is refused), but `goferd certs renew` can read what it was for.
#[test]
fn an_older_certificate_has_no_roles_but_says_what_it_was_for() {
    let ca = test_ca();
    for (unit, legacy) in [
        ("node", Some(Roles::ALL)),
        ("executor", Some(Roles::of(Role::Executor))),
        ("x", None),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["old".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "old");
        params.distinguished_name.push(DnType::OrganizationalUnitName, unit);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let issued = parse_certificate(&cert.pem()).unwrap();
        assert_eq!(issued.roles, Roles::NONE, "{unit}");
        assert_eq!(issued.legacy_roles, legacy, "{unit}");
        assert_eq!(roles_of(cert.der()), Roles::NONE);
    }
}
