//! File names and directory listing of the WAL directory, as in `pg_wal` and `pg_receivewal`.
//!
//! A segment is `%08X%08X%08X` (`XLogFileName`); the one being written is `NAME.partial`
//! (`IsPartialXLogFileName`). Names that are neither, such as history files or an operator's
//! notes, are not segments and are left alone.

use std::fs;
use std::path::{Path, PathBuf};

use crate::types::{Lsn, SegmentName, WalSegmentSize};

use super::error::{StoreError, io_err};

/// The suffix of the segment being written.
const PARTIAL: &str = ".partial";

/// A segment file found in the WAL directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    /// Its timeline and segment number.
    pub name: SegmentName,
    /// Whether it carries the `.partial` suffix.
    pub partial: bool,
    /// Its length in bytes.
    pub len: u64,
}

/// The path of a segment file, complete or partial.
pub(crate) fn segment_path(
    dir: &Path,
    name: SegmentName,
    size: WalSegmentSize,
    partial: bool,
) -> PathBuf {
    let mut file = name.file_name(size);
    if partial {
        file.push_str(PARTIAL);
    }
    dir.join(file)
}

/// The first LSN after segment `name`, or `None` at the end of the LSN space.
pub(crate) fn segment_end(name: SegmentName, size: WalSegmentSize) -> Option<Lsn> {
    name.segno.next().and_then(|n| size.start_of(n))
}

/// Every segment file (complete or partial) directly in `dir`, in no particular order.
pub(crate) fn list_segments(
    dir: &Path,
    size: WalSegmentSize,
) -> Result<Vec<SegmentFile>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let (base, partial) = match file_name.strip_suffix(PARTIAL) {
            Some(base) => (base, true),
            None => (file_name, false),
        };
        let Some(name) = SegmentName::parse(base, size) else {
            continue;
        };
        let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
        if meta.is_file() {
            found.push(SegmentFile {
                name,
                partial,
                len: meta.len(),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SegmentNo, TimelineId};

    #[test]
    fn lists_segments_only() {
        let t = tempfile::TempDir::new().unwrap();
        let size = WalSegmentSize::new(1 << 20).unwrap();
        for (name, len) in [
            ("000000010000000000000007", 3),
            ("000000020000000000000008.partial", 5),
            ("00000002.history", 1),
            ("000000010000000000000009.tmp", 1),
            ("000000010000000000000001.gz", 1),
            ("000000010000000000001000", 1),
        ] {
            fs::write(t.path().join(name), vec![0; len]).unwrap();
        }
        fs::create_dir(t.path().join("00000001000000000000000A")).unwrap();
        let mut got = list_segments(t.path(), size).unwrap();
        got.sort_by_key(|f| f.name);
        let seg = |tli, n| SegmentName {
            timeline: TimelineId::new(tli).unwrap(),
            segno: SegmentNo(n),
        };
        assert_eq!(
            got,
            vec![
                SegmentFile {
                    name: seg(1, 7),
                    partial: false,
                    len: 3
                },
                SegmentFile {
                    name: seg(2, 8),
                    partial: true,
                    len: 5
                },
            ]
        );
        assert_eq!(
            segment_path(t.path(), seg(2, 8), size, true),
            t.path().join("000000020000000000000008.partial")
        );
        assert_eq!(segment_end(seg(1, 7), size), Some(Lsn(8 << 20)));
    }
}
