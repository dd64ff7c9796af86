//! What a running relay can tell about itself: its upstream, how far its WAL is written and
//! durable, its downstream streams and slots.

use std::sync::Arc;

use tokio::sync::watch;

use crate::hub::HubStats;
use crate::metrics::Counters;
use crate::proto::syncrep::SyncAck;
use crate::service::downstream::{ServerContext, StreamStatus};
use crate::service::writer::Positions;
use crate::slots::SlotInfo;
use crate::types::{Lsn, TimelineId, UpstreamInfo};

/// A snapshot of a relay's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// The upstream's identity, once known.
    pub upstream: Option<UpstreamInfo>,
    /// The timeline being written.
    pub timeline: Option<TimelineId>,
    /// The end of the WAL written, not necessarily synced.
    pub written: Lsn,
    /// The end of the WAL synced and checked: what is reported upstream as flushed and what
    /// downstreams are served.
    pub durable: Lsn,
    /// Where the stored WAL begins (retention moves it on); `None` before any is stored.
    pub oldest: Option<Lsn>,
    /// Why the store failed, until it is opened again.
    pub store_failure: Option<String>,
    /// The downstreams streaming now.
    pub streams: Vec<StreamStatus>,
    /// The relay's slots.
    pub slots: Vec<SlotInfo>,
    /// Downstream replication connections logged in now, streaming or not.
    pub connections: usize,
    /// What the synchronous standbys let the relay acknowledge upstream.
    pub synchronous: SyncAck,
    /// The WAL served to downstreams so far, by where it came from.
    pub served: HubStats,
}

/// Reads a relay's state at any time, also after [`super::Relay::run`] took the relay;
/// cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayMonitor {
    positions: watch::Receiver<Positions>,
    upstream: watch::Receiver<Option<Arc<UpstreamInfo>>>,
    downstream: Option<Arc<ServerContext>>,
    counters: Arc<Counters>,
}

impl RelayMonitor {
    pub(crate) fn new(
        positions: watch::Receiver<Positions>,
        upstream: watch::Receiver<Option<Arc<UpstreamInfo>>>,
        downstream: Option<Arc<ServerContext>>,
        counters: Arc<Counters>,
    ) -> RelayMonitor {
        RelayMonitor {
            positions,
            upstream,
            downstream,
            counters,
        }
    }

    /// What the relay's tasks have counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether the relay serves downstream clients.
    pub fn listens(&self) -> bool {
        self.downstream.is_some()
    }

    /// The state now.
    pub fn status(&self) -> RelayStatus {
        let p = self.positions.borrow().clone();
        let (streams, slots, connections, synchronous, served) = match &self.downstream {
            Some(ctx) => (
                ctx.streams(),
                ctx.slots().list(),
                ctx.senders_in_use(),
                ctx.sync_ack(),
                ctx.hub.stats(),
            ),
            None => (Vec::new(), Vec::new(), 0, SyncAck::Off, HubStats::default()),
        };
        RelayStatus {
            upstream: self.upstream.borrow().as_deref().cloned(),
            timeline: p.timeline,
            written: p.written,
            durable: p.durable,
            oldest: p.oldest,
            store_failure: p.failed,
            streams,
            slots,
            connections,
            synchronous,
            served,
        }
    }
}
