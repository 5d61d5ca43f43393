//! The network of `--net netns`: one network namespace per node, each
//! with two veth links, one on the "dcs" bridge (where etcd listens,
//! 10.213.1.0/24) and one on the "data" bridge (PostgreSQL, replication,
//! the proxy, the agents' APIs, 10.213.2.0/24). The bridges live in the
//! root namespace, which has the .1 address of each; nothing routes
//! between the two networks. A run that finds these networks in use (by
//! another run) takes the next pair, 10.213.3-4, and so on. A partition sets the root-side end of a
//! node's link down: its packets are dropped silently, as a cut cable
//! does.
//!
//! Names carry this run's PID (`pgwc<pid>...`, at most 15 characters):
//! bridges `pgwc<pid>d` and `pgwc<pid>p`, namespaces `pgwc<pid>n<i>`,
//! root-side veth ends `pgwc<pid>n<i>d` and `pgwc<pid>n<i>p`. Everything
//! is removed at the end (also when dropped); names of a run that is no
//! longer running are removed at the start of the next one.
use anyhow::{bail, Context};

use crate::procs;
use crate::sh::{self, QUICK};

const PREFIX: &str = "pgwc";
/// The first two octets of every network of ours.
const NET16: &str = "10.213";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Dcs,
    Data,
}

impl Side {
    fn letter(self) -> char {
        match self {
            Side::Dcs => 'd',
            Side::Data => 'p',
        }
    }
    /// The interface's name inside a node's namespace.
    fn inner(self) -> &'static str {
        match self {
            Side::Dcs => "dcs0",
            Side::Data => "data0",
        }
    }
}

pub struct Net {
    tag: String,
    nodes: usize,
    /// The third octet of the dcs network; the data network's is next.
    octet: u8,
    /// Removed already (or never created).
    gone: bool,
}

/// ip with a deadline.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh::run("ip", args, QUICK)
}

impl Net {
    /// Creates the bridges and `nodes` namespaces; on an error, removes
    /// what it created.
    pub fn create(nodes: usize) -> anyhow::Result<Net> {
        anyhow::ensure!(nodes < 200, "too many nodes for the netns network");
        let routes = ip(&["-o", "route", "show"])?;
        let used = |o: u8| {
            routes
                .lines()
                .any(|l| l.starts_with(&format!("{NET16}.{o}.")))
        };
        let Some(octet) = (1..=253u8).step_by(2).find(|o| !used(*o) && !used(o + 1)) else {
            bail!("every {NET16}.x.0/24 network is in use on this machine; --net netns needs two");
        };
        let mut net = Net {
            tag: format!("{PREFIX}{}", std::process::id()),
            nodes,
            octet,
            gone: false,
        };
        if let Err(e) = net.build() {
            net.destroy();
            return Err(e);
        }
        Ok(net)
    }

    fn build(&self) -> anyhow::Result<()> {
        for side in [Side::Dcs, Side::Data] {
            let br = self.bridge(side);
            ip(&["link", "add", "name", &br, "type", "bridge"])?;
            ip(&[
                "addr",
                "add",
                &format!("{}.1/24", self.net(side)),
                "dev",
                &br,
            ])?;
            ip(&["link", "set", &br, "up"])?;
        }
        for i in 0..self.nodes {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for side in [Side::Dcs, Side::Data] {
                let (outer, inner) = (self.veth(i, side), side.inner());
                ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", inner, "netns", &ns,
                ])?;
                ip(&["link", "set", &outer, "master", &self.bridge(side), "up"])?;
                let addr = format!("{}.{}/24", self.net(side), 10 + i);
                ip(&["-n", &ns, "addr", "add", &addr, "dev", inner])?;
                ip(&["-n", &ns, "link", "set", inner, "up"])?;
            }
        }
        Ok(())
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn bridge(&self, side: Side) -> String {
        format!("{}{}", self.tag, side.letter())
    }

    /// The root-side end of node `i`'s link on `side`.
    pub fn veth(&self, i: usize, side: Side) -> String {
        format!("{}n{i}{}", self.tag, side.letter())
    }

    /// A network's first three octets.
    fn net(&self, side: Side) -> String {
        match side {
            Side::Dcs => format!("{NET16}.{}", self.octet),
            Side::Data => format!("{NET16}.{}", self.octet + 1),
        }
    }

    /// The data network, as a CIDR (for pg_hba).
    pub fn data_cidr(&self) -> String {
        format!("{}.0/24", self.net(Side::Data))
    }

    /// The root namespace's address on the dcs network: etcd listens here.
    pub fn dcs_host(&self) -> String {
        format!("{}.1", self.net(Side::Dcs))
    }

    /// Node `i`'s address on the data network: what it listens on and
    /// advertises.
    pub fn data_ip(&self, i: usize) -> String {
        format!("{}.{}", self.net(Side::Data), 10 + i)
    }

    /// Removes the namespaces and the bridges (deleting a veth end removes
    /// its peer). Best effort; safe to call twice.
    pub fn destroy(&mut self) {
        if self.gone {
            return;
        }
        self.gone = true;
        for i in 0..self.nodes {
            for side in [Side::Dcs, Side::Data] {
                let _ = ip(&["link", "del", &self.veth(i, side)]);
            }
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        for side in [Side::Dcs, Side::Data] {
            let _ = ip(&["link", "del", &self.bridge(side)]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Sets a link (a root-side veth end) up or down.
pub fn set_link(name: &str, up: bool) -> anyhow::Result<()> {
    ip(&["link", "set", name, if up { "up" } else { "down" }])
        .with_context(|| format!("cannot set {name} {}", if up { "up" } else { "down" }))?;
    Ok(())
}

/// The PID in a name of ours (`pgwc<pid>...`).
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes links and namespaces named by a run that no longer runs;
/// returns what was removed.
pub fn clean_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| owner(name).is_some_and(|p| !procs::is_chaos_run(p));
    let names = |out: String, sep: char| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.split(sep).nth(if sep == ':' { 1 } else { 0 }))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .collect()
    };
    // Veth ends first (their peers in the namespaces go with them), then
    // bridges: after the PID, a veth end's name goes on with 'n'.
    let links = names(ip(&["-o", "link", "show"]).unwrap_or_default(), ':');
    let is_veth = |n: &str| {
        n[PREFIX.len()..]
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .starts_with('n')
    };
    let (veths, bridges): (Vec<&String>, Vec<&String>) =
        links.iter().filter(|n| stale(n)).partition(|n| is_veth(n));
    for l in veths.into_iter().chain(bridges) {
        if ip(&["link", "del", l]).is_ok() {
            removed.push(format!("link {l}"));
        }
    }
    for ns in names(ip(&["netns", "list"]).unwrap_or_default(), ' ') {
        if stale(&ns) && ip(&["netns", "del", &ns]).is_ok() {
            removed.push(format!("netns {ns}"));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_carry_the_owner() {
        let n = Net {
            tag: format!("{PREFIX}4194304"),
            nodes: 9,
            octet: 3,
            gone: true,
        };
        for name in [n.veth(8, Side::Dcs), n.ns(8), n.bridge(Side::Data)] {
            assert!(name.len() <= 15, "{name}");
            assert_eq!(owner(&name), Some(4194304));
        }
        assert_eq!(owner("pgwcx"), None);
        assert_eq!(owner("eth0"), None);
        assert_eq!(n.data_ip(2), "10.213.4.12");
        assert_eq!(n.dcs_host(), "10.213.3.1");
        assert_eq!(n.data_cidr(), "10.213.4.0/24");
    }
}
