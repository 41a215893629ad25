//! Certificates for Gofer: a development CA and the server certificate it signs, as PEM.
//!
//! `goferd dev` calls [`DevPki::generate`] once per data dir and keeps the PEM files there; clients trust
//! the CA file. This crate only makes certificates: it opens no socket and reads no file, so `goferd`
//! owns where they are stored and `tonic`'s rustls (ring) stack does the handshakes.

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

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
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
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = name("Gofer dev CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = CertifiedKey {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = name("goferd");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let server_cert = params.signed_by(&server_key, &issuer)?;
        let server = CertifiedKey {
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
        };
        Ok(DevPki { ca, server })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_pem_for_ca_and_server() {
        let pki = DevPki::generate(&["localhost", "127.0.0.1"]).unwrap();
        assert!(pki.ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.server.key_pem.contains("PRIVATE KEY"));
        assert_ne!(pki.ca.cert_pem, pki.server.cert_pem);
    }
}
