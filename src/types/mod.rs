//! Newtypes for every protocol number: LSNs, timelines, system identifiers, timestamps, WAL
//! segments, transaction ids, slot names and SQLSTATEs, each with PostgreSQL's text form and
//! checked arithmetic; and the few records built of them that every layer shares.

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod ids;
mod lsn;
mod segment;
mod slot_name;
mod sqlstate;
mod upstream;
mod xid;

pub use ids::{
    BackendPid, ParseSystemIdError, ParseTimelineError, PgTimestamp, SystemId, TimelineId,
};
pub use lsn::{Lsn, ParseLsnError};
pub use segment::{
    InvalidSegmentSize, MAX_SEND_SIZE, SegmentName, SegmentNo, WAL_PAGE_SIZE, WalSegmentSize,
};
pub use slot_name::{MAX_SLOT_NAME_LEN, SlotName, SlotNameError};
pub use sqlstate::SqlState;
pub use upstream::{DurableEnd, UpstreamInfo, server_version_num};
pub use xid::{FullXid, XminHorizon};
