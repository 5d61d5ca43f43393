//! Network namespaces for the virtual IP tests: one bridge in the root
//! namespace (which has the .1 address, where etcd listens, and .2,
//! where PostgreSQL listens), and one namespace per host with an `eth0`
//! on the bridge at .11, .12, ... Names carry the test process's PID
//! (`pgwv<pid>`); everything is removed on drop, and what a run that is
//! no longer running left behind is removed at the start.
use std::process::Command;

pub struct Net {
    tag: String,
    pub octet: u8,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new("timeout")
        .arg("10")
        .arg("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn must(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Removes namespaces and bridges of runs whose process is gone.
fn remove_stale() {
    let alive = |tag: &str| {
        tag.strip_prefix("pgwv")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    };
    for l in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if name.starts_with("pgwv") && !alive(name) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for l in ip(&["-o", "link", "show", "type", "bridge"])
        .unwrap_or_default()
        .lines()
    {
        let name = l.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with("pgwv") && !alive(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl Net {
    /// Creates the bridge and one namespace per host name.
    pub fn create(hosts: &[&str]) -> Net {
        assert!(
            unsafe_free_is_root(),
            "the virtual IP tests need root (network namespaces, netlink)"
        );
        remove_stale();
        let routes = must(&["-o", "route", "show"]);
        let octet = (1..=250u8)
            .find(|o| !routes.contains(&format!("10.231.{o}.")))
            .expect("a free 10.231.x.0/24 network");
        let net = Net {
            tag: format!("pgwv{}", std::process::id()),
            octet,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let br = net.bridge();
        must(&["link", "add", &br, "type", "bridge"]);
        must(&["addr", "add", &format!("{}/24", net.root_ip()), "dev", &br]);
        must(&["addr", "add", &format!("{}/24", net.db_ip()), "dev", &br]);
        must(&["link", "set", &br, "up"]);
        for (i, h) in hosts.iter().enumerate() {
            let ns = net.ns(h);
            let outer = format!("{}v{i}", net.tag);
            must(&["netns", "add", &ns]);
            must(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["link", "set", &outer, "master", &br, "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip_of(h)),
                "dev",
                "eth0",
            ]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    /// The namespace of host `h`.
    pub fn ns(&self, h: &str) -> String {
        format!("{}{h}", self.tag)
    }

    /// The root namespace's address on the bridge (etcd).
    pub fn root_ip(&self) -> String {
        format!("10.231.{}.1", self.octet)
    }

    /// The second root address (PostgreSQL).
    pub fn db_ip(&self) -> String {
        format!("10.231.{}.2", self.octet)
    }

    pub fn ip_of(&self, h: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|x| x == h)
            .expect("a host of this net");
        format!("10.231.{}.{}", self.octet, 11 + i)
    }

    /// A command run inside host `h`'s namespace.
    pub fn command(&self, h: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(h), program]);
        c
    }

    /// Whether `addr` is on host `h`'s eth0.
    pub fn has_addr(&self, h: &str, addr: &str) -> bool {
        ip(&["-n", &self.ns(h), "-o", "addr", "show", "dev", "eth0"])
            .is_ok_and(|o| o.contains(&format!("inet {addr}/")))
    }

    /// eth0 of host `h`: its index and MAC.
    pub fn link(&self, h: &str) -> (u32, [u8; 6]) {
        let o = must(&["-n", &self.ns(h), "-o", "link", "show", "dev", "eth0"]);
        let index = o.split(':').next().unwrap().trim().parse().unwrap();
        let mac = o
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap();
        let mut m = [0u8; 6];
        for (i, b) in mac.split(':').enumerate() {
            m[i] = u8::from_str_radix(b, 16).unwrap();
        }
        (index, m)
    }

    /// Cuts host `h` from `addr` (a blackhole route in its namespace).
    pub fn cut(&self, h: &str, addr: &str) {
        must(&[
            "-n",
            &self.ns(h),
            "route",
            "add",
            "blackhole",
            &format!("{addr}/32"),
        ]);
    }

    pub fn heal(&self, h: &str, addr: &str) {
        must(&[
            "-n",
            &self.ns(h),
            "route",
            "del",
            "blackhole",
            &format!("{addr}/32"),
        ]);
    }
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
