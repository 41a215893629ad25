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
        role,
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
    assert_eq!(node1.role, Some(Role::Node));
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
    assert_eq!(exec1.role, Some(Role::Executor));
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
        role: RoleArg::Executor,
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
    let renew = |role: Option<RoleArg>| CertsCommand::Renew {
        name: "executor".into(),
        place: place(dir.path(), Some(&out)),
        role,
    };
    run(renew(None), later).unwrap();
    let renewed = read(&cert);
    assert_eq!(renewed.names, first.names);
    assert_eq!(renewed.role, Some(Role::Executor));
    assert_eq!(renewed.validity.not_after, later + 90 * DAY);
    assert_ne!(std::fs::read_to_string(&key).unwrap(), old_key, "a new key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
    let ca = load_ca(dir.path()).unwrap();
    assert!(ca.signed(&std::fs::read_to_string(&cert).unwrap()).unwrap());
    assert!(!out.join("executor.pem.new").exists() && !out.join("executor.key.new").exists());
    // The role may be changed on renewal.
    run(renew(Some(RoleArg::Node)), later).unwrap();
    assert_eq!(read(&cert).role, Some(Role::Node));
}

#[test]
fn renewal_refuses_what_this_ca_did_not_issue_or_that_does_not_exist() {
    let dir = init();
    let renew = |name: &str| CertsCommand::Renew {
        name: name.into(),
        place: place(dir.path(), None),
        role: None,
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
