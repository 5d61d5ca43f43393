//! `[proxy.vip]`: the virtual IP address the proxies' watchdog moves to
//! whichever proxy holds its lease in the DCS, and `[proxy] name`.
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::{parse_duration, Invalid};

/// The virtual IP: one address that clients connect to, held by one proxy
/// at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The network interface the address is added to.
    pub interface: String,
    /// The lease's time to live: a holder that stops renewing loses the
    /// address within it (and drops it itself before it expires).
    pub ttl: Duration,
    /// Run (with `sh -c`) to bring the address up instead of netlink and
    /// ARP from the process itself, for setups without CAP_NET_ADMIN.
    pub up_command: Option<String>,
    /// Run to take the address down when `up_command` is used.
    pub down_command: Option<String>,
}

/// The shortest TTL: etcd grants no lease shorter than about 2 s.
pub const MIN_VIP_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVip {
    address: Spanned<String>,
    interface: Spanned<String>,
    ttl: Option<Spanned<String>>,
    up_command: Option<String>,
    down_command: Option<String>,
}

impl RawVip {
    pub(crate) fn validate(self) -> Result<Vip, Invalid> {
        let a = &self.address;
        let bad = || {
            Invalid::at(
                a.span(),
                format!(
                    "[proxy.vip] address {:?} is not an IPv4 address with a prefix, such as 10.0.0.100/24",
                    a.get_ref()
                ),
            )
        };
        let (ip, prefix) = a.get_ref().split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = ip.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        if !(1..=32).contains(&prefix) {
            return Err(bad());
        }
        let i = self.interface.get_ref();
        if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
            return Err(Invalid::at(
                self.interface.span(),
                format!("[proxy.vip] interface {i:?} is not a network interface name"),
            ));
        }
        let ttl = match &self.ttl {
            None => Duration::from_secs(5),
            Some(s) => {
                let d = parse_duration(s.get_ref()).map_err(|m| Invalid::at(s.span(), m))?;
                if d < MIN_VIP_TTL {
                    return Err(Invalid::at(
                        s.span(),
                        "[proxy.vip] ttl must be at least 2s (etcd grants no shorter lease)",
                    ));
                }
                d
            }
        };
        if self.up_command.is_some() != self.down_command.is_some() {
            return Err(Invalid::general(
                "[proxy.vip] up_command and down_command must be given together",
            ));
        }
        Ok(Vip {
            address,
            prefix,
            interface: i.clone(),
            ttl,
            up_command: self.up_command,
            down_command: self.down_command,
        })
    }
}

/// A proxy's name in the DCS: letters, digits, `-`, `_`, `.`.
pub(crate) fn valid_proxy_name(n: &Spanned<String>) -> Result<String, Invalid> {
    let s = n.get_ref();
    if s.is_empty()
        || s.len() > 128
        || s.starts_with('.')
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Invalid::at(
            n.span(),
            format!("[proxy] name {s:?} may hold only letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(s.clone())
}
