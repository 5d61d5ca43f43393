//! What the HA loop needs of its PostgreSQL ([`NodeOps`]) and of its fence
//! ([`Fencing`]), as traits: the real [`Node`] and [`Fence`] in the agent,
//! fakes in the loop's timing tests (slow promotion, slow or failing DCS).
//! The DCS is already behind [`dcs::Dcs`].
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::fence::Fence;
use crate::node::{Node, NodeError, Status};

pub trait NodeOps: Send + 'static {
    fn has_data(&self) -> bool;
    fn is_running(&self) -> bool;
    fn is_standby_dir(&self) -> bool;
    /// The postmaster's PID, when it runs.
    fn postmaster(&self) -> Option<u32>;
    /// The postmaster exited without the agent asking.
    fn crashed(&self) -> bool;
    /// Woken when the postmaster exits.
    fn exited(&self) -> Arc<Notify>;
    /// pg_controldata's "Database cluster state".
    fn cluster_state(&self) -> impl Future<Output = Option<String>> + Send;
    fn checkpoint_timeline(&self) -> impl Future<Output = Option<u32>> + Send;
    /// Where the last checkpoint record starts (after a clean shutdown,
    /// the end of the WAL).
    fn checkpoint_lsn(&self) -> impl Future<Output = Option<u64>> + Send;
    /// The agent's settings file; true when it changed.
    fn write_conf(
        &self,
        primary_conninfo: Option<&str>,
        sync_names: Option<&str>,
        parameters: &BTreeMap<String, String>,
    ) -> Result<bool, NodeError>;
    fn conninfo(&self, host: &str, port: u16) -> String;
    fn set_standby(&self, on: bool) -> Result<(), NodeError>;
    fn initdb(&self) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn wipe(&self) -> Result<(), NodeError>;
    fn clone_from(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn start(&mut self, timeout: Duration) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn stop(&mut self, mode: &str) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// SIGKILL to the postmaster and its children; how many were signalled.
    fn kill(&mut self) -> usize;
    fn execute(&mut self, sql: &str) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn status(&mut self) -> impl Future<Output = Result<Status, NodeError>> + Send;
    fn reload(&mut self) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn replication(
        &mut self,
    ) -> impl Future<Output = Result<Vec<ha::quorum::Streaming>, NodeError>> + Send;
    fn ensure_slots(
        &mut self,
        members: &[String],
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// Other client sessions with a transaction open.
    fn open_transactions(&mut self) -> impl Future<Output = Result<u64, NodeError>> + Send;
    fn request_promotion(&mut self) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// Owns what it needs: the lease is renewed while it runs.
    fn until_promoted(
        &self,
        limit: Duration,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static;
    /// Owns what it needs: the lease is renewed while it runs.
    fn checkpoint(&self) -> impl Future<Output = ()> + Send + 'static;
    /// (in recovery, checkpoint timeline) of the leader, after a checkpoint.
    fn checkpoint_on(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(bool, u32), NodeError>> + Send;
    fn recover_single_user(&self) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn rewind(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<String, NodeError>> + Send;
}

/// Stops PostgreSQL when the lease is not proved in time.
pub trait Fencing: Send + 'static {
    /// Stop postmaster `pid` unless armed again within `valid` of
    /// `sent_ago` ago.
    fn arm(&self, pid: u32, valid: Duration, sent_ago: Duration) -> std::io::Result<()>;
    fn disarm(&self);
}

impl Fencing for Fence {
    fn arm(&self, pid: u32, valid: Duration, sent_ago: Duration) -> std::io::Result<()> {
        Fence::arm(self, pid, valid, sent_ago)
    }
    fn disarm(&self) {
        Fence::disarm(self)
    }
}

impl NodeOps for Node {
    fn has_data(&self) -> bool {
        Node::has_data(self)
    }
    fn is_running(&self) -> bool {
        Node::is_running(self)
    }
    fn is_standby_dir(&self) -> bool {
        Node::is_standby_dir(self)
    }
    fn postmaster(&self) -> Option<u32> {
        Node::postmaster(self)
    }
    fn crashed(&self) -> bool {
        self.crashed.load(std::sync::atomic::Ordering::Acquire)
    }
    fn exited(&self) -> Arc<Notify> {
        self.exited.clone()
    }
    fn cluster_state(&self) -> impl Future<Output = Option<String>> + Send {
        Node::cluster_state(self)
    }
    fn checkpoint_timeline(&self) -> impl Future<Output = Option<u32>> + Send {
        Node::checkpoint_timeline(self)
    }
    fn checkpoint_lsn(&self) -> impl Future<Output = Option<u64>> + Send {
        Node::checkpoint_lsn(self)
    }
    fn write_conf(
        &self,
        primary_conninfo: Option<&str>,
        sync_names: Option<&str>,
        parameters: &BTreeMap<String, String>,
    ) -> Result<bool, NodeError> {
        Node::write_conf(self, primary_conninfo, sync_names, parameters)
    }
    fn conninfo(&self, host: &str, port: u16) -> String {
        Node::conninfo(self, host, port)
    }
    fn set_standby(&self, on: bool) -> Result<(), NodeError> {
        Node::set_standby(self, on)
    }
    fn initdb(&self) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::initdb(self)
    }
    fn wipe(&self) -> Result<(), NodeError> {
        Node::wipe(self)
    }
    fn clone_from(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::clone_from(self, host, port)
    }
    fn start(&mut self, timeout: Duration) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::start(self, timeout)
    }
    fn stop(&mut self, mode: &str) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::stop(self, mode)
    }
    fn kill(&mut self) -> usize {
        Node::kill(self)
    }
    fn execute(&mut self, sql: &str) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::execute(self, sql)
    }
    fn status(&mut self) -> impl Future<Output = Result<Status, NodeError>> + Send {
        Node::status(self)
    }
    fn reload(&mut self) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::reload(self)
    }
    fn replication(
        &mut self,
    ) -> impl Future<Output = Result<Vec<ha::quorum::Streaming>, NodeError>> + Send {
        Node::replication(self)
    }
    fn ensure_slots(
        &mut self,
        members: &[String],
    ) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::ensure_slots(self, members)
    }
    fn request_promotion(&mut self) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::request_promotion(self)
    }
    fn until_promoted(
        &self,
        limit: Duration,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        Node::until_promoted(self, limit)
    }
    fn checkpoint(&self) -> impl Future<Output = ()> + Send + 'static {
        Node::checkpoint(self)
    }
    fn open_transactions(&mut self) -> impl Future<Output = Result<u64, NodeError>> + Send {
        Node::open_transactions(self)
    }
    fn checkpoint_on(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(bool, u32), NodeError>> + Send {
        Node::checkpoint_on(self, host, port)
    }
    fn recover_single_user(&self) -> impl Future<Output = Result<(), NodeError>> + Send {
        Node::recover_single_user(self)
    }
    fn rewind(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<String, NodeError>> + Send {
        Node::rewind(self, host, port)
    }
}
