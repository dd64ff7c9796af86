//! What the relay counts as it runs, in atomics its tasks update without locks and a scrape
//! reads at any time: the upstream connection, the store's fsyncs and write errors, and the
//! downstream connections.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why an upstream connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Connecting or logging in failed.
    Connect,
    /// The connection broke or went silent.
    Connection,
    /// The server sent an error.
    ServerError,
    /// The server ended the stream.
    StreamEnded,
    /// The store failed.
    Store,
    /// The upstream is not the one the data directory belongs to.
    Mismatch,
}

impl EndReason {
    /// Every reason, in label order.
    pub const ALL: [EndReason; 6] = [
        EndReason::Connect,
        EndReason::Connection,
        EndReason::ServerError,
        EndReason::StreamEnded,
        EndReason::Store,
        EndReason::Mismatch,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Connect => "connect",
            EndReason::Connection => "connection",
            EndReason::ServerError => "server_error",
            EndReason::StreamEnded => "stream_ended",
            EndReason::Store => "store",
            EndReason::Mismatch => "mismatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The upstream side's counters.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    connected: AtomicBool,
    reached: AtomicBool,
    connections: AtomicU64,
    ends: [AtomicU64; 6],
    bytes_received: AtomicU64,
    server_end: AtomicU64,
    /// Since when (ms since the Unix epoch) the durable end trails the server's; 0 if not.
    behind_since_ms: AtomicU64,
    /// When the server last sent a message (ms since the Unix epoch); 0 before any.
    last_contact_ms: AtomicU64,
}

impl UpstreamCounters {
    /// A connection is streaming, or no longer is.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
        if connected {
            self.reached.store(true, Relaxed);
            self.connections.fetch_add(1, Relaxed);
        }
    }

    /// A connection ended for `reason`.
    pub fn ended(&self, reason: EndReason) {
        self.set_connected(false);
        if let Some(n) = self.ends.get(reason.index()) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// WAL bytes arrived.
    pub fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    /// The end of WAL on the server, as its last message said.
    pub fn set_server_end(&self, end: u64) {
        self.server_end.fetch_max(end, Relaxed);
    }

    /// The relay's durable end is `durable` at `now_ms` (ms since the Unix epoch): notes
    /// since when it trails the server's end, for the lag in seconds.
    pub fn note_durable(&self, durable: u64, now_ms: u64) {
        if durable >= self.server_end() {
            self.behind_since_ms.store(0, Relaxed);
        } else {
            let _ = self
                .behind_since_ms
                .compare_exchange(0, now_ms.max(1), Relaxed, Relaxed);
        }
    }

    /// The server sent a message at `now_ms` (ms since the Unix epoch).
    pub fn contact(&self, now_ms: u64) {
        self.last_contact_ms.fetch_max(now_ms, Relaxed);
    }

    /// When the server last sent a message, in ms since the Unix epoch.
    pub fn last_contact_ms(&self) -> Option<u64> {
        Some(self.last_contact_ms.load(Relaxed)).filter(|ms| *ms != 0)
    }

    /// Since when the durable end trails the server's end, in ms since the Unix epoch.
    pub fn behind_since_ms(&self) -> Option<u64> {
        Some(self.behind_since_ms.load(Relaxed)).filter(|ms| *ms != 0)
    }

    /// Whether a connection streams now.
    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// Whether a connection has streamed since the relay started.
    pub fn reached(&self) -> bool {
        self.reached.load(Relaxed)
    }

    /// Connections that reached streaming.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Connections that ended for `reason`.
    pub fn ends(&self, reason: EndReason) -> u64 {
        self.ends.get(reason.index()).map_or(0, |n| n.load(Relaxed))
    }

    /// WAL bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Relaxed)
    }

    /// The server's end of WAL as last reported (0 before any report).
    pub fn server_end(&self) -> u64 {
        self.server_end.load(Relaxed)
    }
}

/// Upper bounds of the fsync duration buckets, in seconds.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The store's counters.
#[derive(Debug, Default)]
pub struct StoreCounters {
    fsync_buckets: [AtomicU64; 12],
    fsync_count: AtomicU64,
    fsync_micros: AtomicU64,
    write_errors: AtomicU64,
}

impl StoreCounters {
    /// An fsync took `took`.
    pub fn fsync(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, n) in FSYNC_BUCKETS.iter().zip(&self.fsync_buckets) {
            if secs <= *bound {
                n.fetch_add(1, Relaxed);
            }
        }
        self.fsync_count.fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.fsync_micros.fetch_add(micros, Relaxed);
    }

    /// A write or fsync failed.
    pub fn write_error(&self) {
        self.write_errors.fetch_add(1, Relaxed);
    }

    /// Cumulative counts per bucket bound, the sum in seconds and the count.
    pub fn fsync_histogram(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets = FSYNC_BUCKETS
            .iter()
            .zip(&self.fsync_buckets)
            .map(|(bound, n)| (*bound, n.load(Relaxed)))
            .collect();
        let sum = self.fsync_micros.load(Relaxed) as f64 / 1e6;
        (buckets, sum, self.fsync_count.load(Relaxed))
    }

    /// Failed writes and fsyncs.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Relaxed)
    }
}

/// Why a downstream connection was refused or failed to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Beyond `max_wal_senders` (53300).
    TooMany,
    /// No access rule allows it, or a rule rejects it (28000).
    Rules,
    /// Authentication failed (28P01 and the like).
    Authentication,
    /// The relay is starting up or shutting down (57P03, 57P01).
    NotReady,
    /// Anything else before login: a bad startup packet, TLS, a timeout.
    Protocol,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 5] = [
        Refusal::TooMany,
        Refusal::Rules,
        Refusal::Authentication,
        Refusal::NotReady,
        Refusal::Protocol,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooMany => "too_many_connections",
            Refusal::Rules => "access_rules",
            Refusal::Authentication => "authentication",
            Refusal::NotReady => "not_ready",
            Refusal::Protocol => "protocol",
        }
    }

    /// The reason a FATAL error with `sqlstate` before login stands for.
    pub fn of_sqlstate(sqlstate: &str) -> Refusal {
        match sqlstate {
            "53300" => Refusal::TooMany,
            "28000" => Refusal::Rules,
            s if s.starts_with("28") => Refusal::Authentication,
            "57P03" | "57P01" => Refusal::NotReady,
            _ => Refusal::Protocol,
        }
    }
}

/// How a relayed BASE_BACKUP ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupOutcome {
    /// The answer reached the client whole, with no error in it.
    Completed,
    /// The upstream refused or failed it, could not be reached, or was lost.
    Failed,
    /// The client went away or stopped reading, or the relay shut down.
    Aborted,
}

impl BackupOutcome {
    /// Every outcome, in label order.
    pub const ALL: [BackupOutcome; 3] = [
        BackupOutcome::Completed,
        BackupOutcome::Failed,
        BackupOutcome::Aborted,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            BackupOutcome::Completed => "completed",
            BackupOutcome::Failed => "failed",
            BackupOutcome::Aborted => "aborted",
        }
    }
}

/// The downstream side's counters.
#[derive(Debug, Default)]
pub struct DownstreamCounters {
    accepted: AtomicU64,
    refused: [AtomicU64; 5],
    backups_started: AtomicU64,
    backups_ended: [AtomicU64; 3],
    backup_bytes: AtomicU64,
}

impl DownstreamCounters {
    /// A connection was accepted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    /// A connection ended before logging in, for `reason`.
    pub fn refused(&self, reason: Refusal) {
        if let Some(n) = self.refused.get(reason as usize) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// Connections accepted.
    pub fn accepted_total(&self) -> u64 {
        self.accepted.load(Relaxed)
    }

    /// Connections refused for `reason`.
    pub fn refused_total(&self, reason: Refusal) -> u64 {
        self.refused
            .get(reason as usize)
            .map_or(0, |n| n.load(Relaxed))
    }

    /// A BASE_BACKUP is being relayed.
    pub fn backup_started(&self) {
        self.backups_started.fetch_add(1, Relaxed);
    }

    /// `bytes` more of a BASE_BACKUP's answer went to its client.
    pub fn backup_relayed(&self, bytes: u64) {
        self.backup_bytes.fetch_add(bytes, Relaxed);
    }

    /// A BASE_BACKUP counted by [`backup_started`](Self::backup_started) ended so.
    pub fn backup_ended(&self, outcome: BackupOutcome) {
        if let Some(n) = self.backups_ended.get(outcome as usize) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// BASE_BACKUPs being relayed now.
    pub fn backups_running(&self) -> u64 {
        let ended: u64 = self.backups_ended.iter().map(|n| n.load(Relaxed)).sum();
        self.backups_started.load(Relaxed).saturating_sub(ended)
    }

    /// BASE_BACKUPs that ended with `outcome`.
    pub fn backups_total(&self, outcome: BackupOutcome) -> u64 {
        self.backups_ended
            .get(outcome as usize)
            .map_or(0, |n| n.load(Relaxed))
    }

    /// Bytes of BASE_BACKUP answers sent to clients.
    pub fn backup_bytes_total(&self) -> u64 {
        self.backup_bytes.load(Relaxed)
    }
}

/// Everything the relay counts, shared by its tasks.
#[derive(Debug, Default)]
pub struct Counters {
    /// The upstream side.
    pub upstream: UpstreamCounters,
    /// The store.
    pub store: StoreCounters,
    /// The downstream side.
    pub downstream: DownstreamCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_buckets_are_cumulative() {
        let s = StoreCounters::default();
        s.fsync(Duration::from_micros(300));
        s.fsync(Duration::from_millis(30));
        s.fsync(Duration::from_secs(4));
        let (buckets, sum, count) = s.fsync_histogram();
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[5], (0.025, 1));
        assert_eq!(buckets[6], (0.05, 2));
        assert_eq!(buckets[11], (2.5, 2));
        assert_eq!(count, 3);
        assert!((sum - 4.0303).abs() < 1e-9);
    }

    #[test]
    fn backups_by_outcome() {
        let d = DownstreamCounters::default();
        d.backup_started();
        d.backup_started();
        d.backup_relayed(10);
        d.backup_relayed(5);
        d.backup_ended(BackupOutcome::Aborted);
        assert_eq!(d.backups_running(), 1);
        assert_eq!(d.backups_total(BackupOutcome::Aborted), 1);
        assert_eq!(d.backups_total(BackupOutcome::Completed), 0);
        assert_eq!(d.backup_bytes_total(), 15);
        let labels: Vec<_> = BackupOutcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, ["completed", "failed", "aborted"]);
    }

    #[test]
    fn connections_and_ends() {
        let u = UpstreamCounters::default();
        assert!(!u.reached());
        u.set_connected(true);
        u.ended(EndReason::ServerError);
        u.set_server_end(10);
        u.set_server_end(5);
        assert!(u.reached() && !u.connected());
        assert_eq!((u.connections(), u.ends(EndReason::ServerError)), (1, 1));
        assert_eq!(u.server_end(), 10);
        u.note_durable(4, 1000);
        u.note_durable(6, 2000);
        assert_eq!(u.behind_since_ms(), Some(1000), "behind since it first was");
        u.note_durable(10, 3000);
        assert_eq!(u.behind_since_ms(), None);
        assert_eq!(Refusal::of_sqlstate("28P01"), Refusal::Authentication);
        assert_eq!(Refusal::of_sqlstate("53300"), Refusal::TooMany);
    }
}
