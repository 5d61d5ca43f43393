//! The cluster under test: a real `pgwarden up` run as a child process in
//! a temporary directory, or with `--net netns` the agents and the proxy
//! this suite starts itself in network namespaces (`spawned.rs`); its
//! parts found from its node files and /proc (agents, postmasters), who
//! is primary, whether it has converged, and stopping it (SIGINT to `up`,
//! which stops everything under it).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::{is_primary, Conn, Target};
use crate::netns::Net;
use crate::procs::{self, Signal};
use crate::spawned::{self, Spawned};

/// How long `up` may take to print "pgwarden is up".
const UP_WITHIN: Duration = Duration::from_secs(180);
/// How long `up` may take to stop after SIGINT.
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// One node as its node file describes it.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    /// Its PostgreSQL over TCP, at the address it advertises.
    pub pg: Target,
    /// Its PostgreSQL over the Unix socket in its run directory (reached
    /// whatever the network does).
    pub socket: Target,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
}

enum Runner {
    Up {
        child: tokio::process::Child,
        pid: u32,
        log: PathBuf,
        o_nodes: u8,
    },
    Spawned(Spawned),
}

pub struct Cluster {
    runner: Runner,
    pub dir: PathBuf,
    pub port: u16,
    /// Read once the cluster is up (`up` writes the node files).
    pub nodes: Vec<Node>,
    /// The local DCS's directory, when the DCS is local.
    pub local_dcs: Option<PathBuf>,
    /// Synchronous mode.
    sync: bool,
}

pub struct StartOptions<'a> {
    pub pgwarden: &'a Path,
    pub root: &'a Path,
    pub nodes: u8,
    pub dcs: Option<String>,
    pub sync: bool,
    /// Start the nodes in these namespaces instead of running `up`.
    pub net: Option<&'a Net>,
}

/// A free TCP port on the loopback (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(l.local_addr()?.port())
}

/// `n` consecutive free ports from a start that differs from run to run:
/// `up`'s default (free ports from 15432) would let two runs on one
/// machine take each other's ports while a node is down.
fn free_block(n: u16) -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    for i in 0..200u32 {
        let base = 20_000 + ((seed.wrapping_add(i * 7919)) % 20_000) as u16;
        let held: Vec<_> = (0..n)
            .map_while(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).ok())
            .collect();
        if held.len() == n as usize {
            return Ok(base);
        }
    }
    anyhow::bail!("no {n} consecutive free ports between 20000 and 40000")
}

fn up_command(o: &StartOptions, dir: &Path, port: u16, pg_port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(o.pgwarden);
    c.arg("up").arg("--dir").arg(dir).args([
        "--nodes",
        &o.nodes.to_string(),
        "--port",
        &port.to_string(),
        "--pg-port",
        &pg_port.to_string(),
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
async fn prepare_sync(
    o: &StartOptions<'_>,
    dir: &Path,
    port: u16,
    pg_port: u16,
) -> anyhow::Result<()> {
    let hold = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("cannot hold port {port}"))?;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        up_command(o, dir, port, pg_port).output(),
    )
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
    /// Starts the cluster's processes; [`Cluster::wait_up`] waits for it.
    /// Whatever happens next, [`Cluster::stop`] stops what was started.
    pub async fn launch(o: StartOptions<'_>) -> anyhow::Result<Cluster> {
        let port = free_port()?;
        if let Some(net) = o.net {
            let dir = o.root.join("net");
            let dcs = o.dcs.as_deref().context("--net netns needs --dcs etcd")?;
            let files = spawned::write_files(&dir, net, o.nodes.into(), dcs, port, o.sync)?;
            let nodes = files
                .nodes
                .iter()
                .map(|f| read_node(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let data_dirs = nodes.iter().map(|n| n.data_dir.clone()).collect();
            let s = Spawned::start(o.pgwarden, &dir, net, &files, data_dirs)?;
            return Ok(Cluster {
                runner: Runner::Spawned(s),
                dir,
                port,
                nodes,
                local_dcs: None,
                sync: o.sync,
            });
        }
        let dir = o.root.join("up");
        let pg_port = free_block(o.nodes.into())?;
        if o.sync {
            prepare_sync(&o, &dir, port, pg_port).await?;
        }
        let log_path = o.root.join("up.log");
        let log = std::fs::File::create(&log_path)?;
        let child = up_command(&o, &dir, port, pg_port)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", o.pgwarden.display()))?;
        let pid = child.id().context("`pgwarden up` exited at once")?;
        Ok(Cluster {
            runner: Runner::Up {
                child,
                pid,
                log: log_path,
                o_nodes: o.nodes,
            },
            dir,
            port,
            nodes: Vec::new(),
            local_dcs: None,
            sync: o.sync,
        })
    }

    /// Waits until the cluster is up: `up` says so, or (netns) it has
    /// converged and the proxy accepts connections.
    pub async fn wait_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + UP_WITHIN;
        let n = match &mut self.runner {
            Runner::Up {
                child,
                log,
                o_nodes,
                ..
            } => {
                loop {
                    let text = std::fs::read_to_string(&*log).unwrap_or_default();
                    if text.contains("pgwarden is up") {
                        break;
                    }
                    if let Some(st) = child.try_wait()? {
                        bail!(
                            "`pgwarden up` exited ({st}) before it was up:\n{}",
                            tail(&text, 15)
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "`pgwarden up` was not up within {} s:\n{}",
                            UP_WITHIN.as_secs(),
                            tail(&text, 15)
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                *o_nodes
            }
            Runner::Spawned(_) => 0,
        };
        if n > 0 {
            self.nodes = (0..n)
                .map(|i| read_node(&self.dir.join(format!("node{i}.toml"))))
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.local_dcs = local_dcs(&self.dir.join("node0.toml"));
            return Ok(());
        }
        let mut why = String::new();
        while Instant::now() < deadline {
            if let Runner::Spawned(s) = &mut self.runner {
                if let Some(st) = s.proxy_exited() {
                    bail!(
                        "the proxy exited ({st}):\n{}",
                        tail(&read_log(&self.dir.join("logs").join("proxy.log")), 10)
                    );
                }
            }
            match self.converged().await {
                Ok(_) => {
                    let proxy = tokio::net::TcpStream::connect(("127.0.0.1", self.port));
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), proxy).await {
                        return Ok(());
                    }
                    why = format!("the proxy does not accept connections on {}", self.port);
                }
                Err(w) => why = w,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let logs: Vec<String> = (0..self.nodes.len())
            .flat_map(|i| self.log_tail(i, 5))
            .collect();
        bail!(
            "the cluster was not up within {} s ({why}); agents' logs:\n{}",
            UP_WITHIN.as_secs(),
            logs.join("\n")
        )
    }

    /// The last `n` lines of node `i`'s agent log, without colour codes.
    pub fn log_tail(&self, i: usize, n: usize) -> Vec<String> {
        let text = read_log(&self.dir.join("logs").join(format!("agent{i}.log")));
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// The agent of node `i`: the child of `up` started with its node
    /// file, or the one this suite started.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        match &self.runner {
            Runner::Up { pid, .. } => {
                // `up` passes its canonicalised directory: matched by file name.
                let file = format!("/node{i}.toml");
                procs::children(*pid).into_iter().find(|p| {
                    procs::cmdline(*p).iter().any(|a| a.ends_with(&file)) && procs::alive(*p)
                })
            }
            Runner::Spawned(s) => s.agent_pid(i),
        }
    }

    pub fn postmaster_pid(&self, i: usize) -> Option<u32> {
        procs::postmaster(&self.nodes[i].data_dir)
    }

    /// Every node's answer to "are you a primary?", asked at once.
    pub async fn roles(&self, timeout: Duration) -> Vec<Result<bool, String>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let (to, dir) = (n.pg.clone(), n.data_dir.clone());
            set.spawn(async move { (i, is_primary(&to, timeout, &dir).await) });
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
    /// from it (in synchronous mode, one of them synchronous: until then no
    /// standby may be promoted), its agent answering that it is the DCS
    /// leader, and every other agent answering healthy. Returns the
    /// primary, or what is not yet so.
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
        let streaming = match Conn::connect(&self.nodes[pi].pg, t).await {
            Ok(c) => c
                .query(
                    "SELECT application_name, sync_state FROM pg_stat_replication \
                     WHERE state = 'streaming'",
                )
                .await
                .map_err(|e| format!("{p}: pg_stat_replication: {e:#}"))?,
            Err(e) => return Err(format!("{p}: {e:#}")),
        };
        let synchronous = streaming
            .iter()
            .any(|r| r.get(1).cloned().flatten().as_deref() == Some("sync"));
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
        if self.sync && !synchronous {
            return Err(format!("{p} has no synchronous standby yet"));
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
    /// postmasters it left. Waits at most `within` (at most 90 s). With
    /// `--net netns`, stops what this suite started ([`Spawned::stop`]).
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let within = within.min(STOP_WITHIN);
        let leftovers: Vec<u32> = (0..self.nodes.len())
            .flat_map(|i| [self.agent_pid(i), self.postmaster_pid(i)])
            .flatten()
            .collect();
        let (up, up_pid) = match &mut self.runner {
            Runner::Spawned(s) => return s.stop(within).await,
            Runner::Up { child, pid, .. } => (child, *pid),
        };
        if matches!(up.try_wait(), Ok(None)) {
            procs::signal(up_pid, Signal::Int)?;
        }
        match tokio::time::timeout(within, up.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = up.start_kill();
                let _ = up.wait().await;
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

/// A log's text without colour codes.
fn read_log(path: &Path) -> String {
    strip_ansi(&String::from_utf8_lossy(
        &std::fs::read(path).unwrap_or_default(),
    ))
}

/// The store of a `local://` DCS named in a node file: the directory of
/// its cluster under the URL's path (as `dcs::open` opens it).
fn local_dcs(node_file: &Path) -> Option<PathBuf> {
    let v: toml::Value = std::fs::read_to_string(node_file).ok()?.parse().ok()?;
    let a = v.get("agent")?;
    let dcs = a.get("dcs")?.as_str()?;
    let cluster = a
        .get("cluster")
        .and_then(|c| c.as_str())
        .unwrap_or("pgwarden");
    dcs.strip_prefix("local://")
        .map(|d| Path::new(d).join(cluster))
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
    let data_dir = PathBuf::from(s("data_dir")?);
    let run_dir = a
        .get("run_dir")
        .and_then(|x| x.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.with_extension("run"));
    Ok(Node {
        name: s("name")?.to_owned(),
        pg: Target {
            host: a
                .get("host")
                .and_then(|x| x.as_str())
                .unwrap_or("127.0.0.1")
                .to_owned(),
            port: pg_port,
        },
        socket: Target {
            host: run_dir.to_string_lossy().into_owned(),
            port: pg_port,
        },
        data_dir,
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
