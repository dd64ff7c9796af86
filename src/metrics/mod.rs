//! What the relay measures, for its `/metrics` and `/status` endpoints: counters its tasks
//! update as they run ([`Counters`]), lag in time as `pg_stat_replication` computes it
//! ([`lag`]), and the Prometheus text those become ([`exposition`]). A leaf of the crate:
//! it uses only `types`, reads no clock and does no I/O.

mod counters;
pub mod exposition;
pub mod lag;

pub use counters::{
    BackupOutcome, Counters, DownstreamCounters, EndReason, FSYNC_BUCKETS, Refusal, StoreCounters,
    UpstreamCounters,
};
