//! A transaction-id epoch above 0 on a stopped cluster, to test what depends on 64-bit
//! transaction ids without using 2^32 of them.
//!
//! `pg_resetwal -e` does it where the build has one. The server-only builds of older majors
//! have none, so [`set_in_place`] changes what `-e` changes that the server reads at startup:
//! the epoch in `pg_control`'s copy of the last checkpoint, and in that checkpoint record in
//! WAL, each with its CRC-32C recomputed. The server checks both CRCs when it starts, and
//! `pg_control_checkpoint()` then reports the epoch.
//!
//! Layouts, from `pg_control.h` of 12 to 18: `ControlFileData` starts with
//! `system_identifier` (8 bytes), `pg_control_version`, `catalog_version_no`, `state` (4 each),
//! `time` (8, at 24), `checkPoint` (the record's LSN, at 32) and `checkPointCopy` (at 40), and
//! ends with its CRC over everything before it. In `CheckPoint`, `ThisTimeLineID` is at 8 and
//! the `FullTransactionId` `nextXid` at 24, its epoch the high half at 28.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{LocalPgError, Result, io_err};
use crate::types::{Lsn, SegmentName, TimelineId, WAL_PAGE_SIZE, WalSegmentSize};

/// `SizeOfXLogRecord`: the record header, its CRC in the last 4 bytes.
const SIZE_OF_XLOG_RECORD: usize = 24;
/// Where `checkPoint` and `checkPointCopy` are in `ControlFileData`.
const CONTROL_CHECKPOINT_LSN: usize = 32;
const CONTROL_CHECKPOINT_COPY: usize = 40;
/// `ThisTimeLineID` in `CheckPoint`.
const CHECKPOINT_TIMELINE: usize = 8;
/// The checkpoint record's main data starts after its header and a two-byte data header.
const RECORD_CHECKPOINT: usize = SIZE_OF_XLOG_RECORD + 2;

/// Where the epoch is in `CheckPoint`.
const CHECKPOINT_EPOCH: usize = 28;

fn unexpected(what: &str) -> LocalPgError {
    LocalPgError::Unexpected {
        command: "set the transaction-id epoch".into(),
        output: what.into(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| unexpected("a field beyond the end"))
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) -> Result<()> {
    bytes
        .get_mut(at..at + 4)
        .ok_or_else(|| unexpected("a field beyond the end"))?
        .copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// A record's CRC: over its body, then over its header up to the CRC (`XLogRecordAssemble`).
fn record_crc(record: &[u8]) -> Option<u32> {
    let body = record.get(SIZE_OF_XLOG_RECORD..)?;
    let header = record.get(..SIZE_OF_XLOG_RECORD - 4)?;
    Some(crc32c::crc32c_append(crc32c::crc32c(body), header))
}

/// Where `ControlFileData`'s CRC is: the first 4-aligned offset whose bytes are the CRC of
/// everything before them.
fn control_crc_offset(control: &[u8]) -> Result<usize> {
    (CONTROL_CHECKPOINT_COPY..control.len().min(1024))
        .step_by(4)
        .find(|&at| {
            let before = control.get(..at).unwrap_or_default();
            u32_at(control, at).is_ok_and(|crc| crc == crc32c::crc32c(before))
        })
        .ok_or_else(|| unexpected("no CRC found in pg_control"))
}

/// Sets the epoch of the stopped, cleanly shut down cluster in `data` (of PostgreSQL 12 to
/// 18) to `epoch`, as `pg_resetwal -e` would for the server's startup.
///
/// # Errors
/// When `pg_control` or the checkpoint record is not laid out as expected, or a file cannot
/// be read or written.
pub fn set_in_place(data: &Path, epoch: u32) -> Result<()> {
    let control_path = data.join("global/pg_control");
    let mut control = fs::read(&control_path).map_err(io_err("read pg_control"))?;
    let crc_at = control_crc_offset(&control)?;
    let lsn = Lsn(
        (u64::from(u32_at(&control, CONTROL_CHECKPOINT_LSN + 4)?) << 32)
            | u64::from(u32_at(&control, CONTROL_CHECKPOINT_LSN)?),
    );
    let timeline = TimelineId::new(u32_at(
        &control,
        CONTROL_CHECKPOINT_COPY + CHECKPOINT_TIMELINE,
    )?)
    .ok_or_else(|| unexpected("timeline 0 in pg_control"))?;
    let epoch_at = CHECKPOINT_EPOCH;
    put_u32(&mut control, CONTROL_CHECKPOINT_COPY + epoch_at, epoch)?;
    let crc = crc32c::crc32c(control.get(..crc_at).unwrap_or_default());
    put_u32(&mut control, crc_at, crc)?;

    let (segment, offset) = checkpoint_segment(data, timeline, lsn)?;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .map_err(io_err("open the checkpoint's segment"))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek to the checkpoint"))?;
    let mut header = [0_u8; SIZE_OF_XLOG_RECORD];
    file.read_exact(&mut header)
        .map_err(io_err("read the checkpoint record"))?;
    let len = usize::try_from(u32_at(&header, 0)?).map_err(|_| unexpected("record length"))?;
    let page = WAL_PAGE_SIZE as usize;
    let page_offset = usize::try_from(offset % u64::from(WAL_PAGE_SIZE)).unwrap_or(usize::MAX);
    if len < RECORD_CHECKPOINT + epoch_at + 4 || page_offset.saturating_add(len) > page {
        return Err(unexpected("the checkpoint record is not whole on one page"));
    }
    let mut record = vec![0_u8; len];
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek to the checkpoint"))?;
    file.read_exact(&mut record)
        .map_err(io_err("read the checkpoint record"))?;
    if record_crc(&record) != Some(u32_at(&record, SIZE_OF_XLOG_RECORD - 4)?) {
        return Err(unexpected("the checkpoint record's CRC does not match"));
    }
    put_u32(&mut record, RECORD_CHECKPOINT + epoch_at, epoch)?;
    let crc = record_crc(&record).ok_or_else(|| unexpected("a short record"))?;
    put_u32(&mut record, SIZE_OF_XLOG_RECORD - 4, crc)?;
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek to the checkpoint"))?;
    file.write_all(&record)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write the checkpoint record"))?;

    let mut control_file = fs::OpenOptions::new()
        .write(true)
        .open(&control_path)
        .map_err(io_err("open pg_control"))?;
    control_file
        .write_all(&control)
        .and_then(|()| control_file.sync_all())
        .map_err(io_err("write pg_control"))
}

/// The segment file holding `lsn` on `timeline`, and the offset of `lsn` in it. The segment
/// size is that of the files in `pg_wal`.
fn checkpoint_segment(
    data: &Path,
    timeline: TimelineId,
    lsn: Lsn,
) -> Result<(std::path::PathBuf, u64)> {
    let wal = data.join("pg_wal");
    for entry in fs::read_dir(&wal).map_err(io_err("list pg_wal"))? {
        let entry = entry.map_err(io_err("list pg_wal"))?;
        let bytes = entry.metadata().map_err(io_err("stat a segment"))?.len();
        let Some(size) = u32::try_from(bytes)
            .ok()
            .and_then(|b| WalSegmentSize::new(b).ok())
        else {
            continue;
        };
        let segno = size.segment_of(lsn);
        let path = wal.join(SegmentName { timeline, segno }.file_name(size));
        if path.is_file() {
            return Ok((path, u64::from(size.offset_in_segment(lsn))));
        }
    }
    Err(unexpected("no segment holds the checkpoint"))
}
