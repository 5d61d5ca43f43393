//! ARP frames: the gratuitous ARP that tells a network segment where the
//! virtual IP now lives, and a probe that asks who has an address (the
//! tests check from a client host that only one proxy answers).
use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::sys::PacketSocket;

pub type Mac = [u8; 6];
const BROADCAST: Mac = [0xff; 6];
const FRAME_LEN: usize = 42;

/// An Ethernet frame carrying one ARP message.
fn frame(
    op: u16,
    dst: Mac,
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target_mac: Mac,
    target_ip: Ipv4Addr,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender_ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&target_ip.octets());
    f
}

/// A gratuitous ARP: a broadcast request for our own address, with our
/// MAC as the sender (RFC 5227's announcement), so neighbours update
/// their caches at once.
pub fn announcement(mac: Mac, ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    frame(1, BROADCAST, mac, ip, [0; 6], ip)
}

/// A broadcast request: who has `target`?
pub fn request(mac: Mac, ip: Ipv4Addr, target: Ipv4Addr) -> [u8; FRAME_LEN] {
    frame(1, BROADCAST, mac, ip, [0; 6], target)
}

/// The MAC that says it has `ip`, if `f` is an ARP reply from it.
pub fn reply_from(f: &[u8], ip: Ipv4Addr) -> Option<Mac> {
    if f.len() < FRAME_LEN || f[12..14] != [0x08, 0x06] || f[20..22] != [0, 2] {
        return None;
    }
    if f[28..32] != ip.octets() {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&f[22..28]);
    Some(m)
}

/// Sends `count` gratuitous ARPs for `ip` on interface `ifindex`.
pub fn announce(ifindex: u32, mac: Mac, ip: Ipv4Addr, count: usize) -> io::Result<()> {
    let s = PacketSocket::open(ifindex, Duration::from_millis(10))?;
    let f = announcement(mac, ip);
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        s.send(&f, BROADCAST)?;
    }
    Ok(())
}

/// Asks who has `target` (from `mac`/`ip` on `ifindex`) and collects the
/// MACs that answer within `wait`.
pub fn probe(
    ifindex: u32,
    mac: Mac,
    ip: Ipv4Addr,
    target: Ipv4Addr,
    wait: Duration,
) -> io::Result<BTreeSet<Mac>> {
    let s = PacketSocket::open(ifindex, Duration::from_millis(20))?;
    s.send(&request(mac, ip, target), BROADCAST)?;
    let end = Instant::now() + wait;
    let mut seen = BTreeSet::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Some(n) = s.recv(&mut buf)? {
            if let Some(m) = reply_from(&buf[..n], target) {
                seen.insert(m);
            }
        }
    }
    Ok(seen)
}

pub fn mac_string(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [2, 0, 0, 0, 0, 1];

    #[test]
    fn an_announcement_names_the_address_as_sender_and_target() {
        let ip = Ipv4Addr::new(10, 9, 0, 100);
        let f = announcement(MAC, ip);
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &ip.octets());
        assert_eq!(&f[38..42], &ip.octets());
    }

    #[test]
    fn replies_are_recognized_by_sender_address() {
        let ip = Ipv4Addr::new(10, 9, 0, 100);
        let reply = frame(2, [9; 6], MAC, ip, [9; 6], Ipv4Addr::new(10, 9, 0, 9));
        assert_eq!(reply_from(&reply, ip), Some(MAC));
        assert_eq!(reply_from(&reply, Ipv4Addr::new(10, 9, 0, 101)), None);
        assert_eq!(
            reply_from(&announcement(MAC, ip), ip),
            None,
            "a request is not a reply"
        );
        assert_eq!(
            reply_from(&reply[..20], ip),
            None,
            "short frames are ignored"
        );
    }
}
