//! The proxies' watchdog, in the manner of Pgpool-II's but on the DCS:
//! every proxy that follows a DCS registers itself there; with a virtual
//! IP configured (`[proxy.vip]`) the proxies compete for a lease of its
//! own (`proxy-vip`), and the holder's guard process brings the address
//! up (netlink, gratuitous ARP) and takes it down before the lease could
//! pass to another. The proxy's data path does not depend on this crate:
//! `pgwarden proxy` starts [`run::run`] beside it.
//!
//! - [`decide`]: the decisions, without I/O;
//! - [`run`]: the task in the proxy process (DCS, guard process);
//! - [`guard`]: the guard process that owns the address;
//! - [`net`], [`arp`], `sys`: netlink, ARP frames, the raw calls.

pub mod arp;
pub mod decide;
pub mod guard;
pub mod net;
pub mod run;
mod sys;

pub use sys::monotonic_ms;
