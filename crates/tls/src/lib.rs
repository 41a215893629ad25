//! Certificates for Gofer, as PEM: a CA, and the certificates it signs for the cluster's processes; and
//! the TLS 1.3 config and handshakes of Gofer's ports ([`listen`]).
//!
//! `goferd dev` calls [`DevPki::generate`] for its data dir; `goferd certs init | issue | renew` use [`Ca`]
//! so that operators of a cluster need no openssl. Every certificate a [`Ca`] issues is good for both
//! server and client authentication, since nodes dial each other over mutual TLS, and for exactly the
//! names it was asked for: peers verify each other by their real name or address, so a name added "just in
//! case" (such as `localhost`) would let that certificate stand in for another process.
//!
//! Every certificate records the [`Roles`] of the process it is for (URI names `urn:gofer:role:ROLE`),
//! which the servers check on every call, and has a lifetime ([`Roles::lifetime`], [`CA_LIFETIME`]), so
//! that it can be renewed for the same names and roles ([`parse_certificate`]). Making and reading
//! certificates reads no file and no clock (the caller passes the time), so `goferd` owns where they are
//! stored.

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

/// A role a process plays in the cluster, which a certificate records (as a URI name,
/// `urn:gofer:role:<role>`) and every server checks: the raft port admits raft traffic only from `State`,
/// and the API port admits a certificate alone only from an `Executor`, on the dispatch service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    State,
    Api,
    Scheduler,
    ExtensionHost,
    Executor,
}

/// The prefix of the URI name that records a role in a certificate.
pub const ROLE_URI_PREFIX: &str = "urn:gofer:role:";

impl Role {
    pub const ALL: [Role; 5] = [
        Role::State,
        Role::Api,
        Role::Scheduler,
        Role::ExtensionHost,
        Role::Executor,
    ];

    /// The role's name, as `goferd server --roles` and `goferd certs issue --role` spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::State => "state",
            Role::Api => "api",
            Role::Scheduler => "scheduler",
            Role::ExtensionHost => "extension-host",
            Role::Executor => "executor",
        }
    }

    /// The role named `name`, as [`Role::as_str`] spells it.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles a certificate records, as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role: a certificate made before roles were recorded, refused everywhere.
    pub const NONE: Roles = Roles(0);
    /// Every role, as a process that plays them all (`goferd server` without `--roles`, `goferd dev`).
    pub const ALL: Roles = Roles(0b1_1111);

    pub const fn of(role: Role) -> Roles {
        Roles(role.bit())
    }

    pub const fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    /// These roles and `other`'s.
    pub const fn with_all(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    pub const fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether every role of `other` is here.
    pub const fn covers(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// How long a certificate for these roles lasts: 90 days for an executor alone, a year for anything
    /// else. Executors sit beside the Docker socket and run other people's containers, so their keys are
    /// the likeliest to leak, and they hold no state, so renewing and restarting one costs nothing.
    pub const fn lifetime(self) -> Duration {
        if self.0 == Role::Executor.bit() {
            Duration::from_secs(90 * 24 * 60 * 60)
        } else {
            Duration::from_secs(365 * 24 * 60 * 60)
        }
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Roles {
        iter.into_iter().fold(Roles::NONE, Roles::with)
    }
}

impl std::fmt::Display for Roles {
    /// `state,api`, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
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
/// no other), and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    /// DNS names, or IP addresses (written as such, `127.0.0.1` or `::1`, they become IP address names).
    pub names: Vec<String>,
    pub roles: Roles,
}

impl Subject {
    /// A subject called `common_name` with `roles`, good for `names`.
    pub fn new(common_name: &str, names: &[&str], roles: Roles) -> Subject {
        Subject {
            common_name: common_name.to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
            roles,
        }
    }
}

/// A certificate read back: whom it was issued to and when it is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub common_name: String,
    /// Its DNS names and IP addresses, in the certificate's order.
    pub names: Vec<String>,
    /// The roles it records; none for a certificate made before roles were recorded.
    pub roles: Roles,
    /// For a certificate from before roles were recorded as URI names, what its organizational unit said
    /// it was for (`node`: every role; `executor`), so that `goferd certs renew` can keep it.
    pub legacy_roles: Option<Roles>,
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
    params.distinguished_name = name(common_name);
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
        params.distinguished_name = name(&subject.common_name);
        for role in subject.roles.iter() {
            let uri = format!("{ROLE_URI_PREFIX}{}", role.as_str());
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().map_err(Error::Generate)?));
        }
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
            &Subject::new("goferd", server_names, Roles::ALL),
            Validity::starting(now_unix_seconds, Roles::ALL.lifetime()),
        )?;
        Ok(DevPki { ca: ca.cert, server })
    }
}

/// How long before a development certificate ends `goferd dev` makes a new one: a month.
pub const DEV_RENEWAL_MARGIN: Duration = Duration::from_secs(30 * 24 * 60 * 60);

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
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
    let legacy_roles = subject
        .iter_organizational_unit()
        .find_map(|unit| match unit.as_str().ok()? {
            "node" => Some(Roles::ALL),
            "executor" => Some(Roles::of(Role::Executor)),
            _ => None,
        });
    let mut names = Vec::new();
    let mut roles = Roles::NONE;
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
                GeneralName::URI(uri) => {
                    roles = roles_in(roles, uri);
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
        roles,
        legacy_roles: legacy_roles.filter(|_| roles.is_empty()),
        validity,
    })
}

/// The common name of the DER certificate `der`, if it has one.
pub fn common_name_of(der: &[u8]) -> Option<String> {
    let cert = x509(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(name)
}

fn roles_in(roles: Roles, uri: &str) -> Roles {
    match uri.strip_prefix(ROLE_URI_PREFIX).and_then(Role::from_name) {
        Some(role) => roles.with(role),
        None => roles,
    }
}

/// The roles the DER certificate `der` records. Used on a client certificate the TLS handshake already
/// verified against the cluster CA; anything unreadable records none.
pub fn roles_of(der: &[u8]) -> Roles {
    let Ok(cert) = x509(der) else {
        return Roles::NONE;
    };
    let Ok(Some(alternative)) = cert.subject_alternative_name() else {
        return Roles::NONE;
    };
    alternative
        .value
        .general_names
        .iter()
        .fold(Roles::NONE, |roles, name| match name {
            GeneralName::URI(uri) => roles_in(roles, uri),
            _ => roles,
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

pub mod listen;
pub mod relay;

#[cfg(test)]
mod tests;
