//! Simple-query results of the replication commands a client sends upstream, and their checks.
//!
//! A replication command answers with RowDescription, DataRows and CommandComplete (or an
//! ErrorResponse), then ReadyForQuery. [`QueryResult`] collects that with caps on rows and
//! bytes; the typed readers check what `libpqwalreceiver.c` and `receivelog.c` check:
//! `IDENTIFY_SYSTEM` has at least 3 columns and exactly one row, `TIMELINE_HISTORY` names the
//! file of the timeline that was asked for, the end-of-timeline result moves forward.

use bytes::Bytes;

use crate::types::{Lsn, SystemId, TimelineId, WalSegmentSize};
use crate::wal::TimelineHistory;

/// Most rows a replication command result may carry.
pub const MAX_RESULT_ROWS: usize = 64;

/// Most bytes of row data a replication command result may carry (history files are small).
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// A result set: column names and type OIDs, rows of text values, and the command tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names and type OIDs from RowDescription.
    pub columns: Vec<(String, u32)>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// Every CommandComplete tag, in order.
    pub tags: Vec<String>,
    bytes: usize,
}

/// Why a result set is not what the command should return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// The shape is wrong: columns or rows.
    #[error(
        "{command}: invalid response from server: got {rows} rows and {columns} fields, expected {expected}"
    )]
    Shape {
        /// The command.
        command: &'static str,
        /// Rows received.
        rows: usize,
        /// Columns received.
        columns: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// A value cannot be read.
    #[error("{command}: invalid {field} in server response: \"{value}\"")]
    Value {
        /// The command.
        command: &'static str,
        /// The column.
        field: &'static str,
        /// The offending text, shortened.
        value: String,
    },
    /// More rows or bytes than any real server sends.
    #[error("result set too large: more than {MAX_RESULT_ROWS} rows or {MAX_RESULT_BYTES} bytes")]
    TooLarge,
    /// The server named a different history file than the one asked for.
    #[error(
        "primary reported unexpected file name for timeline history file of timeline {expected}: \"{got}\""
    )]
    HistoryFileName {
        /// The timeline asked for.
        expected: TimelineId,
        /// The name received, shortened.
        got: String,
    },
    /// The end-of-timeline result does not move forward.
    #[error("server reported unexpected next timeline {next}, following timeline {current}")]
    NextTimeline {
        /// The timeline that ended.
        current: TimelineId,
        /// The timeline reported.
        next: u32,
    },
    /// The next timeline starts after the end of the one streamed.
    #[error(
        "server stopped streaming timeline {tli} at {stop}, but reported next timeline {next} to begin at {start}"
    )]
    NextTimelineStart {
        /// The timeline that ended.
        tli: TimelineId,
        /// Where streaming stopped.
        stop: Lsn,
        /// The next timeline.
        next: TimelineId,
        /// Where the server says it begins.
        start: Lsn,
    },
}

impl QueryResult {
    /// Takes a RowDescription.
    pub fn on_row_description(&mut self, columns: Vec<(String, u32)>) {
        self.columns = columns;
    }

    /// Takes a DataRow.
    ///
    /// # Errors
    /// [`ResultError::TooLarge`] past the row or byte caps.
    pub fn on_data_row(&mut self, row: Vec<Option<Bytes>>) -> Result<(), ResultError> {
        self.bytes = self
            .bytes
            .saturating_add(row.iter().flatten().map(Bytes::len).sum::<usize>());
        if self.rows.len() >= MAX_RESULT_ROWS || self.bytes > MAX_RESULT_BYTES {
            return Err(ResultError::TooLarge);
        }
        self.rows.push(row);
        Ok(())
    }

    /// Takes a CommandComplete tag.
    pub fn on_command_complete(&mut self, tag: String) {
        self.tags.push(tag);
    }

    fn single_row(
        &self,
        command: &'static str,
        min_cols: usize,
        expected: &'static str,
    ) -> Result<&[Option<Bytes>], ResultError> {
        match self.rows.as_slice() {
            [row] if row.len() >= min_cols && self.columns.len() == row.len() => Ok(row),
            _ => Err(ResultError::Shape {
                command,
                rows: self.rows.len(),
                columns: self.columns.len(),
                expected,
            }),
        }
    }
}

fn text<'a>(
    row: &'a [Option<Bytes>],
    i: usize,
    command: &'static str,
    field: &'static str,
) -> Result<Option<&'a str>, ResultError> {
    match row.get(i) {
        Some(Some(v)) => std::str::from_utf8(v)
            .map(Some)
            .map_err(|_| ResultError::Value {
                command,
                field,
                value: String::from_utf8_lossy(v.get(..v.len().min(64)).unwrap_or_default()).into(),
            }),
        _ => Ok(None),
    }
}

fn parsed<T: std::str::FromStr>(
    row: &[Option<Bytes>],
    i: usize,
    command: &'static str,
    field: &'static str,
) -> Result<T, ResultError> {
    let value = text(row, i, command, field)?;
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ResultError::Value {
            command,
            field,
            value: value.unwrap_or("NULL").chars().take(64).collect(),
        })
}

/// The `IDENTIFY_SYSTEM` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The system identifier.
    pub system_id: SystemId,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's flush position.
    pub xlogpos: Lsn,
}

impl IdentifySystem {
    /// Reads the result of `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    /// A wrong shape, a system id that is not a decimal number, timeline 0, or a bad LSN.
    pub fn from_result(r: &QueryResult) -> Result<IdentifySystem, ResultError> {
        const C: &str = "IDENTIFY_SYSTEM";
        let row = r.single_row(C, 3, "1 row and 3 or more fields")?;
        Ok(IdentifySystem {
            system_id: parsed(row, 0, C, "systemid")?,
            timeline: parsed(row, 1, C, "timeline")?,
            xlogpos: parsed(row, 2, C, "xlogpos")?,
        })
    }
}

/// Reads the result of `SHOW wal_segment_size`.
///
/// # Errors
/// A wrong shape, or a size that is not a power of two from 1 MB to 1 GB.
pub fn segment_size_from_show(r: &QueryResult) -> Result<WalSegmentSize, ResultError> {
    const C: &str = "SHOW wal_segment_size";
    let row = r.single_row(C, 1, "1 row and 1 field")?;
    let value = text(row, 0, C, "wal_segment_size")?.unwrap_or("NULL");
    WalSegmentSize::parse_show(value).map_err(|_| ResultError::Value {
        command: C,
        field: "wal_segment_size",
        value: value.chars().take(64).collect(),
    })
}

/// Reads the first text column of a one-row result (`SHOW server_version` and the like).
///
/// # Errors
/// A wrong shape or a NULL value.
pub fn single_text(r: &QueryResult, command: &'static str) -> Result<String, ResultError> {
    let row = r.single_row(command, 1, "1 row and 1 field")?;
    text(row, 0, command, "value")?
        .map(str::to_owned)
        .ok_or_else(|| ResultError::Value {
            command,
            field: "value",
            value: "NULL".into(),
        })
}

/// A timeline history file as `TIMELINE_HISTORY` returned it, checked and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFile {
    /// The raw content, to store byte for byte.
    pub content: Bytes,
    /// The parsed history.
    pub history: TimelineHistory,
}

impl HistoryFile {
    /// Reads the result of `TIMELINE_HISTORY tli`.
    ///
    /// # Errors
    /// A wrong shape, a file name other than `tli`'s own (no path characters can pass), or
    /// content that is not a valid history of `tli`.
    pub fn from_result(r: &QueryResult, tli: TimelineId) -> Result<HistoryFile, ResultError> {
        const C: &str = "TIMELINE_HISTORY";
        let row = r.single_row(C, 2, "1 row and 2 fields")?;
        let name = text(row, 0, C, "filename")?.unwrap_or("NULL");
        if name != tli.history_file_name() {
            return Err(ResultError::HistoryFileName {
                expected: tli,
                got: name.chars().take(64).collect(),
            });
        }
        let content = row.get(1).cloned().flatten().unwrap_or_default();
        let history = TimelineHistory::parse(tli, &content).map_err(|e| ResultError::Value {
            command: C,
            field: "content",
            value: e.to_string(),
        })?;
        Ok(HistoryFile { content, history })
    }
}

/// The `READ_REPLICATION_SLOT` row (PostgreSQL 15 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSlotRow {
    /// Whether the slot exists (its `slot_type` is not NULL).
    pub exists: bool,
    /// Its `restart_lsn`, if it holds WAL.
    pub restart_lsn: Option<Lsn>,
}

impl ReadSlotRow {
    /// Reads the result of `READ_REPLICATION_SLOT`.
    ///
    /// # Errors
    /// A wrong shape or a bad LSN.
    pub fn from_result(r: &QueryResult) -> Result<ReadSlotRow, ResultError> {
        const C: &str = "READ_REPLICATION_SLOT";
        let row = r.single_row(C, 3, "1 row and 3 fields")?;
        let exists = text(row, 0, C, "slot_type")?.is_some();
        let restart_lsn = match text(row, 1, C, "restart_lsn")? {
            None => None,
            Some(_) => Some(parsed(row, 1, C, "restart_lsn")?),
        };
        Ok(ReadSlotRow {
            exists,
            restart_lsn,
        })
    }
}

/// The result a walsender sends when a timeline it streamed has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOfTimeline {
    /// The next timeline.
    pub next: TimelineId,
    /// Where the next timeline begins (the switch point).
    pub start: Lsn,
}

impl EndOfTimeline {
    /// Reads the `next_tli, next_tli_startpos` row, checked the way `receivelog.c` does:
    /// the next timeline is newer and starts no later than where streaming stopped.
    ///
    /// # Errors
    /// A wrong shape, values that do not parse, or a result that does not move forward.
    pub fn from_result(
        r: &QueryResult,
        current: TimelineId,
        stop: Lsn,
    ) -> Result<EndOfTimeline, ResultError> {
        const C: &str = "START_REPLICATION";
        let row = r.single_row(C, 2, "1 row and 2 fields")?;
        let next_raw: u32 = parsed(row, 0, C, "next_tli")?;
        let start: Lsn = parsed(row, 1, C, "next_tli_startpos")?;
        let next = TimelineId::new(next_raw).filter(|n| *n > current).ok_or(
            ResultError::NextTimeline {
                current,
                next: next_raw,
            },
        )?;
        if start > stop {
            return Err(ResultError::NextTimelineStart {
                tli: current,
                stop,
                next,
                start,
            });
        }
        Ok(EndOfTimeline { next, start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(cols: &[&str], rows: &[&[Option<&str>]]) -> QueryResult {
        let mut r = QueryResult::default();
        r.on_row_description(cols.iter().map(|c| (c.to_string(), 25)).collect());
        for row in rows {
            r.on_data_row(
                row.iter()
                    .map(|v| v.map(|s| Bytes::from(s.to_owned())))
                    .collect(),
            )
            .unwrap();
        }
        r
    }

    #[test]
    fn identify_system_as_captured() {
        let r = result(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[&[
                Some("7712484032370382654"),
                Some("1"),
                Some("0/3000000"),
                None,
            ]],
        );
        let id = IdentifySystem::from_result(&r).unwrap();
        assert_eq!(id.system_id, SystemId(7_712_484_032_370_382_654));
        assert_eq!(id.timeline.get(), 1);
        assert_eq!(id.xlogpos, Lsn(0x300_0000));
    }

    #[test]
    fn identify_system_rejects_hostile_rows() {
        let cols = ["systemid", "timeline", "xlogpos", "dbname"];
        for row in [
            [Some("x"), Some("1"), Some("0/1"), None],
            [Some("1"), Some("0"), Some("0/1"), None],
            [Some("1"), Some("1"), Some("garbage"), None],
            [None, Some("1"), Some("0/1"), None],
        ] {
            assert!(
                IdentifySystem::from_result(&result(&cols, &[&row])).is_err(),
                "{row:?}"
            );
        }
        assert!(IdentifySystem::from_result(&result(&cols, &[])).is_err());
        let two: &[Option<&str>] = &[Some("1"), Some("1"), Some("0/1"), None];
        assert!(IdentifySystem::from_result(&result(&cols, &[two, two])).is_err());
        assert!(
            IdentifySystem::from_result(&result(&["a", "b"], &[&[Some("1"), Some("1")]])).is_err()
        );
    }

    #[test]
    fn segment_size() {
        let ok = result(&["wal_segment_size"], &[&[Some("16MB")]]);
        assert_eq!(
            segment_size_from_show(&ok).unwrap(),
            WalSegmentSize::DEFAULT
        );
        for bad in ["17MB", "0", "banana"] {
            assert!(
                segment_size_from_show(&result(&["wal_segment_size"], &[&[Some(bad)]])).is_err()
            );
        }
    }

    #[test]
    fn history_name_must_match() {
        let tli = TimelineId::new(2).unwrap();
        let content = "1\t0/362FB00\tno recovery target specified\n";
        let ok = result(
            &["filename", "content"],
            &[&[Some("00000002.history"), Some(content)]],
        );
        let h = HistoryFile::from_result(&ok, tli).unwrap();
        assert_eq!(&h.content[..], content.as_bytes());
        for name in [
            "../../../../tmp/x.history",
            "00000003.history",
            "00000002.HISTORY",
        ] {
            let bad = result(&["filename", "content"], &[&[Some(name), Some(content)]]);
            assert!(matches!(
                HistoryFile::from_result(&bad, tli),
                Err(ResultError::HistoryFileName { .. })
            ));
        }
        let garbage = result(
            &["filename", "content"],
            &[&[Some("00000002.history"), Some("x\n")]],
        );
        assert!(HistoryFile::from_result(&garbage, tli).is_err());
    }

    #[test]
    fn slot_info() {
        let missing = result(
            &["slot_type", "restart_lsn", "restart_tli"],
            &[&[None, None, None]],
        );
        assert_eq!(
            ReadSlotRow::from_result(&missing).unwrap(),
            ReadSlotRow {
                exists: false,
                restart_lsn: None
            }
        );
        let present = result(
            &["slot_type", "restart_lsn", "restart_tli"],
            &[&[Some("physical"), Some("0/3000000"), Some("1")]],
        );
        assert_eq!(
            ReadSlotRow::from_result(&present).unwrap(),
            ReadSlotRow {
                exists: true,
                restart_lsn: Some(Lsn(0x300_0000))
            }
        );
    }

    #[test]
    fn end_of_timeline_moves_forward() {
        let one = TimelineId::ONE;
        let ok = result(
            &["next_tli", "next_tli_startpos"],
            &[&[Some("2"), Some("0/362FB00")]],
        );
        let e = EndOfTimeline::from_result(&ok, one, Lsn(0x362_FB00)).unwrap();
        assert_eq!((e.next.get(), e.start), (2, Lsn(0x362_FB00)));
        assert!(EndOfTimeline::from_result(&ok, one, Lsn(0x362_FA00)).is_err());
        let back = result(
            &["next_tli", "next_tli_startpos"],
            &[&[Some("1"), Some("0/1")]],
        );
        assert!(EndOfTimeline::from_result(&back, one, Lsn(0x362_FB00)).is_err());
    }

    #[test]
    fn caps_rows() {
        let mut r = QueryResult::default();
        for _ in 0..MAX_RESULT_ROWS {
            r.on_data_row(vec![None]).unwrap();
        }
        assert_eq!(r.on_data_row(vec![None]), Err(ResultError::TooLarge));
        let mut big = QueryResult::default();
        assert!(
            big.on_data_row(vec![Some(Bytes::from(vec![0u8; MAX_RESULT_BYTES + 1]))])
                .is_err()
        );
    }
}
