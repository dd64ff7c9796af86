//! Timeline history files (`timeline.c`: `readTimeLineHistory`, `writeTimeLineHistory`,
//! `tliSwitchPoint`, `tliOfPointInHistory`).
//!
//! A file `%08X.history` lists, oldest first, one line per ancestor timeline:
//! `<parent TLI>\t<switch point %X/%X>\t<reason>\n`. Entry *k* says that timeline covers
//! `[previous switch point, switch point k)`; the file's own timeline covers the rest. A
//! child's file is its parent's file, a blank line, then the new line.

use std::fmt::Write as _;

use crate::types::{Lsn, TimelineId};

/// The largest history file accepted (PostgreSQL files are a few dozen bytes per timeline).
pub const HISTORY_FILE_MAX_SIZE: usize = 1024 * 1024;

/// One line of a history file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// Where the ancestor ended and its child began.
    pub switchpoint: Lsn,
    /// The free text after the switch point (`no recovery target specified`, …), with
    /// leading whitespace removed and invalid UTF-8 replaced.
    pub reason: String,
}

/// A parsed history file of `timeline`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline whose history this is.
    pub timeline: TimelineId,
    /// Its ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// Why a history file is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The file is larger than [`HISTORY_FILE_MAX_SIZE`].
    #[error("history file is too large: {len} bytes (limit {HISTORY_FILE_MAX_SIZE})")]
    TooLarge {
        /// The size found.
        len: usize,
    },
    /// The file contains a NUL byte.
    #[error("history file contains a NUL byte")]
    NulByte,
    /// A line does not start with a timeline number.
    #[error("syntax error in history file at line {line}: expected a numeric timeline ID")]
    MissingTimeline {
        /// The 1-based line number.
        line: usize,
    },
    /// A line has no valid switch point after the timeline.
    #[error(
        "syntax error in history file at line {line}: expected a write-ahead log switchpoint \
         location"
    )]
    MissingSwitchpoint {
        /// The 1-based line number.
        line: usize,
    },
    /// Timeline IDs do not increase.
    #[error(
        "invalid data in history file at line {line}: timeline IDs must be in increasing sequence"
    )]
    NotIncreasing {
        /// The 1-based line number.
        line: usize,
    },
    /// A timeline ID is not below the file's own.
    #[error(
        "invalid data in history file at line {line}: timeline IDs must be less than child \
         timeline's ID {timeline}"
    )]
    NotBelowChild {
        /// The 1-based line number.
        line: usize,
        /// The file's own timeline.
        timeline: TimelineId,
    },
    /// A switch point lies before the previous one.
    #[error("invalid data in history file at line {line}: switchpoints must not go backwards")]
    SwitchpointBackwards {
        /// The 1-based line number.
        line: usize,
    },
}

impl TimelineHistory {
    /// Parses the history file of `timeline` like `readTimeLineHistory`: lines that are
    /// empty or start with `#` (after leading whitespace) are skipped, the others are read as
    /// `%u\t%X/%X` and the rest of the line is the reason. Stricter than PostgreSQL where
    /// PostgreSQL never writes otherwise: no NUL bytes, at most 1 MiB, no timeline 0, no
    /// switch point 0, switch points never decreasing.
    ///
    /// # Errors
    /// A [`HistoryError`] naming the first problem.
    pub fn parse(timeline: TimelineId, content: &[u8]) -> Result<TimelineHistory, HistoryError> {
        if content.len() > HISTORY_FILE_MAX_SIZE {
            return Err(HistoryError::TooLarge { len: content.len() });
        }
        if content.contains(&0) {
            return Err(HistoryError::NulByte);
        }
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (i, raw) in content.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let text = raw.trim_ascii_start();
            if text.is_empty() || text.starts_with(b"#") {
                continue;
            }
            let entry = parse_line(text, line)?;
            if let Some(last) = entries.last() {
                if entry.parent <= last.parent {
                    return Err(HistoryError::NotIncreasing { line });
                }
                if entry.switchpoint < last.switchpoint {
                    return Err(HistoryError::SwitchpointBackwards { line });
                }
            }
            if entry.parent >= timeline {
                return Err(HistoryError::NotBelowChild { line, timeline });
            }
            entries.push(entry);
        }
        Ok(TimelineHistory { timeline, entries })
    }

    /// The file in PostgreSQL's layout: one line per entry, a blank line between entries
    /// (what copying the parent's file and appending `\n` and a line produces).
    pub fn format(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{}\t{}\t{}", e.parent, e.switchpoint, e.reason);
        }
        out
    }

    /// `tliSwitchPoint`: where ancestor `tli` ended, and the next timeline on the path to
    /// this one. `None` when `tli` is not an ancestor: either it is this history's own
    /// timeline (which has not ended) or it is not in this history at all (see
    /// [`TimelineHistory::contains`]).
    pub fn switch_point(&self, tli: TimelineId) -> Option<(Lsn, TimelineId)> {
        let i = self.entries.iter().position(|e| e.parent == tli)?;
        let end = self.entries.get(i)?.switchpoint;
        let next = self.entries.get(i + 1).map_or(self.timeline, |e| e.parent);
        Some((end, next))
    }

    /// `tliOfPointInHistory`: the timeline that wrote `lsn`.
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map_or(self.timeline, |e| e.parent)
    }

    /// Whether `tli` is this timeline or one of its ancestors.
    pub fn contains(&self, tli: TimelineId) -> bool {
        tli == self.timeline || self.entries.iter().any(|e| e.parent == tli)
    }
}

/// Parses `%u\t%X/%X[\t<reason>]` from a line with leading whitespace already removed.
fn parse_line(text: &[u8], line: usize) -> Result<HistoryEntry, HistoryError> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let (tli, rest) = text.split_at(digits);
    let parent = std::str::from_utf8(tli)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .and_then(TimelineId::new)
        .ok_or(HistoryError::MissingTimeline { line })?;
    let missing = HistoryError::MissingSwitchpoint { line };
    let rest = rest.trim_ascii_start();
    if rest.len() + digits == text.len() {
        // No whitespace between the timeline and the switch point.
        return Err(missing);
    }
    let lsn_len = rest.iter().take_while(|b| !b.is_ascii_whitespace()).count();
    let (lsn, reason) = rest.split_at(lsn_len);
    let switchpoint = std::str::from_utf8(lsn)
        .ok()
        .and_then(|s| s.parse::<Lsn>().ok())
        .filter(|l| l.is_valid())
        .ok_or(missing)?;
    Ok(HistoryEntry {
        parent,
        switchpoint,
        reason: String::from_utf8_lossy(reason.trim_ascii_start()).into_owned(),
    })
}

/// The timeline of a history file name: exactly `%08X.history` (8 uppercase hex digits,
/// not 0), nothing else: no path, no lowercase, no other suffix.
pub fn history_file_name_parse(name: &str) -> Option<TimelineId> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().and_then(TimelineId::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn entry(parent: u32, lsn: u64, reason: &str) -> HistoryEntry {
        HistoryEntry {
            parent: tli(parent),
            switchpoint: Lsn(lsn),
            reason: reason.to_string(),
        }
    }

    #[test]
    fn parses_captured_file() {
        let text = b"1\t0/362FB00\tno recovery target specified\n";
        assert_eq!(text.len(), 41);
        let h = TimelineHistory::parse(tli(2), text).unwrap();
        assert_eq!(
            h.entries,
            vec![entry(1, 0x362_FB00, "no recovery target specified")]
        );
        assert_eq!(h.format().as_bytes(), text);
        assert_eq!(h.switch_point(tli(1)), Some((Lsn(0x362_FB00), tli(2))));
        assert_eq!(h.switch_point(tli(2)), None);
        assert_eq!(h.timeline_of(Lsn(0x362_FAFF)), tli(1));
        assert_eq!(h.timeline_of(Lsn(0x362_FB00)), tli(2));
        assert!(h.contains(tli(1)) && h.contains(tli(2)) && !h.contains(tli(3)));
    }

    #[test]
    fn parses_grandchild_layout() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    2\t0/5000060\tno recovery target specified\n";
        let h = TimelineHistory::parse(tli(3), text.as_bytes()).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.format(), text);
        assert_eq!(h.switch_point(tli(1)), Some((Lsn(0x300_0158), tli(2))));
        assert_eq!(h.switch_point(tli(2)), Some((Lsn(0x500_0060), tli(3))));
        assert_eq!(h.timeline_of(Lsn(0)), tli(1));
        assert_eq!(h.timeline_of(Lsn(0x400_0000)), tli(2));
        assert_eq!(h.timeline_of(Lsn(u64::MAX)), tli(3));
    }

    #[test]
    fn skips_comments_and_blank_lines_and_tolerates_spacing() {
        let text = b"# comment\n  \n\t# indented comment\n 1 0/10 before 2000-01-01\n\n";
        let h = TimelineHistory::parse(tli(5), text).unwrap();
        assert_eq!(h.entries, vec![entry(1, 0x10, "before 2000-01-01")]);
        let empty = TimelineHistory::parse(tli(2), b"").unwrap();
        assert!(empty.entries.is_empty());
        assert_eq!(empty.timeline_of(Lsn(5)), tli(2));
        assert_eq!(empty.format(), "");
    }

    #[test]
    fn rejects_bad_files() {
        let bad = |t: u32, text: &[u8]| TimelineHistory::parse(tli(t), text).unwrap_err();
        assert_eq!(
            bad(3, b"x\t0/1\n"),
            HistoryError::MissingTimeline { line: 1 }
        );
        assert_eq!(
            bad(3, b"0\t0/1\n"),
            HistoryError::MissingTimeline { line: 1 }
        );
        assert_eq!(
            bad(3, b"99999999999\t0/1\n"),
            HistoryError::MissingTimeline { line: 1 }
        );
        assert_eq!(
            bad(3, b"\n1\n"),
            HistoryError::MissingSwitchpoint { line: 2 }
        );
        assert_eq!(
            bad(3, b"10/1\n"),
            HistoryError::MissingSwitchpoint { line: 1 }
        );
        assert_eq!(
            bad(3, b"1\t0/G\n"),
            HistoryError::MissingSwitchpoint { line: 1 }
        );
        assert_eq!(
            bad(3, b"1\t0/0\n"),
            HistoryError::MissingSwitchpoint { line: 1 }
        );
        assert_eq!(
            bad(3, b"1\t123456789/0\n"),
            HistoryError::MissingSwitchpoint { line: 1 }
        );
        assert_eq!(
            bad(4, b"2\t0/1\tx\n1\t0/2\tx\n"),
            HistoryError::NotIncreasing { line: 2 }
        );
        assert_eq!(
            bad(4, b"2\t0/1\tx\n2\t0/2\tx\n"),
            HistoryError::NotIncreasing { line: 2 }
        );
        assert_eq!(
            bad(4, b"1\t0/5\tx\n2\t0/4\tx\n"),
            HistoryError::SwitchpointBackwards { line: 2 }
        );
        assert_eq!(
            bad(2, b"2\t0/5\tx\n"),
            HistoryError::NotBelowChild {
                line: 1,
                timeline: tli(2)
            }
        );
        assert_eq!(bad(2, b"1\t0/5\tx\0\n"), HistoryError::NulByte);
        let huge = vec![b'#'; HISTORY_FILE_MAX_SIZE + 1];
        assert_eq!(
            bad(2, &huge),
            HistoryError::TooLarge {
                len: HISTORY_FILE_MAX_SIZE + 1
            }
        );
        assert!(bad(2, b"1\t0/5\tx\0\n").to_string().contains("NUL"));
    }

    #[test]
    fn equal_switchpoints_and_odd_reasons_round_trip() {
        let text = "1\t0/5\t\n\n2\t0/5\tat restore point \"\u{e9}t\u{e9}\"\t x \r\n";
        let h = TimelineHistory::parse(tli(3), text.as_bytes()).unwrap();
        assert_eq!(h.entries[0].reason, "");
        assert_eq!(
            h.entries[1].reason,
            "at restore point \"\u{e9}t\u{e9}\"\t x \r"
        );
        assert_eq!(h.timeline_of(Lsn(5)), tli(3));
        let again = TimelineHistory::parse(tli(3), h.format().as_bytes()).unwrap();
        assert_eq!(again, h);
        let latin1 = TimelineHistory::parse(tli(2), b"1\t0/5\t\xE9\n").unwrap();
        assert_eq!(latin1.entries[0].reason, "\u{FFFD}");
    }

    #[test]
    fn file_names() {
        assert_eq!(history_file_name_parse("00000002.history"), Some(tli(2)));
        assert_eq!(history_file_name_parse("0000001A.history"), Some(tli(26)));
        assert_eq!(
            history_file_name_parse("FFFFFFFF.history"),
            Some(tli(u32::MAX))
        );
        for bad in [
            "00000000.history",
            "0000001a.history",
            "0000002.history",
            "000000002.history",
            "00000002.History",
            "00000002.history.tmp",
            "00000002.historyx",
            "00000002",
            ".history",
            "../00000002.history",
            "x/00000002.history",
            "+0000002.history",
            "0000 002.history",
            "00000002.partial",
            "",
        ] {
            assert_eq!(history_file_name_parse(bad), None, "{bad:?}");
        }
        for n in [1, 2, 0x1A, u32::MAX] {
            assert_eq!(
                history_file_name_parse(&tli(n).history_file_name()),
                Some(tli(n))
            );
        }
    }
}
