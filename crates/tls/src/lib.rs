//! Certificates for Gofer, as PEM: a CA, and the node and executor certificates it signs.
//!
//! `goferd dev` calls [`DevPki::generate`] for its data dir; `goferd certs init | issue | renew` use [`Ca`]
//! so that operators of a cluster need no openssl. Every certificate a [`Ca`] issues is good for both
//! server and client authentication, since nodes dial each other over mutual TLS, and for exactly the
//! names it was asked for: peers verify each other by their real name or address, so a name added "just in
//! case" (such as `localhost`) would let that certificate stand in for another process.
//!
//! Every certificate has a lifetime ([`Role::lifetime`], [`CA_LIFETIME`]) and records its [`Role`], so
//! that it can be renewed for the same names and role ([`parse_certificate`]). This crate only makes and
//! reads certificates: it opens no socket, reads no file and reads no clock (the caller passes the time),
//! so `goferd` owns where they are stored and tonic's rustls (ring) stack does the handshakes.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::{PEMError, X509Error};
use x509_parser::extensions::GeneralName;

/// Why making or reading a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading a certificate's PEM")]
    Pem(#[source] PEMError),
    #[error("reading a certificate")]
    Parse(#[source] X509Error),
    #[error("the certificate has no common name")]
    NoCommonName,
    #[error("a validity of {0} seconds since the Unix epoch is out of range")]
    TimeOutOfRange(i64),
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

/// How long a CA is good for: ten years, since replacing it means re-issuing every certificate of the
/// cluster at once; the certificates it signs are renewed one by one, much more often.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How much earlier than its issue a certificate starts, so that a machine whose clock is a little behind
/// the issuer's accepts it at once.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// What a certificate is for, which sets its lifetime. It is recorded in the certificate (as its
/// organizational unit) so that a renewal keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A process of the cluster: a state node, an api, a scheduler or an extension host.
    Node,
    /// An executor apart from a scheduler, presenting its certificate to the schedulers.
    Executor,
}

impl Role {
    /// A node's certificate lasts a year. An executor's lasts 90 days: executors sit beside the Docker
    /// socket and run other people's containers, so their keys are the likeliest to leak, and they hold
    /// no state, so renewing and restarting one costs nothing.
    pub const fn lifetime(self) -> Duration {
        match self {
            Role::Node => Duration::from_secs(365 * 24 * 60 * 60),
            Role::Executor => Duration::from_secs(90 * 24 * 60 * 60),
        }
    }

    /// The role's name, as the certificate records it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Executor => "executor",
        }
    }

    fn from_recorded(unit: &str) -> Option<Role> {
        [Role::Node, Role::Executor].into_iter().find(|r| r.as_str() == unit)
    }
}

/// When a certificate is good, in seconds since the Unix epoch (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Good for `lifetime` from `now_unix_seconds`, starting an hour early for clocks a little behind.
    pub fn starting(now_unix_seconds: i64, lifetime: Duration) -> Validity {
        Validity {
            not_before: now_unix_seconds.saturating_sub(seconds(CLOCK_SKEW)),
            not_after: now_unix_seconds.saturating_add(seconds(lifetime)),
        }
    }

    /// Whether the certificate is still good `margin` after `now_unix_seconds`.
    pub fn lasts(&self, now_unix_seconds: i64, margin: Duration) -> bool {
        self.not_before <= now_unix_seconds && now_unix_seconds.saturating_add(seconds(margin)) <= self.not_after
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), Error> {
        let time = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| Error::TimeOutOfRange(t));
        params.not_before = time(self.not_before)?;
        params.not_after = time(self.not_after)?;
        Ok(())
    }
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Whom a certificate is issued to: its common name, the DNS names and IP addresses it is good for (and
/// no other), and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    /// DNS names, or IP addresses (written as such, `127.0.0.1` or `::1`, they become IP address names).
    pub names: Vec<String>,
    pub role: Role,
}

impl Subject {
    /// A subject called `common_name` with `role`, good for `names`.
    pub fn new(common_name: &str, names: &[&str], role: Role) -> Subject {
        Subject {
            common_name: common_name.to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
            role,
        }
    }
}

/// A certificate read back: whom it was issued to and when it is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub common_name: String,
    /// Its DNS names and IP addresses, in the certificate's order.
    pub names: Vec<String>,
    /// `None` for a certificate that records no role (made before roles were recorded).
    pub role: Option<Role>,
    pub validity: Validity,
}

/// A certificate authority that issues node and executor certificates.
pub struct Ca {
    cert: CertifiedKey,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(common_name: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = name(common_name, None);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl Ca {
    /// A new CA called `common_name`, good for `validity`.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(common_name)?;
        validity.apply(&mut params)?;
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
            cert_der: pem_to_der(cert_pem)?,
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

    /// Issues a certificate for `subject`, good for `validity` and for both server and client
    /// authentication, with a new key.
    pub fn issue(&self, subject: &Subject, validity: Validity) -> Result<CertifiedKey, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(subject.names.clone())?;
        params.distinguished_name = name(&subject.common_name, Some(subject.role));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// Whether this CA signed the certificate `cert_pem` (whether or not it is still good).
    pub fn signed(&self, cert_pem: &str) -> Result<bool, Error> {
        let ca = x509(&self.cert.cert_der)?;
        let der = pem_to_der(cert_pem)?;
        let cert = x509(&der)?;
        Ok(cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok())
    }
}

/// A development CA and one server certificate it signed.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca: CertifiedKey,
    pub server: CertifiedKey,
}

impl DevPki {
    /// Makes a fresh CA named "Gofer dev CA" and a node certificate for `server_names` (DNS names or IP
    /// addresses, such as `localhost` and `127.0.0.1`), usable as both server and client certificate,
    /// each with its lifetime from `now_unix_seconds`.
    pub fn generate(server_names: &[&str], now_unix_seconds: i64) -> Result<Self, Error> {
        let ca = Ca::generate(DEV_CA_NAME, Validity::starting(now_unix_seconds, CA_LIFETIME))?;
        let server = ca.issue(
            &Subject::new("goferd", server_names, Role::Node),
            Validity::starting(now_unix_seconds, Role::Node.lifetime()),
        )?;
        Ok(DevPki { ca: ca.cert, server })
    }
}

/// How long before a development certificate ends `goferd dev` makes a new one: a month.
pub const DEV_RENEWAL_MARGIN: Duration = Duration::from_secs(30 * 24 * 60 * 60);

fn name(common_name: &str, role: Option<Role>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.as_str());
    }
    dn
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, Error> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => Error::Pem(e),
        x509_parser::nom::Err::Incomplete(_) => Error::Pem(PEMError::IncompletePEM),
    })?;
    Ok(pem.contents)
}

fn x509(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => Error::Parse(e),
        x509_parser::nom::Err::Incomplete(_) => Error::Parse(X509Error::InvalidCertificate),
    })?;
    Ok(cert)
}

/// Reads a certificate (PEM) back: its common name, names, role and validity. It does not check who
/// signed it ([`Ca::signed`] does).
pub fn parse_certificate(cert_pem: &str) -> Result<Issued, Error> {
    let der = pem_to_der(cert_pem)?;
    let cert = x509(&der)?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(Error::NoCommonName)?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .find_map(|unit| unit.as_str().ok().and_then(Role::from_recorded));
    let mut names = Vec::new();
    if let Some(alternative) = cert.subject_alternative_name().map_err(Error::Parse)? {
        for name in &alternative.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(octets) => {
                    let ip = match octets.len() {
                        4 => <[u8; 4]>::try_from(*octets).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*octets).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let validity = Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    Ok(Issued {
        common_name,
        names,
        role,
        validity,
    })
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
mod tests;
