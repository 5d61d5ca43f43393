//! The address itself, through netlink (rtnetlink): find the interface,
//! add the address, remove it, see whether it is there. Every call has a
//! deadline. Needs CAP_NET_ADMIN.
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::Handle;

use crate::arp::Mac;

const DEADLINE: Duration = Duration::from_secs(2);

pub struct Netlink {
    handle: Handle,
}

/// An interface: its index and hardware address.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub index: u32,
    pub mac: Mac,
}

async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer from the kernel in {DEADLINE:?}")),
    }
}

impl Netlink {
    /// Opens a netlink connection (its task runs on the current runtime).
    pub fn open() -> Result<Netlink, String> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("cannot open netlink: {e}"))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Link, String> {
        let msg = within(&format!("interface {name}"), async {
            self.handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await
        })
        .await?
        .ok_or_else(|| format!("no interface {name}"))?;
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(b);
                    Some(m)
                }
                _ => None,
            })
            .ok_or_else(|| format!("interface {name} has no Ethernet address"))?;
        Ok(Link {
            index: msg.header.index,
            mac,
        })
    }

    /// Adds `ip/prefix` to the interface (no error if it is there).
    pub async fn add(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), String> {
        within(
            &format!("adding {ip}/{prefix}"),
            self.handle
                .address()
                .add(index, IpAddr::V4(ip), prefix)
                .replace()
                .execute(),
        )
        .await
    }

    /// The interface's address entries for `ip`.
    async fn find(&self, index: u32, ip: Ipv4Addr) -> Result<Vec<AddressMessage>, String> {
        let found = within(&format!("looking for {ip}"), async {
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(IpAddr::V4(ip))
                .execute()
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        // the kernel may ignore the filters: keep only entries for `ip`
        Ok(found
            .into_iter()
            .filter(|m| {
                m.header.index == index
                    && m.attributes.iter().any(|a| {
                        matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
                    })
            })
            .collect())
    }

    /// Whether `ip` is on the interface.
    pub async fn has(&self, index: u32, ip: Ipv4Addr) -> Result<bool, String> {
        Ok(!self.find(index, ip).await?.is_empty())
    }

    /// Removes `ip` from the interface (no error if it is not there).
    pub async fn remove(&self, index: u32, ip: Ipv4Addr) -> Result<(), String> {
        let found = self.find(index, ip).await?;
        for m in found {
            within(
                &format!("removing {ip}"),
                self.handle.address().del(m).execute(),
            )
            .await?;
        }
        Ok(())
    }
}
