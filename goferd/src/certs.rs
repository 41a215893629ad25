//! `goferd certs init | issue NAME | renew NAME`: a cluster CA and the node and executor certificates it
//! signs, so that operators need no openssl.
//!
//! A certificate is good for exactly NAME and the names given with `--dns` and `--ip`, nothing added:
//! peers verify each other by their real name or address, so an extra name (such as `localhost`) would let
//! that certificate stand in for another process. Each records the roles its process plays
//! (`gofer_tls::Roles`), which every server checks, and has a lifetime they set, so that `renew` issues it
//! again for the same names and roles (a certificate from before roles were recorded gets the ones its old
//! organizational unit implies, or those given with `--role`). Private keys are
//! written with mode 0600; `init` and `issue` never overwrite a file, and `renew` replaces the certificate
//! and key by renaming new files over them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gofer_tls::{CA_LIFETIME, CLUSTER_CA_NAME, Ca, Role, Roles, Subject, Validity};

/// Where the CA lives and where a certificate goes.
#[derive(clap::Args)]
pub struct Place {
    /// Where the CA lives (ca.pem, ca.key), and the certificates unless --out says otherwise
    #[arg(long, default_value = "gofer-certs")]
    dir: PathBuf,
    /// Where NAME.pem and NAME.key are, such as a directory of their own that only NAME's process is given
    /// [default: DIR]
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Place {
    fn out(&self) -> &Path {
        self.out.as_deref().unwrap_or(&self.dir)
    }
}

/// A role a certificate records, as `goferd server --roles` names them; the servers admit its holder
/// only to what those roles do.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    /// Every role, for a node that plays them all (`goferd server` without --roles)
    Node,
    State,
    Api,
    Scheduler,
    ExtensionHost,
    Executor,
}

/// The roles `args` name together.
fn roles(args: &[RoleArg]) -> Roles {
    args.iter()
        .map(|arg| match arg {
            RoleArg::Node => Roles::ALL,
            RoleArg::State => Roles::of(Role::State),
            RoleArg::Api => Roles::of(Role::Api),
            RoleArg::Scheduler => Roles::of(Role::Scheduler),
            RoleArg::ExtensionHost => Roles::of(Role::ExtensionHost),
            RoleArg::Executor => Roles::of(Role::Executor),
        })
        .fold(Roles::NONE, |all, more| all.with_all(more))
}

/// Flags of `goferd certs`.
#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Make a new cluster CA in DIR (ca.pem, ca.key; good for 10 years), an admin token (admin.token) and
    /// the key that seals secrets (secret.key)
    Init {
        /// Where the CA and the certificates live
        #[arg(long, default_value = "gofer-certs")]
        dir: PathBuf,
    },
    /// Issue a certificate NAME.pem / NAME.key signed by the CA in DIR, good for NAME and the names given
    /// with --dns and --ip, and no other
    Issue {
        /// The certificate's name (a node id such as node1, or a process's --name); letters, digits, '-',
        /// '_', '.'
        name: String,
        #[command(flatten)]
        place: Place,
        /// The roles the process plays, separated by commas (state, api, scheduler, extension-host,
        /// executor; node for all of them): the servers admit it only to what they do. An executor's
        /// alone is good for 90 days, any other for a year
        #[arg(long = "role", value_enum, value_delimiter = ',', default_value = "node")]
        roles: Vec<RoleArg>,
        /// Another DNS name the certificate is good for, such as the host name peers dial (repeatable)
        #[arg(long = "dns", value_name = "NAME", value_parser = parse_dns_name)]
        dns: Vec<String>,
        /// An IP address the certificate is good for, such as the address clients dial (repeatable)
        #[arg(long = "ip", value_name = "ADDRESS")]
        ips: Vec<IpAddr>,
    },
    /// Issue NAME.pem / NAME.key again, from the CA in DIR, for the names and role the current certificate
    /// records, with a new key and a fresh lifetime; the process picks it up when it restarts
    Renew {
        /// The certificate's name, as issued
        name: String,
        #[command(flatten)]
        place: Place,
        /// The roles, separated by commas, for a certificate that records none (issued by an older goferd)
        /// or to change them [default: the ones the certificate records]
        #[arg(long = "role", value_enum, value_delimiter = ',')]
        roles: Vec<RoleArg>,
    },
}

/// A `--dns` value: a DNS name, not an IP address (that is `--ip`).
fn parse_dns_name(text: &str) -> Result<String, String> {
    if text.parse::<IpAddr>().is_ok() {
        return Err("an IP address goes with --ip".into());
    }
    rustls::pki_types::DnsName::try_from(text)
        .map(|_| text.to_string())
        .map_err(|_| "not a DNS name".into())
}

fn write_new(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {} (it must not exist yet)", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Replaces `path` with `contents` at once: a process that reads it sees the old file or the new one.
fn write_replacing(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing {}", tmp.display()));
        }
        _ => {}
    }
    write_new(&tmp, contents, private)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("NAME {name:?} must be 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading {}/{file} (run `goferd certs init` first)", dir.display()))
    };
    Ok(Ca::load(CLUSTER_CA_NAME, &read("ca.pem")?, &read("ca.key")?)?)
}

/// A Unix time as a UTC date and time, for people.
fn date(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0).map_or_else(
        || unix_seconds.to_string(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// Issues `subject`'s certificate from `ca` into `out`, writing with `write` (new files, or replacing).
fn issue(
    ca: &Ca,
    subject: &Subject,
    out: &Path,
    now_unix_seconds: i64,
    write: fn(&Path, &str, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let validity = Validity::starting(now_unix_seconds, subject.roles.lifetime());
    let issued = ca.issue(subject, validity)?;
    let name = &subject.common_name;
    // The key first: a process that starts in between finds a key its certificate does not match and
    // stops, rather than running with a certificate about to be replaced.
    write(&out.join(format!("{name}.key")), &issued.key_pem, true)?;
    write(&out.join(format!("{name}.pem")), &issued.cert_pem, false)?;
    println!(
        "{name}.pem and {name}.key written to {} for {} ({}, good until {})",
        out.display(),
        subject.names.join(", "),
        subject.roles,
        date(validity.not_after)
    );
    Ok(())
}

/// Runs a `goferd certs` command; certificates start at `now_unix_seconds`.
pub fn run(command: CertsCommand, now_unix_seconds: i64) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if dir.join("ca.pem").exists() || dir.join("ca.key").exists() {
                bail!("{} already holds a CA; refusing to replace it", dir.display());
            }
            let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now_unix_seconds, CA_LIFETIME))?;
            write_new(&dir.join("ca.key"), &ca.certified().key_pem, true)?;
            write_new(&dir.join("ca.pem"), &ca.certified().cert_pem, false)?;
            write_new(
                &dir.join("admin.token"),
                &format!("{}\n", crate::random::hex(32)?),
                true,
            )?;
            println!(
                "admin token written to {}/admin.token (for goferd server and goferctl)",
                dir.display()
            );
            gofer_secrets::write_new_key_file(&dir.join("secret.key"))?;
            println!(
                "secret key written to {}/secret.key (for goferd server; give every node the same one)",
                dir.display()
            );
            println!(
                "cluster CA written to {}/ca.pem (key: ca.key, keep it safe; good until {})",
                dir.display(),
                date(now_unix_seconds.saturating_add(CA_LIFETIME.as_secs() as i64))
            );
        }
        CertsCommand::Issue {
            name,
            place,
            roles: role_args,
            dns,
            ips,
        } => {
            check_name(&name)?;
            let ca = load_ca(&place.dir)?;
            let mut names = vec![name.clone()];
            for extra in dns.into_iter().chain(ips.iter().map(IpAddr::to_string)) {
                if !names.contains(&extra) {
                    names.push(extra);
                }
            }
            let subject = Subject {
                common_name: name,
                names,
                roles: roles(&role_args),
            };
            // A directory of its own is made private: it holds the key and is meant for one process.
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(place.out())
                .with_context(|| format!("creating {}", place.out().display()))?;
            issue(&ca, &subject, place.out(), now_unix_seconds, write_new)?;
        }
        CertsCommand::Renew {
            name,
            place,
            roles: role_args,
        } => {
            check_name(&name)?;
            let ca = load_ca(&place.dir)?;
            let path = place.out().join(format!("{name}.pem"));
            let current = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {} (issue it with `goferd certs issue` first)", path.display()))?;
            let issued =
                gofer_tls::parse_certificate(&current).with_context(|| format!("reading {}", path.display()))?;
            if !ca.signed(&current)? {
                bail!(
                    "{} was not issued by the CA in {}; refusing to replace it",
                    path.display(),
                    place.dir.display()
                );
            }
            if issued.common_name != name {
                bail!(
                    "{} was issued to {:?}, not {name:?}; refusing to replace it",
                    path.display(),
                    issued.common_name
                );
            }
            let given = roles(&role_args);
            let recorded = Some(issued.roles).filter(|r| !r.is_empty()).or(issued.legacy_roles);
            let roles = Some(given).filter(|r| !r.is_empty()).or(recorded).with_context(|| {
                format!(
                    "{} records no role (an older goferd issued it): pass --role with the roles its process \
                     plays (state, api, scheduler, extension-host, executor; node for all)",
                    path.display()
                )
            })?;
            let subject = Subject {
                common_name: name,
                names: issued.names,
                roles,
            };
            issue(&ca, &subject, place.out(), now_unix_seconds, write_replacing)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
