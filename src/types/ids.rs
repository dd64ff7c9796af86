//! Timeline and system identifiers, and PostgreSQL timestamps.
//!
//! `TimeLineID` is a `uint32` that is never 0 for real WAL; the system identifier is the
//! `uint64` that `IDENTIFY_SYSTEM` prints in decimal and every long page header carries;
//! `TimestampTz` counts microseconds since 2000-01-01 00:00:00 UTC.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A timeline identifier (`TimeLineID`), always at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(u32);

impl TimelineId {
    /// The first timeline of every cluster.
    pub const ONE: TimelineId = TimelineId(1);

    /// A timeline from its number; `None` for 0, which PostgreSQL calls an invalid timeline.
    pub fn new(v: u32) -> Option<TimelineId> {
        (v != 0).then_some(TimelineId(v))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The next timeline, or `None` at `u32::MAX`.
    pub fn next(self) -> Option<TimelineId> {
        self.0.checked_add(1).map(TimelineId)
    }

    /// The history file name of this timeline, `%08X.history`.
    pub fn history_file_name(self) -> String {
        format!("{:08X}.history", self.0)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not a timeline identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline \"{0}\"")]
pub struct ParseTimelineError(pub String);

impl FromStr for TimelineId {
    type Err = ParseTimelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTimelineError(s.chars().take(32).collect());
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        s.parse::<u32>()
            .ok()
            .and_then(TimelineId::new)
            .ok_or_else(err)
    }
}

/// The database system identifier (`pg_control`'s `system_identifier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not a system identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid system identifier \"{0}\"")]
pub struct ParseSystemIdError(pub String);

impl FromStr for SystemId {
    type Err = ParseSystemIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseSystemIdError(s.chars().take(32).collect()));
        }
        s.parse::<u64>()
            .map(SystemId)
            .map_err(|_| ParseSystemIdError(s.chars().take(32).collect()))
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A PostgreSQL `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The timestamp of a wall-clock time.
    pub fn from_system_time(t: SystemTime) -> PgTimestamp {
        let unix_us = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |v| -v),
        };
        PgTimestamp(unix_us.saturating_sub(PG_EPOCH_OFFSET_US))
    }

    /// The wall-clock time of this timestamp.
    pub fn to_system_time(self) -> SystemTime {
        let unix_us = self.0.saturating_add(PG_EPOCH_OFFSET_US);
        if unix_us >= 0 {
            UNIX_EPOCH + Duration::from_micros(unix_us.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_micros(unix_us.unsigned_abs())
        }
    }
}

/// The process id the relay gave a downstream connection in `BackendKeyData`; it names the
/// connection that holds a slot (PostgreSQL's `active_pid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendPid(pub i32);

impl fmt::Display for BackendPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_zero_is_invalid() {
        assert_eq!(TimelineId::new(0), None);
        assert!("0".parse::<TimelineId>().is_err());
        assert!("4294967296".parse::<TimelineId>().is_err());
        assert!("99999999999".parse::<TimelineId>().is_err());
        assert_eq!("2".parse::<TimelineId>().map(TimelineId::get), Ok(2));
        assert_eq!(TimelineId::ONE.history_file_name(), "00000001.history");
        assert_eq!(
            TimelineId::new(0x1A)
                .map(|t| t.history_file_name())
                .as_deref(),
            Some("0000001A.history")
        );
    }

    #[test]
    fn system_id_is_decimal() {
        let s = "7712484032370382654";
        assert_eq!(
            s.parse::<SystemId>().map(|v| v.to_string()).as_deref(),
            Ok(s)
        );
        assert!("".parse::<SystemId>().is_err());
        assert!("-1".parse::<SystemId>().is_err());
        assert!("18446744073709551616".parse::<SystemId>().is_err());
    }

    #[test]
    fn timestamp_matches_capture() {
        // A sendTime observed in a PG 15 capture: 2026-11-26 around 13:37 UTC.
        let t = PgTimestamp(849_017_827_367_225).to_system_time();
        let unix = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        assert_eq!(unix, 849_017_827 + 946_684_800);
        assert_eq!(
            PgTimestamp::from_system_time(t),
            PgTimestamp(849_017_827_367_225)
        );
    }
}
