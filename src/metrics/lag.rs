//! Replication lag in time, as `pg_stat_replication` computes `write_lag`, `flush_lag` and
//! `replay_lag` (`walsender.c`: `LagTrackerWrite`, `LagTrackerRead`,
//! `ProcessStandbyReplyMessage`).
//!
//! A walsender samples when each position of WAL was flushed locally; when a standby reports
//! having written, flushed or applied up to a position, that lag is the time since the newest
//! sample at or below it was taken. A report that passes no new sample leaves the lag as it
//! was; once a standby has reported twice in a row that it applied everything sent, the lags
//! are cleared (it is idle and caught up, and an old figure would mislead). The relay samples
//! when WAL became durable on its disk, once for all its streams ([`DurableTimes`]); each
//! stream keeps its own reading ([`LagReader`]). PostgreSQL also interpolates between two
//! samples; the relay takes the older one, which can only overstate the lag by the time
//! between two samples (one fsync).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::types::Lsn;

/// As many samples as a walsender keeps (`LAG_TRACKER_BUFFER_SIZE`).
pub const DURABLE_SAMPLES: usize = 8192;

/// When each durable end was reached, newest last.
#[derive(Debug, Clone)]
pub struct DurableTimes {
    samples: VecDeque<(Lsn, Instant)>,
    capacity: usize,
}

impl Default for DurableTimes {
    fn default() -> Self {
        DurableTimes::new(DURABLE_SAMPLES)
    }
}

impl DurableTimes {
    /// At most `capacity` samples; the oldest go first.
    pub fn new(capacity: usize) -> DurableTimes {
        DurableTimes {
            samples: VecDeque::with_capacity(capacity.min(DURABLE_SAMPLES)),
            capacity: capacity.max(1),
        }
    }

    /// The durable end reached `lsn` at `at`; ignored unless it moved forward.
    pub fn record(&mut self, lsn: Lsn, at: Instant) {
        if self.samples.back().is_some_and(|(last, _)| *last >= lsn) {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((lsn, at));
    }

    /// The newest sample at or below `lsn`.
    fn at_or_below(&self, lsn: Lsn) -> Option<(Lsn, Instant)> {
        let after = self.samples.partition_point(|(l, _)| *l <= lsn);
        after
            .checked_sub(1)
            .and_then(|i| self.samples.get(i))
            .copied()
    }
}

/// What a standby reports in a reply: written, flushed and applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// `write`.
    pub write: Lsn,
    /// `flush`.
    pub flush: Lsn,
    /// `apply`.
    pub apply: Lsn,
}

/// One stream's lags, as its replies read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagReader {
    /// The newest sample each of write, flush and apply has passed.
    read: [Lsn; 3],
    /// `write_lag`, `flush_lag`, `replay_lag`; `None` is NULL.
    lags: [Option<Duration>; 3],
    fully_applied_last_time: bool,
}

impl LagReader {
    /// Reads a reply received at `now`, for a stream sent up to `sent`.
    pub fn on_reply(&mut self, reported: Reported, sent: Lsn, now: Instant, times: &DurableTimes) {
        let clear = if reported.apply == sent {
            let clear = self.fully_applied_last_time;
            self.fully_applied_last_time = true;
            clear
        } else {
            self.fully_applied_last_time = false;
            false
        };
        let positions = [reported.write, reported.flush, reported.apply];
        for ((lsn, read), lag) in positions
            .into_iter()
            .zip(self.read.iter_mut())
            .zip(self.lags.iter_mut())
        {
            let fresh = times
                .at_or_below(lsn)
                .filter(|(sample, _)| *sample > *read)
                .map(|(sample, at)| {
                    *read = sample;
                    now.saturating_duration_since(at)
                });
            if fresh.is_some() || clear {
                *lag = fresh;
            }
        }
    }

    /// `write_lag`.
    pub fn write_lag(&self) -> Option<Duration> {
        self.lags[0]
    }

    /// `flush_lag`.
    pub fn flush_lag(&self) -> Option<Duration> {
        self.lags[1]
    }

    /// `replay_lag`.
    pub fn replay_lag(&self) -> Option<Duration> {
        self.lags[2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lag_is_the_time_since_the_newest_durable_sample_the_report_passes() {
        let t0 = Instant::now();
        let mut times = DurableTimes::new(4);
        times.record(Lsn(100), t0);
        times.record(Lsn(200), t0 + ms(10));
        times.record(Lsn(150), t0 + ms(11));
        times.record(Lsn(300), t0 + ms(20));
        let mut r = LagReader::default();
        let report = Reported {
            write: Lsn(300),
            flush: Lsn(250),
            apply: Lsn(99),
        };
        r.on_reply(report, Lsn(300), t0 + ms(25), &times);
        assert_eq!(r.write_lag(), Some(ms(5)));
        assert_eq!(r.flush_lag(), Some(ms(15)), "the sample at 200");
        assert_eq!(r.replay_lag(), None, "below every sample");
        // The same report later passes no new sample: the lags stay.
        r.on_reply(report, Lsn(300), t0 + ms(90), &times);
        assert_eq!(r.write_lag(), Some(ms(5)));
        assert_eq!(r.flush_lag(), Some(ms(15)));
    }

    #[test]
    fn two_fully_applied_replies_in_a_row_clear_the_lags() {
        let t0 = Instant::now();
        let mut times = DurableTimes::default();
        times.record(Lsn(100), t0);
        let mut r = LagReader::default();
        let all = Reported {
            write: Lsn(100),
            flush: Lsn(100),
            apply: Lsn(100),
        };
        r.on_reply(all, Lsn(100), t0 + ms(3), &times);
        assert_eq!(r.replay_lag(), Some(ms(3)));
        r.on_reply(all, Lsn(100), t0 + ms(1000), &times);
        assert_eq!(
            (r.write_lag(), r.flush_lag(), r.replay_lag()),
            (None, None, None)
        );
    }

    #[test]
    fn the_oldest_samples_go_first() {
        let t0 = Instant::now();
        let mut times = DurableTimes::new(2);
        for i in 1..=3 {
            times.record(Lsn(i * 100), t0 + ms(i));
        }
        assert_eq!(times.at_or_below(Lsn(150)), None);
        assert_eq!(times.at_or_below(Lsn(250)), Some((Lsn(200), t0 + ms(2))));
    }
}
