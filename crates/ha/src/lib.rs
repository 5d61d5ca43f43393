//! Pure HA decisions, in the manner of Patroni's `ha.py` but without I/O:
//! `decide(view, local, settings) -> Decision`. The agent's driver reads
//! the DCS and PostgreSQL, calls [`decide`], carries the action out and
//! publishes the member state. Every branch has a unit test.
#![forbid(unsafe_code)]

mod decide;
pub mod failsafe;
pub mod history;
mod member;
pub mod proxy;
pub mod quorum;
pub mod records;
pub mod status;
pub mod switchover;
pub mod sync;
pub mod time;

pub use decide::{decide, Action, Decision, Local, Pg, Settings, View};
pub use member::{ClusterConfig, Member, Role, SyncMode};
