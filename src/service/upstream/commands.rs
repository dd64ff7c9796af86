//! The replication commands the relay sends before it streams, and the decisions they feed:
//! is this the system the data directory holds, where does streaming start, which history
//! files must be fetched, does the relay's slot exist.

use tracing::{info, warn};

use super::UpstreamError;
use super::connect::Upstream;
use crate::proto::query::{HistoryFile, IdentifySystem, ReadSlotRow};
use crate::proto::upstream::SessionError;
use crate::service::writer::Writer;
use crate::storage::StoreIdentity;
use crate::types::{Lsn, SqlState, TimelineId, WalSegmentSize};
use crate::wal::TimelineHistory;

/// Where streaming starts on a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct StartPoint {
    pub timeline: TimelineId,
    pub start: Lsn,
}

impl Upstream {
    /// Fetches and stores the history files of timelines `(from, to]`; returns the parsed
    /// history of `to`.
    pub(super) async fn fetch_histories(
        &mut self,
        writer: &Writer,
        from: TimelineId,
        to: TimelineId,
    ) -> Result<Option<TimelineHistory>, UpstreamError> {
        let mut last = None;
        let mut tli = from.next();
        while let Some(t) = tli.filter(|t| *t <= to) {
            let result = self.query(&format!("TIMELINE_HISTORY {t}")).await?;
            let file = HistoryFile::from_result(&result, t).map_err(SessionError::from)?;
            writer.write_history(t, file.content).await?;
            last = Some(file.history);
            tli = t.next();
        }
        Ok(last)
    }

    /// Makes sure the relay's physical slot exists on the upstream.
    pub(super) async fn ensure_slot(&mut self, slot: &str) -> Result<(), UpstreamError> {
        let modern = self.server.version_num >= 150_000;
        if modern {
            let result = self
                .query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
                .await?;
            let row = ReadSlotRow::from_result(&result).map_err(SessionError::from)?;
            if row.exists {
                if row.restart_lsn.is_none() {
                    warn!(
                        slot,
                        "the upstream slot holds no WAL (it was created without reserving WAL or has been invalidated)"
                    );
                }
                return Ok(());
            }
        }
        let sql = if modern {
            format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL (RESERVE_WAL)")
        } else {
            format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL")
        };
        match self.query(&sql).await {
            Ok(_) => {
                info!(slot, "created the relay's slot on the upstream");
                Ok(())
            }
            Err(e) if e.sqlstate() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Decides where to stream from: the durable end of the store, or on first start the
    /// start of the upstream's current segment; follows a newer upstream timeline.
    pub(super) async fn start_point(
        &mut self,
        writer: &Writer,
        id: &IdentifySystem,
        size: WalSegmentSize,
    ) -> Result<StartPoint, UpstreamError> {
        let Some(end) = writer.end().await? else {
            self.fetch_histories(writer, TimelineId::ONE, id.timeline)
                .await?;
            let start = size.segment_start(id.xlogpos);
            let tli = id.timeline;
            writer.start_at(tli, start).await?;
            info!(timeline = %tli, start = %start, "first start: streaming from the upstream's current segment");
            return Ok(StartPoint {
                timeline: tli,
                start,
            });
        };
        if id.timeline < end.timeline {
            return Err(UpstreamError::TimelineBehind {
                upstream: id.timeline,
                relay: end.timeline,
            });
        }
        if id.timeline == end.timeline {
            return Ok(StartPoint {
                timeline: end.timeline,
                start: end.durable,
            });
        }
        let history = self
            .fetch_histories(writer, end.timeline, id.timeline)
            .await?;
        let (switch, next) = history.and_then(|h| h.switch_point(end.timeline)).ok_or(
            UpstreamError::ForkedAway {
                upstream: id.timeline,
                relay: end.timeline,
            },
        )?;
        if end.durable > switch {
            warn!(relay_end = %end.durable, switch_point = %switch, "the relay holds WAL past the upstream's switch point; it is not part of the new timeline");
        }
        let start = size.segment_start(end.durable.min(switch));
        writer.switch_timeline(next, start).await?;
        Ok(StartPoint {
            timeline: next,
            start,
        })
    }
}

/// Refuses an upstream that is another system, or records the identity on first use.
pub(super) async fn check_identity(
    writer: &Writer,
    identity: StoreIdentity,
) -> Result<(), UpstreamError> {
    match writer.identity().await? {
        Some(stored) if stored.system_id != identity.system_id => {
            Err(UpstreamError::SystemIdMismatch {
                upstream: identity.system_id.to_string(),
                stored: stored.system_id.to_string(),
            })
        }
        Some(stored) if stored.segment_size != identity.segment_size => {
            Err(UpstreamError::SegmentSizeMismatch {
                upstream: identity.segment_size,
                stored: stored.segment_size,
            })
        }
        Some(_) => Ok(()),
        None => {
            info!(system_id = %identity.system_id, segment_size = %identity.segment_size, "initializing data directory");
            Ok(writer.initialize(identity).await?)
        }
    }
}
