//! `goferd certs init | issue NAME`: a cluster CA and the node and client certificates it signs, so that
//! operators need no openssl. Private keys are written with mode 0600; nothing is ever overwritten.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gofer_tls::{CLUSTER_CA_NAME, Ca};

/// Flags of `goferd certs`.
#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Make a new cluster CA in DIR (ca.pem, ca.key) and an admin token (admin.token)
    Init {
        /// Where the CA and the certificates live
        #[arg(long, default_value = "gofer-certs")]
        dir: PathBuf,
    },
    /// Issue a certificate NAME.pem / NAME.key signed by the CA in DIR, for a node or a client
    Issue {
        /// The certificate's name (a node id such as node1, or a client name); letters, digits, '-', '_', '.'
        name: String,
        /// Where the CA and the certificates live
        #[arg(long, default_value = "gofer-certs")]
        dir: PathBuf,
        /// A DNS name or IP address the certificate is good for (repeatable) [default: NAME, localhost, 127.0.0.1]
        #[arg(long = "san")]
        sans: Vec<String>,
    },
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

/// Runs a `goferd certs` command.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if dir.join("ca.pem").exists() || dir.join("ca.key").exists() {
                bail!("{} already holds a CA; refusing to replace it", dir.display());
            }
            let ca = Ca::generate(CLUSTER_CA_NAME)?;
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
            println!(
                "cluster CA written to {}/ca.pem (key: ca.key, keep it safe)",
                dir.display()
            );
        }
        CertsCommand::Issue { name, dir, sans } => {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                bail!("NAME {name:?} must be 1-64 letters, digits, '-', '_' or '.'");
            }
            let read = |file: &str| {
                std::fs::read_to_string(dir.join(file))
                    .with_context(|| format!("reading {}/{file} (run `goferd certs init` first)", dir.display()))
            };
            let ca = Ca::load(CLUSTER_CA_NAME, &read("ca.pem")?, &read("ca.key")?)?;
            let names = if sans.is_empty() {
                vec![name.clone(), "localhost".into(), "127.0.0.1".into()]
            } else {
                sans
            };
            let issued = ca.issue(&name, &names)?;
            write_new(&dir.join(format!("{name}.key")), &issued.key_pem, true)?;
            write_new(&dir.join(format!("{name}.pem")), &issued.cert_pem, false)?;
            println!(
                "{name}.pem and {name}.key written to {} for {}",
                dir.display(),
                names.join(", ")
            );
        }
    }
    Ok(())
}
