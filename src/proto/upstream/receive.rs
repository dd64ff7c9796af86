//! The client side of a physical replication stream, as a state machine without I/O.
//!
//! It mirrors what a walreceiver and `pg_receivewal` do once `START_REPLICATION` has answered
//! CopyBothResponse: XLogData must start exactly where the previous one ended
//! (`receivelog.c:ProcessXLogDataMsg`, "got WAL data offset %08x, expected %08x"); a
//! keepalive that asks for a reply is answered at once; a status update goes out at least
//! every status interval; a server silent for the receive timeout is given up on
//! (`walreceiver.c`, "terminating walreceiver due to timeout"). The caller passes `now` from
//! a monotonic clock and the wall-clock time for `sendTime`; the caller stores the WAL and
//! tells the stream how far it is written and durable.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::liveness::Liveness;
use crate::proto::syncrep::{AckPositions, SyncAck};
use crate::types::{Lsn, PgTimestamp};
use crate::wire::WireError;
use crate::wire::replication::{ServerCopyData, StandbyStatusUpdate};

/// Timing of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTiming {
    /// Send a status update at least this often (`wal_receiver_status_interval`).
    pub status_interval: Duration,
    /// Give up on a server silent this long (`wal_receiver_timeout`); zero disables.
    pub receive_timeout: Duration,
}

impl Default for StreamTiming {
    fn default() -> Self {
        StreamTiming {
            status_interval: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the stream must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The server's message is malformed.
    #[error("invalid replication message from server: {0}")]
    Wire(#[from] WireError),
    /// XLogData does not continue where the previous one ended.
    #[error("got WAL data at {got}, expected {expected}")]
    Discontinuity {
        /// Where the data starts.
        got: Lsn,
        /// Where it should start.
        expected: Lsn,
    },
    /// XLogData claims a WAL end before its own start.
    #[error("server reported WAL end {end} before data start {start}")]
    EndBeforeStart {
        /// Data start.
        start: Lsn,
        /// Reported end.
        end: Lsn,
    },
    /// XLogData runs past the end of the LSN space.
    #[error("WAL data at {0} overflows the LSN space")]
    Overflow(Lsn),
    /// Nothing arrived for the receive timeout.
    #[error("terminating replication connection due to timeout: nothing received for {0:?}")]
    Timeout(Duration),
}

/// What an incoming CopyData asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// WAL to check and store, starting exactly at the stream's previous end.
    Wal {
        /// LSN of the first byte.
        start: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// The server asked for a status update now.
    ReplyRequested,
    /// Nothing to do (a keepalive without a request, or an empty XLogData).
    Nothing,
}

/// The receiving side of one `START_REPLICATION` stream.
#[derive(Debug, Clone)]
pub struct ReceiveStream {
    timing: StreamTiming,
    next: Lsn,
    server_end: Lsn,
    written: Lsn,
    flushed: Lsn,
    /// What the synchronous standbys hold, when the relay acknowledges on their behalf.
    synchronous: Option<AckPositions>,
    reported: Option<AckPositions>,
    last_status: Instant,
    server: Liveness,
}

impl ReceiveStream {
    /// A stream that asked for WAL from `start`, at time `now`.
    pub fn new(start: Lsn, timing: StreamTiming, now: Instant) -> ReceiveStream {
        ReceiveStream {
            timing,
            next: start,
            server_end: start,
            written: start,
            flushed: start,
            synchronous: None,
            reported: None,
            last_status: now,
            server: Liveness::new(timing.receive_timeout, now),
        }
    }

    /// Where the next XLogData must start.
    pub fn next(&self) -> Lsn {
        self.next
    }

    /// The latest WAL end the server reported.
    pub fn server_end(&self) -> Lsn {
        self.server_end
    }

    /// Handles one CopyData payload from the server.
    ///
    /// # Errors
    /// A malformed message, or XLogData that is not contiguous with what came before.
    pub fn on_copy_data(&mut self, payload: Bytes, now: Instant) -> Result<Inbound, StreamError> {
        self.server.heard(now);
        match ServerCopyData::parse(payload)? {
            ServerCopyData::XLogData(x) => {
                if x.start != self.next {
                    return Err(StreamError::Discontinuity {
                        got: x.start,
                        expected: self.next,
                    });
                }
                let len =
                    u64::try_from(x.data.len()).map_err(|_| StreamError::Overflow(x.start))?;
                let end = x
                    .start
                    .checked_add(len)
                    .ok_or(StreamError::Overflow(x.start))?;
                if x.end < x.start {
                    return Err(StreamError::EndBeforeStart {
                        start: x.start,
                        end: x.end,
                    });
                }
                self.server_end = self.server_end.max(x.end).max(end);
                if x.data.is_empty() {
                    return Ok(Inbound::Nothing);
                }
                self.next = end;
                Ok(Inbound::Wal {
                    start: x.start,
                    data: x.data,
                })
            }
            ServerCopyData::Keepalive(k) => {
                self.server_end = self.server_end.max(k.end);
                Ok(if k.reply_requested {
                    Inbound::ReplyRequested
                } else {
                    Inbound::Nothing
                })
            }
        }
    }

    /// Records how far the received WAL is written and durable. `flushed` is what the server
    /// is told is safe: never more than is on disk.
    pub fn set_positions(&mut self, written: Lsn, flushed: Lsn) {
        self.written = written;
        self.flushed = flushed.min(written);
    }

    /// Takes what the synchronous standbys allow: with [`SyncAck::Off`] status updates carry
    /// the relay's own positions; otherwise what the standbys hold, within the relay's own
    /// ends, never moving back while this stream lasts ([`SyncAck::Short`] holds where the
    /// last positions were, nothing at first).
    pub fn set_synchronous(&mut self, ack: SyncAck) {
        self.synchronous = match ack {
            SyncAck::Off => None,
            SyncAck::Short { .. } => Some(self.synchronous.unwrap_or_default()),
            SyncAck::Held(held) => Some(held.max(self.synchronous.unwrap_or_default())),
        };
    }

    /// The positions a status update carries now. Without synchronous standbys `apply` is 0,
    /// as `pg_receivewal` reports it: the relay replays nothing.
    pub fn positions(&self) -> AckPositions {
        match self.synchronous {
            Some(held) => held.capped(self.written, self.flushed),
            None => AckPositions {
                write: self.written,
                flush: self.flushed,
                apply: Lsn::INVALID,
            },
        }
    }

    /// Whether a status update is due: positions changed since the last one, or the status
    /// interval has passed.
    pub fn status_due(&self, now: Instant) -> bool {
        self.reported != Some(self.positions())
            || now.saturating_duration_since(self.last_status) >= self.timing.status_interval
    }

    /// Builds the status update to send now and records that it was sent.
    pub fn status(&mut self, now: Instant, wall: PgTimestamp) -> StandbyStatusUpdate {
        self.last_status = now;
        let p = self.positions();
        self.reported = Some(p);
        StandbyStatusUpdate {
            write: p.write,
            flush: p.flush,
            apply: p.apply,
            send_time: wall,
            reply_requested: false,
        }
    }

    /// Whether the server has been silent for half the receive timeout and has not been
    /// asked for a reply yet. A walsender that is told everything stays silent while it has
    /// no WAL to send, so the receiver asks, as a walreceiver does.
    pub fn ping_due(&self, now: Instant) -> bool {
        self.server.ping_due(now)
    }

    /// A status update that asks the server to answer at once; sent once per silence.
    pub fn ping(&mut self, now: Instant, wall: PgTimestamp) -> StandbyStatusUpdate {
        self.server.pinged();
        StandbyStatusUpdate {
            reply_requested: true,
            ..self.status(now, wall)
        }
    }

    /// When the caller must act next even if nothing arrives: the next periodic status update,
    /// the ping at half the receive timeout, or the timeout itself, whichever is sooner.
    pub fn next_deadline(&self) -> Instant {
        let status = self.last_status + self.timing.status_interval;
        self.server.deadline().map_or(status, |d| d.min(status))
    }

    /// The relay reads from the server again after a message waited for its own disk (the
    /// writer's queue was full): the server's silence counts from `now`, since the time the
    /// relay was not reading is not the server's. A walreceiver likewise does not time out
    /// its server while its own write blocks.
    pub fn resumed_reading(&mut self, now: Instant) {
        self.server.heard(now);
    }

    /// Whether the server has been silent for the whole receive timeout.
    ///
    /// # Errors
    /// [`StreamError::Timeout`] with how long it has been silent.
    pub fn check_timeout(&self, now: Instant) -> Result<(), StreamError> {
        if self.server.timed_out(now) {
            return Err(StreamError::Timeout(self.server.silence(now)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::replication::{PrimaryKeepalive, XLogData};
    use bytes::BytesMut;

    fn wal(start: u64, end: u64, n: usize) -> Bytes {
        let mut out = BytesMut::new();
        XLogData {
            start: Lsn(start),
            end: Lsn(end),
            send_time: PgTimestamp(0),
            data: Bytes::from(vec![7u8; n]),
        }
        .write_payload(&mut out);
        out.freeze()
    }

    fn keepalive(end: u64, reply: bool) -> Bytes {
        let mut out = BytesMut::new();
        PrimaryKeepalive {
            end: Lsn(end),
            send_time: PgTimestamp(0),
            reply_requested: reply,
        }
        .write_payload(&mut out);
        out.freeze()
    }

    #[test]
    fn contiguous_data_flows() {
        let t0 = Instant::now();
        let mut s = ReceiveStream::new(Lsn(0x300_0000), StreamTiming::default(), t0);
        let got = s.on_copy_data(wal(0x300_0000, 0x300_0060, 96), t0).unwrap();
        assert!(matches!(
            got,
            Inbound::Wal {
                start: Lsn(0x300_0000),
                ..
            }
        ));
        assert_eq!(s.next(), Lsn(0x300_0060));
        assert!(
            s.on_copy_data(wal(0x300_0060, 0x300_0100, 0x20), t0)
                .is_ok()
        );
        assert_eq!(s.next(), Lsn(0x300_0080));
    }

    #[test]
    fn gaps_overlaps_and_backwards_steps_abort() {
        let t0 = Instant::now();
        for start in [0x300_0061u64, 0x300_005F, 0x200_0000] {
            let mut s = ReceiveStream::new(Lsn(0x300_0000), StreamTiming::default(), t0);
            s.on_copy_data(wal(0x300_0000, 0x300_0060, 96), t0).unwrap();
            assert!(matches!(
                s.on_copy_data(wal(start, start + 8, 8), t0),
                Err(StreamError::Discontinuity { .. })
            ));
        }
        let mut s = ReceiveStream::new(Lsn(0x300_0000), StreamTiming::default(), t0);
        assert!(matches!(
            s.on_copy_data(wal(0x300_0000, 0x200_0000, 8), t0),
            Err(StreamError::EndBeforeStart { .. })
        ));
        let mut s = ReceiveStream::new(Lsn(u64::MAX - 4), StreamTiming::default(), t0);
        assert!(matches!(
            s.on_copy_data(wal(u64::MAX - 4, u64::MAX, 8), t0),
            Err(StreamError::Overflow(_))
        ));
    }

    #[test]
    fn synchronous_standbys_decide_what_is_acknowledged() {
        let t0 = Instant::now();
        let mut s = ReceiveStream::new(Lsn(0x100), StreamTiming::default(), t0);
        s.set_positions(Lsn(0x900), Lsn(0x800));
        let own = s.status(t0, PgTimestamp(0));
        assert_eq!(
            (own.write, own.flush, own.apply),
            (Lsn(0x900), Lsn(0x800), Lsn(0))
        );
        // Too few standbys at first: nothing is acknowledged.
        s.set_synchronous(SyncAck::Short {
            required: 2,
            available: 1,
        });
        assert!(s.status_due(t0));
        let st = s.status(t0, PgTimestamp(0));
        assert_eq!((st.write, st.flush, st.apply), (Lsn(0), Lsn(0), Lsn(0)));
        let held = |w, f, a| AckPositions {
            write: Lsn(w),
            flush: Lsn(f),
            apply: Lsn(a),
        };
        // Within the relay's own ends.
        s.set_synchronous(SyncAck::Held(held(0xA00, 0xA00, 0x700)));
        assert_eq!(s.positions(), held(0x900, 0x800, 0x700));
        // Never back while the stream lasts, also when standbys leave.
        s.set_synchronous(SyncAck::Held(held(0x400, 0x400, 0x400)));
        assert_eq!(s.positions(), held(0x900, 0x800, 0x700));
        s.set_synchronous(SyncAck::Short {
            required: 2,
            available: 0,
        });
        assert_eq!(s.positions(), held(0x900, 0x800, 0x700));
        s.set_synchronous(SyncAck::Off);
        assert_eq!(s.positions(), held(0x900, 0x800, 0));
    }

    #[test]
    fn time_blocked_on_the_relays_own_disk_is_not_silence() {
        let t0 = Instant::now();
        let timing = StreamTiming {
            status_interval: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(30),
        };
        let mut s = ReceiveStream::new(Lsn(0x100), timing, t0);
        s.on_copy_data(keepalive(0x100, false), t0).unwrap();
        // A message waited 40 s for the writer's queue; reading resumes.
        let later = t0 + Duration::from_secs(40);
        assert!(s.check_timeout(later).is_err());
        s.resumed_reading(later);
        assert!(s.check_timeout(later + Duration::from_secs(29)).is_ok());
        assert!(s.check_timeout(later + Duration::from_secs(30)).is_err());
    }

    #[test]
    fn keepalives_and_status() {
        let t0 = Instant::now();
        let timing = StreamTiming {
            status_interval: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(30),
        };
        let mut s = ReceiveStream::new(Lsn(0x100), timing, t0);
        assert_eq!(
            s.on_copy_data(keepalive(0x100, true), t0).unwrap(),
            Inbound::ReplyRequested
        );
        assert_eq!(
            s.on_copy_data(keepalive(0x100, false), t0).unwrap(),
            Inbound::Nothing
        );
        assert!(s.status_due(t0), "nothing reported yet");
        let st = s.status(t0, PgTimestamp(5));
        assert_eq!(
            (st.write, st.flush, st.apply),
            (Lsn(0x100), Lsn(0x100), Lsn(0))
        );
        assert!(!s.status_due(t0 + Duration::from_secs(9)));
        assert!(s.status_due(t0 + Duration::from_secs(10)));
        s.set_positions(Lsn(0x200), Lsn(0x180));
        assert!(s.status_due(t0 + Duration::from_secs(1)));
        let st = s.status(t0 + Duration::from_secs(1), PgTimestamp(6));
        assert_eq!((st.write, st.flush), (Lsn(0x200), Lsn(0x180)));
        assert_eq!(s.next_deadline(), t0 + Duration::from_secs(11));
    }

    #[test]
    fn silent_server_is_pinged_once_at_half_the_timeout() {
        let t0 = Instant::now();
        let timing = StreamTiming {
            status_interval: Duration::from_secs(100),
            receive_timeout: Duration::from_secs(30),
        };
        let mut s = ReceiveStream::new(Lsn(0), timing, t0);
        assert_eq!(s.next_deadline(), t0 + Duration::from_secs(15));
        assert!(!s.ping_due(t0 + Duration::from_secs(14)));
        assert!(s.ping_due(t0 + Duration::from_secs(15)));
        let ping = s.ping(t0 + Duration::from_secs(15), PgTimestamp(1));
        assert!(ping.reply_requested);
        assert!(!s.ping_due(t0 + Duration::from_secs(20)));
        assert_eq!(s.next_deadline(), t0 + Duration::from_secs(30));
        s.on_copy_data(keepalive(0, false), t0 + Duration::from_secs(16))
            .unwrap();
        assert!(s.check_timeout(t0 + Duration::from_secs(40)).is_ok());
        assert!(s.ping_due(t0 + Duration::from_secs(31)));
    }

    #[test]
    fn timeout_on_own_clock() {
        let t0 = Instant::now();
        let timing = StreamTiming {
            status_interval: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(30),
        };
        let mut s = ReceiveStream::new(Lsn(0), timing, t0);
        assert!(s.check_timeout(t0 + Duration::from_secs(29)).is_ok());
        assert!(s.check_timeout(t0 + Duration::from_secs(30)).is_err());
        s.on_copy_data(keepalive(0, false), t0 + Duration::from_secs(29))
            .unwrap();
        assert!(s.check_timeout(t0 + Duration::from_secs(50)).is_ok());
        let off = StreamTiming {
            receive_timeout: Duration::ZERO,
            ..timing
        };
        assert!(
            ReceiveStream::new(Lsn(0), off, t0)
                .check_timeout(t0 + Duration::from_secs(1000))
                .is_ok()
        );
    }
}
