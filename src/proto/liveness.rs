//! Whether a peer is still there: the one rule both ends of a replication stream follow.
//!
//! A peer silent for half the timeout is asked for a reply, once per silence; a peer silent for
//! the whole timeout is given up on. A walsender does this with its standbys
//! (`WalSndKeepaliveIfNecessary`, `WalSndCheckTimeOut`), a walreceiver with its server
//! (`WalReceiverMain`: `wal_receiver_timeout`, and the `requestReply` it sets at half of it). A
//! zero timeout disables both. The caller passes `now` from a monotonic clock.

use std::time::{Duration, Instant};

/// The silence of one peer.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    timeout: Duration,
    last_heard: Instant,
    pinged: bool,
}

impl Liveness {
    /// A peer last heard from at `now`; `timeout` zero disables pings and the timeout.
    pub fn new(timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            last_heard: now,
            pinged: false,
        }
    }

    /// The peer spoke: its silence starts over.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = false;
    }

    /// How long the peer has been silent.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// Whether to ask the peer for a reply now: silent for half the timeout, and not asked
    /// since it last spoke.
    pub fn ping_due(&self, now: Instant) -> bool {
        !self.timeout.is_zero() && !self.pinged && self.silence(now) >= self.timeout / 2
    }

    /// Records that the peer was asked for a reply.
    pub fn pinged(&mut self) {
        self.pinged = true;
    }

    /// Whether the peer has been silent for the whole timeout.
    pub fn timed_out(&self, now: Instant) -> bool {
        !self.timeout.is_zero() && self.silence(now) >= self.timeout
    }

    /// When to look again even if nothing happens: the ping, or once pinged, the timeout.
    pub fn deadline(&self) -> Option<Instant> {
        if self.timeout.is_zero() {
            None
        } else if self.pinged {
            Some(self.last_heard + self.timeout)
        } else {
            Some(self.last_heard + self.timeout / 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_at_half_once_per_silence_then_time_out() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut l = Liveness::new(Duration::from_secs(10), t0);
        assert_eq!(l.deadline(), Some(s(5)));
        assert!(!l.ping_due(s(4)));
        assert!(l.ping_due(s(5)));
        l.pinged();
        assert!(!l.ping_due(s(6)), "one ping per silence");
        assert_eq!(l.deadline(), Some(s(10)));
        assert!(!l.timed_out(s(9)));
        assert!(l.timed_out(s(10)));
        assert_eq!(l.silence(s(12)), Duration::from_secs(12));
        l.heard(s(9));
        assert!(!l.timed_out(s(10)));
        assert!(l.ping_due(s(14)), "a new silence gets a new ping");
        assert_eq!(l.deadline(), Some(s(14)));
    }

    #[test]
    fn zero_disables_everything() {
        let t0 = Instant::now();
        let l = Liveness::new(Duration::ZERO, t0);
        let later = t0 + Duration::from_secs(1_000_000);
        assert!(!l.timed_out(later));
        assert!(!l.ping_due(later));
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn a_clock_that_reads_earlier_is_no_silence() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let l = Liveness::new(Duration::from_secs(10), t0);
        let earlier = t0 - Duration::from_secs(50);
        assert_eq!(l.silence(earlier), Duration::ZERO);
        assert!(!l.timed_out(earlier) && !l.ping_due(earlier));
    }
}
