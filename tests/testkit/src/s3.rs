//! A real S3-compatible server for the tests of the blob layer's S3 tier: moto's server mode (PyPI
//! `moto[server]`, which `.ci/run` installs), started on a loopback port of its own and stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{Seen, wait_until};

/// A running moto server.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    /// Starts `moto_server` on a free loopback port and waits until it answers.
    pub fn start() -> Result<S3Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server (python3 -m pip install 'moto[server]')")?;
        let server = S3Server { child, port };
        wait_until("moto_server to listen", Duration::from_secs(60), || {
            Ok(Seen::check(TcpStream::connect(("127.0.0.1", port)).is_ok(), |up| *up))
        })?;
        Ok(server)
    }

    /// The endpoint to give a client: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket (moto takes an unsigned request).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let status = self.request("PUT", &format!("/{bucket}"))?.0;
        if status != 200 {
            bail!("creating bucket {bucket}: HTTP {status}");
        }
        Ok(())
    }

    /// The keys in `bucket` (from an unsigned ListObjects, moto's XML read for its `<Key>`s).
    pub fn keys(&self, bucket: &str) -> Result<Vec<String>> {
        let (status, body) = self.request("GET", &format!("/{bucket}"))?;
        if status != 200 {
            bail!("listing bucket {bucket}: HTTP {status}: {body}");
        }
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
            .collect())
    }

    fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("an HTTP status")?;
        Ok((status, response))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
