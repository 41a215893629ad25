//! `goferd certs` on a temp dir: the names a certificate is issued for, its role and lifetime, and a
//! renewal that keeps the names and role with a fresh lifetime and key.

use std::os::unix::fs::PermissionsExt;

use gofer_tls::{Issued, parse_certificate};

use super::*;

/// 2023-11-14 22:13:20 UTC.
const NOW: i64 = 1_700_000_000;
const DAY: i64 = 24 * 60 * 60;

fn place(dir: &Path, out: Option<&Path>) -> Place {
    Place {
        dir: dir.to_path_buf(),
        out: out.map(Path::to_path_buf),
    }
}

fn issue_command(dir: &Path, name: &str, role: RoleArg, dns: &[&str], ips: &[&str]) -> CertsCommand {
    CertsCommand::Issue {
        name: name.into(),
        place: place(dir, None),
        roles: vec![role],
        dns: dns.iter().map(|d| d.to_string()).collect(),
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
    }
}

fn read(path: &Path) -> Issued {
    parse_certificate(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn init() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run(CertsCommand::Init { dir: dir.path().into() }, NOW).unwrap();
    dir
}

#[test]
fn a_certificate_names_exactly_what_was_asked_and_lasts_as_its_role_says() {
    let dir = init();
    run(issue_command(dir.path(), "node1", RoleArg::Node, &[], &[]), NOW).unwrap();
    let node1 = read(&dir.path().join("node1.pem"));
    assert_eq!(node1.names, ["node1"], "no localhost, no 127.0.0.1");
    assert_eq!((node1.roles, node1.legacy_roles), (Roles::ALL, None));
    assert_eq!(node1.validity.not_after, NOW + 365 * DAY);
    let ca = read(&dir.path().join("ca.pem"));
    assert_eq!(ca.validity.not_after, NOW + 3650 * DAY);

    let extra = issue_command(
        dir.path(),
        "exec1",
        RoleArg::Executor,
        &["exec1.example", "exec1"],
        &["10.0.0.7", "::1"],
    );
    run(extra, NOW).unwrap();
    let exec1 = read(&dir.path().join("exec1.pem"));
    assert_eq!(exec1.names, ["exec1", "exec1.example", "10.0.0.7", "::1"]);
    assert_eq!(exec1.roles, Roles::of(Role::Executor));
    assert_eq!(exec1.validity.not_after, NOW + 90 * DAY);
    assert!(parse_dns_name("127.0.0.1").is_err());
    assert!(parse_dns_name("bad name").is_err());
    assert_eq!(parse_dns_name("node1.example").as_deref(), Ok("node1.example"));
}

#[test]
fn renewal_keeps_the_names_and_role_with_a_fresh_lifetime_and_a_new_key() {
    let dir = init();
    let out = dir.path().join("executor");
    let issue = CertsCommand::Issue {
        name: "executor".into(),
        place: place(dir.path(), Some(&out)),
        roles: vec![RoleArg::Executor],
        dns: vec![],
        ips: vec!["127.0.0.1".parse().unwrap()],
    };
    run(issue, NOW).unwrap();
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o700,
        "a directory of its own is private"
    );
    let (cert, key) = (out.join("executor.pem"), out.join("executor.key"));
    let (old_key, first) = (std::fs::read_to_string(&key).unwrap(), read(&cert));
    let later = NOW + 80 * DAY;
    let renew = |roles: Vec<RoleArg>| CertsCommand::Renew {
        name: "executor".into(),
        place: place(dir.path(), Some(&out)),
        roles,
    };
    run(renew(vec![]), later).unwrap();
    let renewed = read(&cert);
    assert_eq!(renewed.names, first.names);
    assert_eq!(renewed.roles, Roles::of(Role::Executor));
    assert_eq!(renewed.validity.not_after, later + 90 * DAY);
    assert_ne!(std::fs::read_to_string(&key).unwrap(), old_key, "a new key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
    let ca = load_ca(dir.path()).unwrap();
    assert!(ca.signed(&std::fs::read_to_string(&cert).unwrap()).unwrap());
    assert!(!out.join("executor.pem.new").exists() && !out.join("executor.key.new").exists());
    // The roles may be changed on renewal.
    run(renew(vec![RoleArg::Scheduler, RoleArg::Executor]), later).unwrap();
    let changed = read(&cert);
    assert_eq!(changed.roles, Roles::of(Role::Scheduler).with(Role::Executor));
    assert_eq!(
        changed.validity.not_after,
        later + 365 * DAY,
        "more than an executor's: a year"
    );
}

#[test]
fn renewal_refuses_what_this_ca_did_not_issue_or_that_does_not_exist() {
    let dir = init();
    let renew = |name: &str| CertsCommand::Renew {
        name: name.into(),
        place: place(dir.path(), None),
        roles: vec![],
    };
    assert!(run(renew("nobody"), NOW).is_err());
    let other = init();
    run(issue_command(other.path(), "node1", RoleArg::Node, &[], &[]), NOW).unwrap();
    let stranger = std::fs::read_to_string(other.path().join("node1.pem")).unwrap();
    std::fs::write(dir.path().join("node1.pem"), &stranger).unwrap();
    let err = run(renew("node1"), NOW).unwrap_err().to_string();
    assert!(err.contains("not issued by the CA"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("node1.pem")).unwrap(), stranger);
    assert!(!dir.path().join("node1.key").exists());
    // A certificate under another file name than its own is not renewed under that name.
    run(issue_command(dir.path(), "node2", RoleArg::Node, &[], &[]), NOW).unwrap();
    std::fs::copy(dir.path().join("node2.pem"), dir.path().join("node3.pem")).unwrap();
    let err = run(renew("node3"), NOW).unwrap_err().to_string();
    assert!(err.contains("issued to \"node2\""), "{err}");
}

/// A certificate from before roles were recorded is renewed with the roles its old organizational unit
/// implies, and `--role` lists are read as the flags spell them.
#[test]
fn an_older_certificate_is_renewed_with_the_roles_it_was_for() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: CertsCommand,
    }
    let parsed = Cli::try_parse_from([
        "certs",
        "issue",
        "s1",
        "--role",
        "scheduler,extension-host",
        "--role",
        "api",
    ])
    .unwrap();
    let CertsCommand::Issue { roles: args, .. } = parsed.command else {
        panic!("an issue command");
    };
    assert_eq!(
        roles(&args),
        Roles::of(Role::Scheduler).with(Role::ExtensionHost).with(Role::Api)
    );
    assert!(Cli::try_parse_from(["certs", "issue", "s1", "--role", "boss"]).is_err());

    let dir = init();
    let ca = load_ca(dir.path()).unwrap();
    // Issued as an older goferd did: the role as the organizational unit, no role names.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old1".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "old1");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "node");
    // The CA as `gofer_tls::Ca::load` rebuilds it: its name and key.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, gofer_tls::CLUSTER_CA_NAME);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, rcgen::KeyPair::from_pem(&ca.certified().key_pem).unwrap());
    let old = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("old1.pem"), old.pem()).unwrap();
    assert_eq!(read(&dir.path().join("old1.pem")).roles, Roles::NONE);
    let renew = CertsCommand::Renew {
        name: "old1".into(),
        place: place(dir.path(), None),
        roles: vec![],
    };
    run(renew, NOW).unwrap();
    let renewed = read(&dir.path().join("old1.pem"));
    assert_eq!((renewed.names, renewed.roles), (vec!["old1".to_string()], Roles::ALL));
}
