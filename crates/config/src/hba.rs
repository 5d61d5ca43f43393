//! Client access rules in the style of pg_hba.conf: connection type,
//! database, user, client address, method. The first matching rule decides.
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    /// TLS or not.
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Password,
    Md5,
    ScramSha256,
}

impl std::fmt::Display for HbaMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HbaMethod::Trust => "trust",
            HbaMethod::Reject => "reject",
            HbaMethod::Password => "password",
            HbaMethod::Md5 => "md5",
            HbaMethod::ScramSha256 => "scram-sha-256",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NameSet {
    All,
    /// `sameuser` in the database field: the database named as the user.
    SameUser,
    Names(Vec<String>),
}

impl NameSet {
    /// `field` is "database" or "user": the keywords differ.
    fn parse(s: &str, field: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(NameSet::All);
        }
        if field == "database" && s == "sameuser" {
            return Ok(NameSet::SameUser);
        }
        let mut names = Vec::new();
        for n in s.split(',') {
            // pg_hba.conf keywords the proxy cannot honour: an error, not
            // a rule that silently matches a literal name.
            let unsupported = match n {
                "samerole" | "samegroup" if field == "database" => {
                    Some("role membership (samerole)")
                }
                "replication" if field == "database" => {
                    Some("replication connections (the proxy does not take them)")
                }
                _ if n.starts_with('+') => Some("role membership (+role)"),
                _ if n.starts_with('@') => Some("name files (@file)"),
                _ => None,
            };
            if let Some(what) = unsupported {
                return Err(format!(
                    "{field} {n:?}: access rules of the proxy do not support {what}; list the names"
                ));
            }
            names.push(n.trim_matches('"').to_owned());
        }
        Ok(NameSet::Names(names))
    }
    fn matches(&self, name: &str, user: &str) -> bool {
        match self {
            NameSet::All => true,
            NameSet::SameUser => name == user,
            NameSet::Names(v) => v.iter().any(|n| n == name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    All,
    Net { addr: IpAddr, prefix: u8 },
}

impl Address {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Address::All);
        }
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address {ip:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("invalid CIDR mask {p:?}"))?,
            None => max,
        };
        Ok(Address::Net { addr, prefix })
    }

    fn matches(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self, ip) {
            (Address::All, _) => true,
            (
                Address::Net {
                    addr: IpAddr::V4(a),
                    prefix,
                },
                IpAddr::V4(b),
            ) => {
                let mask = if *prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                u32::from(*a) & mask == u32::from(b) & mask
            }
            (
                Address::Net {
                    addr: IpAddr::V6(a),
                    prefix,
                },
                IpAddr::V6(b),
            ) => {
                let mask = if *prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                u128::from(*a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// One access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    conn: ConnType,
    databases: NameSet,
    users: NameSet,
    address: Address,
    pub method: HbaMethod,
    /// The rule as written, for logs and SHOW CONFIG.
    pub text: String,
}

impl HbaRule {
    /// Parses a line such as `host all all 10.0.0.0/8 scram-sha-256`.
    pub fn parse(line: &str) -> Result<Self, String> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "access rule {line:?} must have 5 fields: type database user address method (e.g. \"host all all 127.0.0.1/32 scram-sha-256\")"
            ));
        }
        let conn = match f[0] {
            "host" => ConnType::Host,
            "hostssl" => ConnType::HostSsl,
            "hostnossl" => ConnType::HostNoSsl,
            t => {
                return Err(format!(
                    "unknown connection type {t:?} (use host, hostssl or hostnossl)"
                ))
            }
        };
        let method = match f[4] {
            "trust" => HbaMethod::Trust,
            "reject" => HbaMethod::Reject,
            "password" => HbaMethod::Password,
            "md5" => HbaMethod::Md5,
            "scram-sha-256" => HbaMethod::ScramSha256,
            m => {
                return Err(format!(
                    "unknown method {m:?} (use trust, reject, password, md5 or scram-sha-256)"
                ))
            }
        };
        Ok(HbaRule {
            conn,
            databases: NameSet::parse(f[1], "database")?,
            users: NameSet::parse(f[2], "user")?,
            address: Address::parse(f[3])?,
            method,
            text: f.join(" "),
        })
    }

    pub fn matches(&self, database: &str, user: &str, ip: IpAddr, tls: bool) -> bool {
        let conn_ok = match self.conn {
            ConnType::Host => true,
            ConnType::HostSsl => tls,
            ConnType::HostNoSsl => !tls,
        };
        conn_ok
            && self.databases.matches(database, user)
            && self.users.matches(user, user)
            && self.address.matches(ip)
    }
}

/// Rules in order; the first match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HbaRules(pub Vec<HbaRule>);

impl HbaRules {
    pub fn find(&self, database: &str, user: &str, ip: IpAddr, tls: bool) -> Option<&HbaRule> {
        self.0.iter().find(|r| r.matches(database, user, ip, tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &[&str]) -> HbaRules {
        HbaRules(lines.iter().map(|l| HbaRule::parse(l).unwrap()).collect())
    }

    #[test]
    fn first_match_wins() {
        let r = rules(&[
            "host all bad 0.0.0.0/0 reject",
            "hostssl app all 10.0.0.0/8 scram-sha-256",
            "host app,other alice 127.0.0.1 md5",
            "host all all ::1/128 trust",
            "host all all 127.0.0.0/8 password",
        ]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            r.find("x", "bad", lo, false).unwrap().method,
            HbaMethod::Reject
        );
        assert_eq!(
            r.find("app", "bob", "10.1.2.3".parse().unwrap(), true)
                .unwrap()
                .method,
            HbaMethod::ScramSha256
        );
        assert!(r
            .find("app", "bob", "10.1.2.3".parse().unwrap(), false)
            .is_none());
        assert_eq!(
            r.find("other", "alice", lo, false).unwrap().method,
            HbaMethod::Md5
        );
        assert_eq!(
            r.find("db", "alice", lo, false).unwrap().method,
            HbaMethod::Password
        );
        assert_eq!(
            r.find("db", "alice", "::1".parse().unwrap(), false)
                .unwrap()
                .method,
            HbaMethod::Trust
        );
        // IPv4-mapped IPv6 matches IPv4 rules
        assert_eq!(
            r.find("db", "u", "::ffff:127.0.0.9".parse().unwrap(), false)
                .unwrap()
                .method,
            HbaMethod::Password
        );
        assert!(r
            .find("db", "u", "192.168.0.1".parse().unwrap(), false)
            .is_none());
    }

    #[test]
    fn bad_rules() {
        assert!(HbaRule::parse("host all all").is_err());
        assert!(HbaRule::parse("local all all all trust").is_err());
        assert!(HbaRule::parse("host all all 1.2.3.4/33 trust").is_err());
        assert!(HbaRule::parse("host all all nothost trust").is_err());
        assert!(HbaRule::parse("host all all all kerberos").is_err());
        assert!(HbaRule::parse("host all all 0.0.0.0/0 trust").is_ok());
    }

    #[test]
    fn sameuser_matches_and_unsupported_keywords_are_errors() {
        let r = rules(&["host sameuser all all trust"]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(r.find("alice", "alice", ip, false).is_some());
        assert!(r.find("bob", "alice", ip, false).is_none());
        for bad in [
            "host samerole all all trust",
            "host all +admins all trust",
            "host @dbs all all trust",
            "host replication all all trust",
        ] {
            let e = HbaRule::parse(bad).unwrap_err();
            assert!(e.contains("do not support"), "{bad}: {e}");
        }
    }
}
