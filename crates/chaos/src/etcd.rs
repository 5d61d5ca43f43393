//! The etcd the long profile runs on: one member on free loopback ports in
//! the run's temporary directory, started, paused/resumed for DCS outages,
//! and stopped at the end.
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{free_port, tail};
use crate::procs;

pub struct Etcd {
    child: tokio::process::Child,
    pub pid: u32,
    host: String,
    pub client_port: u16,
}

impl Etcd {
    /// Starts etcd with its clients' port on `host` (127.0.0.1, or the
    /// root namespace's address on the dcs network).
    pub async fn start(root: &Path, host: &str) -> anyhow::Result<Etcd> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let c = format!("http://{host}:{client_port}");
        let p = format!("http://127.0.0.1:{peer_port}");
        let log_path = root.join("etcd.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = tokio::process::Command::new("etcd")
            .args(["--name", "chaos", "--data-dir"])
            .arg(root.join("etcd"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("chaos={p}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Not stopped by a Ctrl-C meant for this suite: the agents
            // are stopped first, with their DCS still there.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("cannot run etcd (Debian package etcd-server)")?;
        let pid = child.id().context("etcd exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(host, client_port).await {
            if let Some(st) = child.try_wait()? {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("etcd exited ({st}):\n{}", tail(&text, 10));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!("etcd was not healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Etcd {
            child,
            pid,
            host: host.to_owned(),
            client_port,
        })
    }

    pub fn url(&self) -> String {
        format!("etcd://{}:{}", self.host, self.client_port)
    }

    /// SIGTERM, then SIGKILL after 10 s. Resumed first: a paused etcd
    /// cannot act on SIGTERM.
    pub async fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = procs::signal(self.pid, procs::Signal::Cont);
            let _ = procs::signal(self.pid, procs::Signal::Term);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

async fn healthy(host: &str, port: u16) -> bool {
    let get = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
