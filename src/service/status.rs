//! What a running relay can tell about itself: its upstream, how far its WAL is written and
//! durable, its downstream streams and slots.

use std::sync::Arc;

use tokio::sync::watch;

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
}

/// Reads a relay's state at any time, also after [`super::Relay::run`] took the relay;
/// cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayMonitor {
    positions: watch::Receiver<Positions>,
    upstream: watch::Receiver<Option<Arc<UpstreamInfo>>>,
    downstream: Option<Arc<ServerContext>>,
}

impl RelayMonitor {
    pub(crate) fn new(
        positions: watch::Receiver<Positions>,
        upstream: watch::Receiver<Option<Arc<UpstreamInfo>>>,
        downstream: Option<Arc<ServerContext>>,
    ) -> RelayMonitor {
        RelayMonitor {
            positions,
            upstream,
            downstream,
        }
    }

    /// The state now.
    pub fn status(&self) -> RelayStatus {
        let p = self.positions.borrow().clone();
        let (streams, slots) = match &self.downstream {
            Some(ctx) => (ctx.streams(), ctx.slots().list()),
            None => (Vec::new(), Vec::new()),
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
        }
    }
}
