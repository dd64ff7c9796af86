//! The sending side of one physical replication stream, as a state machine without I/O.
//!
//! It mirrors a PostgreSQL walsender once `START_REPLICATION` has answered CopyBothResponse
//! (`walsender.c:WalSndLoop`, `XLogSendPhysical`, `ProcessStandbyReplyMessage`,
//! `WalSndKeepaliveIfNecessary`, `WalSndCheckTimeOut`):
//! - WAL goes out contiguously from the requested start, only below the durable end (the
//!   pieces are cut by the hub, as `XLogSendPhysical` cuts them);
//! - a status update that asks for a reply gets a keepalive at once;
//! - a client silent for half the sender timeout gets one keepalive asking for a reply;
//! - a client silent for the whole timeout is dropped (zero disables the timeout);
//! - the client's flush position moves its slot, never beyond what was actually sent;
//! - a write or flush position beyond the end of the WAL this server has is a protocol
//!   violation: no client can hold WAL this server never had.
//!
//! The caller passes `now` from a monotonic clock and the wall-clock time for `sendTime`.

use std::time::{Duration, Instant};

use crate::proto::liveness::Liveness;
use crate::types::{Lsn, PgTimestamp};
use crate::wire::replication::{PrimaryKeepalive, StandbyStatusUpdate};

/// What a status update from the client changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The position the client's slot should move to, if its flush is set: the reported
    /// flush, clamped to what was sent.
    pub slot_flush: Option<Lsn>,
    /// Whether the client asked for an immediate keepalive.
    pub reply_requested: bool,
}

/// A status update that claims WAL beyond the end of the WAL this server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "standby reported {what} position {reported}, which is ahead of the WAL flush position of this server {end}"
)]
pub struct AheadOfServer {
    /// `"write"` or `"flush"`.
    pub what: &'static str,
    /// The position the client reported.
    pub reported: Lsn,
    /// The end of the WAL this server has.
    pub end: Lsn,
}

/// The last positions a client reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientPositions {
    /// Written.
    pub write: Lsn,
    /// Flushed.
    pub flush: Lsn,
    /// Replayed.
    pub apply: Lsn,
    /// The client's clock when it sent them.
    pub reply_time: PgTimestamp,
}

/// The sending side of one stream.
#[derive(Debug, Clone)]
pub struct SendStream {
    sent: Lsn,
    client: Liveness,
    positions: ClientPositions,
}

impl SendStream {
    /// A stream starting at `start` (not rounded: the first byte sent is `start`), at `now`.
    /// `timeout` is the sender timeout; zero disables it.
    pub fn new(start: Lsn, timeout: Duration, now: Instant) -> SendStream {
        SendStream {
            sent: start,
            client: Liveness::new(timeout, now),
            positions: ClientPositions::default(),
        }
    }

    /// Where the next XLogData starts: the end of what was sent.
    pub fn sent(&self) -> Lsn {
        self.sent
    }

    /// What the client last reported.
    pub fn positions(&self) -> ClientPositions {
        self.positions
    }

    /// Records that WAL up to `end` went out.
    pub fn sent_to(&mut self, end: Lsn) {
        self.sent = self.sent.max(end);
    }

    /// Takes any message from the client: it proves the client is alive.
    pub fn on_client_message(&mut self, now: Instant) {
        self.client.heard(now);
    }

    /// Takes a standby status update; `end` is the end of the WAL this server has. Positions
    /// may move backwards, and write and flush may exceed what was sent (a walreceiver's first
    /// reply after reconnecting reports its replay position, PROTOCOL.md §7 item 14): the slot
    /// follows the flush only up to what this stream has sent.
    ///
    /// # Errors
    /// [`AheadOfServer`] if write or flush is beyond `end`, which only a client that lies can
    /// report; the positions are then not taken.
    pub fn on_status(
        &mut self,
        r: &StandbyStatusUpdate,
        end: Lsn,
        now: Instant,
    ) -> Result<Reply, AheadOfServer> {
        self.on_client_message(now);
        for (what, reported) in [("write", r.write), ("flush", r.flush)] {
            if reported > end {
                return Err(AheadOfServer {
                    what,
                    reported,
                    end,
                });
            }
        }
        self.positions = ClientPositions {
            write: r.write,
            flush: r.flush,
            apply: r.apply,
            reply_time: r.send_time,
        };
        Ok(Reply {
            slot_flush: r.flush.is_valid().then(|| r.flush.min(self.sent)),
            reply_requested: r.reply_requested,
        })
    }

    /// A keepalive, carrying the end of what was sent (`WalSndKeepalive`).
    pub fn keepalive(&self, wall: PgTimestamp, reply_requested: bool) -> PrimaryKeepalive {
        PrimaryKeepalive {
            end: self.sent,
            send_time: wall,
            reply_requested,
        }
    }

    /// The client's silence: when to ask it for a reply, when to drop it.
    pub fn client(&mut self) -> &mut Liveness {
        &mut self.client
    }

    /// When the client's silence next calls for a ping or the timeout.
    pub fn client_deadline(&self) -> Option<Instant> {
        self.client.deadline()
    }

    /// Whether the client confirmed everything sent: its flush, or its write when it reports
    /// no flush (`pg_receivewal` without a slot).
    pub fn confirmed(&self) -> bool {
        let p = self.positions;
        let done = if p.flush.is_valid() { p.flush } else { p.write };
        done >= self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(write: u64, flush: u64, reply: bool) -> StandbyStatusUpdate {
        StandbyStatusUpdate {
            write: Lsn(write),
            flush: Lsn(flush),
            apply: Lsn(0),
            send_time: PgTimestamp(0),
            reply_requested: reply,
        }
    }

    #[test]
    fn slot_follows_flush_up_to_what_was_sent() {
        let t0 = Instant::now();
        let mut s = SendStream::new(Lsn(0x300_0000), Duration::from_secs(60), t0);
        let end = Lsn(0x400_0000);
        // A walreceiver's first reply after reconnecting: its replay position, ahead of sent.
        let r = s.on_status(&status(0x361_FFE0, 0x361_FFE0, false), end, t0);
        assert_eq!(r.unwrap().slot_flush, Some(Lsn(0x300_0000)));
        s.sent_to(Lsn(0x302_0000));
        let r = s
            .on_status(&status(0x302_0000, 0x301_0000, true), end, t0)
            .unwrap();
        assert_eq!(
            r,
            Reply {
                slot_flush: Some(Lsn(0x301_0000)),
                reply_requested: true
            }
        );
        // flush 0 (pg_receivewal without a slot) moves nothing.
        let r = s.on_status(&status(0x302_0000, 0, false), end, t0).unwrap();
        assert_eq!(r.slot_flush, None);
        assert_eq!(s.positions().write, Lsn(0x302_0000));
    }

    #[test]
    fn positions_beyond_the_servers_wal_are_refused_and_not_taken() {
        let t0 = Instant::now();
        let mut s = SendStream::new(Lsn(0x300_0000), Duration::from_secs(60), t0);
        let end = Lsn(0x302_0000);
        // Exactly the end is fine.
        assert!(
            s.on_status(&status(0x302_0000, 0x302_0000, false), end, t0)
                .is_ok()
        );
        let err = s
            .on_status(&status(0x302_0001, 0x301_0000, false), end, t0)
            .unwrap_err();
        assert_eq!((err.what, err.reported), ("write", Lsn(0x302_0001)));
        let err = s
            .on_status(&status(0x301_0000, u64::MAX, false), end, t0)
            .unwrap_err();
        assert_eq!((err.what, err.end), ("flush", end));
        assert_eq!(
            err.to_string(),
            "standby reported flush position FFFFFFFF/FFFFFFFF, which is ahead of the WAL \
             flush position of this server 0/3020000"
        );
        assert_eq!(s.positions().flush, Lsn(0x302_0000));
    }

    #[test]
    fn keepalives_carry_what_was_sent_and_silence_is_the_clients() {
        let t0 = Instant::now();
        let mut s = SendStream::new(Lsn(0x100), Duration::from_secs(10), t0);
        assert!(s.client().ping_due(t0 + Duration::from_secs(5)));
        s.on_client_message(t0 + Duration::from_secs(4));
        assert!(!s.client().ping_due(t0 + Duration::from_secs(5)));
        let k = s.keepalive(PgTimestamp(3), true);
        assert_eq!((k.end, k.reply_requested), (Lsn(0x100), true));
    }

    #[test]
    fn confirmed_is_flush_or_else_write() {
        let t0 = Instant::now();
        let mut s = SendStream::new(Lsn(0x100), Duration::ZERO, t0);
        s.sent_to(Lsn(0x200));
        assert!(!s.confirmed());
        s.on_status(&status(0x200, 0, false), Lsn(0x200), t0)
            .unwrap();
        assert!(s.confirmed(), "no flush reported: the write counts");
        s.on_status(&status(0x200, 0x180, false), Lsn(0x200), t0)
            .unwrap();
        assert!(!s.confirmed(), "a flush reported is what counts");
    }
}
