//! The cluster under test: a real `pgwarden up` run as a child process in
//! a temporary directory, its parts found from its node files and /proc
//! (agents, postmasters), who is primary, whether it has converged, and
//! stopping it (SIGINT to `up`, which stops everything under it).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::{is_primary, Conn};
use crate::procs::{self, Signal};

/// How long `up` may take to print "pgwarden is up".
const UP_WITHIN: Duration = Duration::from_secs(180);
/// How long `up` may take to stop after SIGINT.
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// One node as its node file describes it.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
}

pub struct Cluster {
    up: tokio::process::Child,
    up_pid: u32,
    pub dir: PathBuf,
    pub port: u16,
    pub nodes: Vec<Node>,
}

pub struct StartOptions<'a> {
    pub pgwarden: &'a Path,
    pub root: &'a Path,
    pub nodes: u8,
    pub dcs: Option<String>,
    pub sync: bool,
}

/// A free TCP port on the loopback (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(l.local_addr()?.port())
}

fn up_command(o: &StartOptions, dir: &Path, port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(o.pgwarden);
    c.arg("up").arg("--dir").arg(dir).args([
        "--nodes",
        &o.nodes.to_string(),
        "--port",
        &port.to_string(),
    ]);
    if let Some(d) = &o.dcs {
        c.args(["--dcs", d]);
    }
    c.stdin(Stdio::null());
    c
}

/// Synchronous mode is a node-file setting read at bootstrap. `up` writes
/// the node files of a fresh directory before it binds the proxy's port,
/// and stops when that port is taken: so the files are written with the
/// port held here, `synchronous_mode = true` is added to their `[agent]`
/// section (their last), and the real start resumes the directory.
async fn prepare_sync(o: &StartOptions<'_>, dir: &Path, port: u16) -> anyhow::Result<()> {
    let hold = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("cannot hold port {port}"))?;
    let out = tokio::time::timeout(Duration::from_secs(60), up_command(o, dir, port).output())
        .await
        .context("`pgwarden up` (writing the node files) did not stop within 60 s")??;
    drop(hold);
    for i in 0..o.nodes {
        let f = dir.join(format!("node{i}.toml"));
        let text = std::fs::read_to_string(&f).with_context(|| {
            format!(
                "`pgwarden up` wrote no {}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let last_section = text.lines().rfind(|l| l.trim_start().starts_with('['));
        anyhow::ensure!(
            last_section.map(str::trim) == Some("[agent]"),
            "{}: its last section is not [agent]; synchronous_mode cannot be added",
            f.display()
        );
        std::fs::write(
            &f,
            format!("{}\nsynchronous_mode = true\n", text.trim_end()),
        )?;
    }
    Ok(())
}

impl Cluster {
    pub async fn start(o: StartOptions<'_>) -> anyhow::Result<Cluster> {
        let dir = o.root.join("up");
        let port = free_port()?;
        if o.sync {
            prepare_sync(&o, &dir, port).await?;
        }
        let log_path = o.root.join("up.log");
        let log = std::fs::File::create(&log_path)?;
        let mut up = up_command(&o, &dir, port)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", o.pgwarden.display()))?;
        let up_pid = up.id().context("`pgwarden up` exited at once")?;
        let deadline = Instant::now() + UP_WITHIN;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("pgwarden is up") {
                break;
            }
            if let Some(st) = up.try_wait()? {
                bail!(
                    "`pgwarden up` exited ({st}) before it was up:\n{}",
                    tail(&text, 15)
                );
            }
            if Instant::now() > deadline {
                let _ = procs::signal(up_pid, Signal::Int);
                let _ = tokio::time::timeout(STOP_WITHIN, up.wait()).await;
                bail!(
                    "`pgwarden up` was not up within {} s:\n{}",
                    UP_WITHIN.as_secs(),
                    tail(&text, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let nodes = (0..o.nodes)
            .map(|i| read_node(&dir.join(format!("node{i}.toml"))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Cluster {
            up,
            up_pid,
            dir,
            port,
            nodes,
        })
    }

    /// The last `n` lines of node `i`'s agent log, without colour codes.
    pub fn log_tail(&self, i: usize, n: usize) -> Vec<String> {
        let path = self.dir.join("logs").join(format!("agent{i}.log"));
        let text = std::fs::read(&path).unwrap_or_default();
        let text = strip_ansi(&String::from_utf8_lossy(&text));
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// The agent of node `i`: the child of `up` started with its node file.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        // `up` passes its canonicalised directory: matched by file name.
        let file = format!("/node{i}.toml");
        procs::children(self.up_pid)
            .into_iter()
            .find(|p| procs::cmdline(*p).iter().any(|a| a.ends_with(&file)) && procs::alive(*p))
    }

    pub fn postmaster_pid(&self, i: usize) -> Option<u32> {
        procs::postmaster(&self.nodes[i].data_dir)
    }

    /// Every node's answer to "are you a primary?", asked at once.
    pub async fn roles(&self, timeout: Duration) -> Vec<Result<bool, String>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let port = n.pg_port;
            set.spawn(async move { (i, is_primary(port, timeout).await) });
        }
        let mut out = vec![Err("not asked".to_owned()); self.nodes.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, a)) = r {
                out[i] = a;
            }
        }
        out
    }

    /// The one node answering that it is a primary, when exactly one does
    /// (others may not answer): where writes can be checked on a cluster
    /// that has not converged.
    pub async fn sole_primary(&self) -> Option<usize> {
        let roles = self.roles(Duration::from_secs(1)).await;
        let mut primaries = roles.iter().enumerate().filter(|(_, r)| **r == Ok(true));
        match (primaries.next(), primaries.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// Converged: exactly one primary, every other node a standby streaming
    /// from it, its agent answering that it is the DCS leader, and every
    /// other agent answering healthy. Returns the primary, or what is not
    /// yet so.
    pub async fn converged(&self) -> Result<usize, String> {
        let t = Duration::from_secs(1);
        let roles = self.roles(t).await;
        let silent: Vec<String> = roles
            .iter()
            .zip(&self.nodes)
            .filter_map(|(r, n)| r.as_ref().err().map(|e| format!("{}: {e}", n.name)))
            .collect();
        if !silent.is_empty() {
            return Err(format!("no answer from {}", silent.join("; ")));
        }
        let primaries: Vec<&str> = roles
            .iter()
            .zip(&self.nodes)
            .filter(|(r, _)| *r == &Ok(true))
            .map(|(_, n)| n.name.as_str())
            .collect();
        let [p] = primaries[..] else {
            return Err(format!("primaries: [{}]", primaries.join(", ")));
        };
        let pi = self.nodes.iter().position(|n| n.name == p).unwrap_or(0);
        let streaming = match Conn::connect(self.nodes[pi].pg_port, t).await {
            Ok(c) => c
                .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
                .await
                .map_err(|e| format!("{p}: pg_stat_replication: {e:#}"))?,
            Err(e) => return Err(format!("{p}: {e:#}")),
        };
        let streaming: Vec<String> = streaming
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let missing: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.name != p && !streaming.contains(&n.name))
            .map(|n| n.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!("not streaming from {p}: {}", missing.join(", ")));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let path = if i == pi { "/primary" } else { "/health" };
            match http_status(n.api, path, t).await {
                Some(200) => {}
                s => {
                    let s = s.map_or("no answer".to_owned(), |s| s.to_string());
                    return Err(format!("{}'s agent: GET {path}: {s}", n.name));
                }
            }
        }
        Ok(pi)
    }

    /// Polls [`Cluster::converged`] until it holds or `within` has passed;
    /// returns the primary and when, or the last reason it did not.
    pub async fn wait_converged(&self, within: Duration) -> Result<(usize, Instant), String> {
        let deadline = Instant::now() + within;
        loop {
            match self.converged().await {
                Ok(p) => return Ok((p, Instant::now())),
                Err(why) if Instant::now() >= deadline => return Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// SIGINT to `up` (it stops the proxy, the agents and PostgreSQL);
    /// if it has not stopped in time, SIGKILL to it and to the agents and
    /// postmasters it left. Waits at most `within` (at most 90 s).
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let within = within.min(STOP_WITHIN);
        let leftovers: Vec<u32> = (0..self.nodes.len())
            .flat_map(|i| [self.agent_pid(i), self.postmaster_pid(i)])
            .flatten()
            .collect();
        if matches!(self.up.try_wait(), Ok(None)) {
            procs::signal(self.up_pid, Signal::Int)?;
        }
        match tokio::time::timeout(within, self.up.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.up.start_kill();
                let _ = self.up.wait().await;
                for p in leftovers.into_iter().filter(|p| procs::alive(*p)) {
                    let _ = procs::signal(p, Signal::Kill);
                }
                bail!(
                    "`pgwarden up` did not stop within {} s of SIGINT; killed",
                    within.as_secs()
                )
            }
        }
    }
}

fn read_node(path: &Path) -> anyhow::Result<Node> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: toml::Value = text
        .parse()
        .with_context(|| format!("{}: not TOML", path.display()))?;
    let a = v
        .get("agent")
        .with_context(|| format!("{}: no [agent]", path.display()))?;
    let s = |k: &str| {
        a.get(k)
            .and_then(|x| x.as_str())
            .with_context(|| format!("{}: no {k}", path.display()))
    };
    let pg_port = a
        .get("pg_port")
        .and_then(|x| x.as_integer())
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("{}: no pg_port", path.display()))?;
    Ok(Node {
        name: s("name")?.to_owned(),
        pg_port,
        data_dir: PathBuf::from(s("data_dir")?),
        api: s("api_listen")?
            .parse()
            .with_context(|| format!("{}: api_listen", path.display()))?,
    })
}

/// The status code of `GET path` on a node's REST API.
async fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(timeout, get).await.ok().flatten()
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes terminal colour sequences (ESC [ ... letter).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(
            strip_ansi("\x1b[2mA\x1b[0m \x1b[32m INFO\x1b[0m b"),
            "A  INFO b"
        );
    }
}
