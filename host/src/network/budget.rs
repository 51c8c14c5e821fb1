//! Limits of the whole process, shared by every node in it: the bytes of app frames
//! being read ([`ReadBudget`]) and the connections open or being opened, each of which
//! holds an open file ([`ConnectionBudget`]). A node alone in its process has them to
//! itself; the nodes of a cluster share one of each, so that 1,000 nodes cannot open
//! more files than the process may, nor hold 1,000 times the frames one node may.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, ListenFailure,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::codec::REQUEST_OVERHEAD;
use super::{NetworkSettings, ReadBudget, MIN_READ_BUDGET};

/// Open files kept out of the connection budget: the process's own (logs, sockets of
/// the admin, the runtime) and each node's listeners.
pub const RESERVED_FILES: u64 = 64;
/// Open files each node keeps for its listeners (a TCP and a QUIC one at most), out of
/// the connection budget.
pub const RESERVED_FILES_PER_NODE: u64 = 2;

/// Connections open or being opened by every node of the process, against a limit.
#[derive(Clone, Debug)]
pub struct ConnectionBudget {
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    limit: usize,
}

/// Why a connection was refused: the process's connections are at its budget.
#[derive(Debug, thiserror::Error)]
#[error(
    "the process has {open} connections open, its budget (from its open-files limit) is {limit}"
)]
pub struct BudgetSpent {
    open: usize,
    limit: usize,
}

impl ConnectionBudget {
    /// A budget of `limit` connections.
    pub fn new(limit: usize) -> ConnectionBudget {
        ConnectionBudget {
            open: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// The most connections the process may have.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections open or being opened now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Most connections open or being opened at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Counts one more connection, or refuses it when the budget is spent.
    fn take(&self) -> Result<(), BudgetSpent> {
        let before = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.limit).then_some(open + 1)
            })
            .map_err(|open| BudgetSpent {
                open,
                limit: self.limit,
            })?;
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        Ok(())
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The limits one process's nodes share.
#[derive(Clone, Debug)]
pub struct ProcessLimits {
    /// Bytes of app frames being read from peers, by every node.
    pub reads: ReadBudget,
    /// Connections of every node.
    pub connections: ConnectionBudget,
}

impl ProcessLimits {
    /// Limits for `nodes` nodes with `settings` in a process that may open `open_files`
    /// files: connections get what the reserve leaves, frames being read four of the
    /// largest frame (at least `MIN_READ_BUDGET`).
    pub fn new(settings: &NetworkSettings, nodes: usize, open_files: u64) -> ProcessLimits {
        let reserved = RESERVED_FILES + RESERVED_FILES_PER_NODE * nodes as u64;
        let connections = open_files.saturating_sub(reserved).max(1);
        let frame = settings.request_response.max_requests_size + REQUEST_OVERHEAD;
        ProcessLimits {
            reads: ReadBudget::new(MIN_READ_BUDGET.max(4 * frame)),
            connections: ConnectionBudget::new(usize::try_from(connections).unwrap_or(usize::MAX)),
        }
    }

    /// Limits for `nodes` nodes with `settings`, from this process's open-files limit.
    pub fn for_this_process(settings: &NetworkSettings, nodes: usize) -> ProcessLimits {
        let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        ProcessLimits::new(settings, nodes, open_files)
    }

    /// Open files a process holding `connections` connections for `nodes` nodes needs.
    pub fn files_needed(nodes: usize, connections: u64) -> u64 {
        RESERVED_FILES + RESERVED_FILES_PER_NODE * nodes as u64 + connections
    }
}

/// Raises this process's open-files limit to its hard limit; returns the new limit.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    use anyhow::Context as _;
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-files limit")
}

/// A node's gate on the process's connection budget: every connection it opens or
/// accepts counts from the moment it is pending until it closes or fails.
pub struct ConnectionGate {
    budget: ConnectionBudget,
    counted: HashSet<ConnectionId>,
}

impl ConnectionGate {
    /// A gate on `budget`.
    pub fn new(budget: ConnectionBudget) -> ConnectionGate {
        ConnectionGate {
            budget,
            counted: HashSet::new(),
        }
    }

    fn admit(&mut self, id: ConnectionId) -> Result<(), ConnectionDenied> {
        self.budget.take().map_err(ConnectionDenied::new)?;
        self.counted.insert(id);
        Ok(())
    }

    fn release(&mut self, id: ConnectionId) {
        if self.counted.remove(&id) {
            self.budget.give_back();
        }
    }
}

impl Drop for ConnectionGate {
    /// A node that stops gives back what its connections still held.
    fn drop(&mut self) {
        for _ in self.counted.drain() {
            self.budget.give_back();
        }
    }
}

impl NetworkBehaviour for ConnectionGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(id)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        _: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.admit(id)?;
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::DialFailure(DialFailure { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(gate: &mut ConnectionGate, n: usize) -> Result<ConnectionId, ConnectionDenied> {
        let id = ConnectionId::new_unchecked(n);
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        gate.handle_pending_inbound_connection(id, &addr, &addr)
            .map(|()| id)
    }

    #[test]
    fn nodes_share_the_budget_and_get_it_back_when_connections_end() {
        let budget = ConnectionBudget::new(3);
        let (mut a, mut b) = (
            ConnectionGate::new(budget.clone()),
            ConnectionGate::new(budget.clone()),
        );
        let first = inbound(&mut a, 1).unwrap();
        inbound(&mut b, 2).unwrap();
        let peer = PeerId::random();
        let dial = ConnectionId::new_unchecked(3);
        b.handle_pending_outbound_connection(dial, Some(peer), &[], Endpoint::Dialer)
            .unwrap();
        assert_eq!(budget.open(), 3);
        let refused = inbound(&mut a, 4).unwrap_err();
        let spent = refused
            .downcast::<BudgetSpent>()
            .expect("the budget's reason");
        assert!(
            spent
                .to_string()
                .contains("has 3 connections open, its budget"),
            "{spent}"
        );
        // A refused connection gives nothing back when it fails; a counted one does.
        a.release(ConnectionId::new_unchecked(4));
        assert_eq!(budget.open(), 3);
        a.release(first);
        a.release(first);
        assert_eq!(budget.open(), 2, "given back once");
        inbound(&mut a, 5).unwrap();
        drop(b);
        assert_eq!(
            budget.open(),
            1,
            "a stopped node gives back its connections"
        );
        assert_eq!(budget.peak(), 3);
    }

    #[test]
    fn the_open_files_limit_less_the_reserve_is_the_connection_budget() {
        let settings = NetworkSettings::default();
        let limits = ProcessLimits::new(&settings, 1000, 20_000);
        assert_eq!(limits.connections.limit(), 20_000 - 64 - 2_000);
        assert_eq!(ProcessLimits::files_needed(1000, 17_936), 20_000);
        assert_eq!(ProcessLimits::new(&settings, 3, 10).connections.limit(), 1);
        assert_eq!(limits.reads.limit(), MIN_READ_BUDGET);
    }
}
