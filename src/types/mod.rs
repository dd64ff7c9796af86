//! Newtypes for every protocol number: LSNs, timelines, system identifiers, timestamps and
//! WAL segments, each with PostgreSQL's text form and checked arithmetic.

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod ids;
mod lsn;
mod segment;

pub use ids::{ParseSystemIdError, ParseTimelineError, PgTimestamp, SystemId, TimelineId};
pub use lsn::{Lsn, ParseLsnError};
pub use segment::{
    InvalidSegmentSize, MAX_SEND_SIZE, SegmentName, SegmentNo, WAL_PAGE_SIZE, WalSegmentSize,
};
