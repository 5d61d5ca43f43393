//! One client connection: the login phase ([`login`]) and then either the
//! admin console or the pooled session ([`session`]).
mod commit_lsn;
mod login;
mod routing;
mod session;
mod task;
mod timeouts;

pub use login::handle;
