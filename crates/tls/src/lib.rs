//! Certificates for Gofer, as PEM: a CA, and the node, client and server certificates it signs.
//!
//! `goferd dev` calls [`DevPki::generate`] once per data dir; `goferd certs init | issue NAME` use [`Ca`]
//! so that operators of a cluster need no openssl. Every certificate a [`Ca`] issues is good for both
//! server and client authentication, since nodes dial each other over mutual TLS. This crate only makes
//! certificates: it opens no socket and reads no file, so `goferd` owns where they are stored and tonic's
//! rustls (ring) stack does the handshakes.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Why making a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and its private key, both PEM, and the certificate as DER.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// The common name of a cluster's CA. A CA is reloaded from its key and this name, so it stays fixed.
pub const CLUSTER_CA_NAME: &str = "Gofer cluster CA";
const DEV_CA_NAME: &str = "Gofer dev CA";

/// A certificate authority that issues node and client certificates.
pub struct Ca {
    cert: CertifiedKey,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(common_name: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = name(common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl Ca {
    /// A new CA called `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let params = ca_params(common_name)?;
        let cert = params.self_signed(&key)?;
        let certified = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        };
        Ok(Ca {
            cert: certified,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA made earlier by [`Ca::generate`] with the same `common_name`, from its certificate and key.
    pub fn load(common_name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = ca_params(common_name)?;
        let certified = CertifiedKey {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der: Vec::new(),
        };
        Ok(Ca {
            cert: certified,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's own certificate and key.
    pub fn certified(&self) -> &CertifiedKey {
        &self.cert
    }

    /// Issues a certificate called `common_name` for `names` (DNS names or IP addresses), good for both
    /// server and client authentication.
    pub fn issue(&self, common_name: &str, names: &[String]) -> Result<CertifiedKey, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }
}

/// A development CA and one server certificate it signed.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca: CertifiedKey,
    pub server: CertifiedKey,
}

impl DevPki {
    /// Makes a fresh CA named "Gofer dev CA" and a server certificate for `server_names` (DNS names or IP
    /// addresses, such as `localhost` and `127.0.0.1`), usable as both server and client certificate.
    pub fn generate(server_names: &[&str]) -> Result<Self, Error> {
        let ca = Ca::generate(DEV_CA_NAME)?;
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let server = ca.issue("goferd", &names)?;
        Ok(DevPki { ca: ca.cert, server })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

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
    fn makes_pem_for_ca_and_server() {
        let pki = DevPki::generate(&["localhost", "127.0.0.1"]).unwrap();
        assert!(pki.ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.server.key_pem.contains("PRIVATE KEY"));
        verify(&pki.ca.cert_der, &pki.server, "localhost").unwrap();
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_that_chain_to_it() {
        let ca = Ca::generate(CLUSTER_CA_NAME).unwrap();
        let ca_der = ca.certified().cert_der.clone();
        let reloaded = Ca::load(CLUSTER_CA_NAME, &ca.certified().cert_pem, &ca.certified().key_pem).unwrap();
        let node = reloaded.issue("node1", &["node1".into(), "127.0.0.1".into()]).unwrap();
        verify(&ca_der, &node, "node1").unwrap();
        assert!(
            verify(&ca_der, &node, "node2").is_err(),
            "a certificate is only good for its names"
        );
        let stranger = Ca::generate(CLUSTER_CA_NAME)
            .unwrap()
            .issue("node1", &["node1".into()])
            .unwrap();
        assert!(
            verify(&ca_der, &stranger, "node1").is_err(),
            "another CA's certificate does not chain"
        );
    }
}

/// Whether the DER certificate `der` names `name` (a DNS name among its subject alternative names). Used on
/// a client certificate the TLS handshake already verified against the cluster CA, to check that a process
/// claims only its own name.
pub fn certificate_names(der: &[u8], name: &str) -> bool {
    let der = rustls_pki_types::CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod names_tests {
    use super::*;

    #[test]
    fn a_certificate_names_only_what_it_was_issued_for() {
        let ca = Ca::generate("test CA").unwrap();
        let issued = ca
            .issue("exec1", &["exec1".to_string(), "localhost".to_string()])
            .unwrap();
        assert!(certificate_names(&issued.cert_der, "exec1"));
        assert!(!certificate_names(&issued.cert_der, "exec2"));
        assert!(!certificate_names(b"not a certificate", "exec1"));
        assert!(!certificate_names(&issued.cert_der, "bad name!"));
    }
}
