//! The streaming WAL validator: checks page headers and records as bytes arrive, in O(1)
//! memory, the way `xlogreader.c` reads them (`XLogReaderValidatePageHeader`,
//! `XLogDecodeNextRecord`, `ValidXLogRecordHeader`, `ValidXLogRecord`, `XLogFindNextRecord`).
//!
//! It never buffers a record: it keeps the 24 header bytes (even when split across pages), a
//! running CRC-32C of the body and the bytes still to come. Bytes may arrive in any split.
//! Beyond PostgreSQL's reader it also checks that MAXALIGN padding and the space after an
//! `XLOG_SWITCH` record are zero, as PostgreSQL writes them. On the way it notes the
//! `nextXid` of each checkpoint record ([`WalValidator::next_xid`]).

use crate::types::{Lsn, TimelineId, WAL_PAGE_SIZE};

use super::checkpoint::CheckpointCapture;
use super::page::{
    PageHeader, SIZE_OF_LONG_PAGE_HEADER, WalCheckConfig, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, page_header_size,
};
use super::record::{
    MAXIMUM_ALIGNOF, RecordHeader, SIZE_OF_XLOG_RECORD, check_total_length, finish_record_crc,
};
use super::{WalError, WalErrorKind};

const PAGE: u64 = WAL_PAGE_SIZE as u64;
const HEADER: usize = SIZE_OF_XLOG_RECORD;

/// Everything needed to resume validation exactly at a record boundary
/// ([`WalValidator::valid_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordBoundary {
    /// The boundary: the MAXALIGNed end of the last verified record, or a point inside the
    /// zero space after an `XLOG_SWITCH`, or the start position before any record.
    pub lsn: Lsn,
    /// The start of the last verified record, which the next `xl_prev` must equal. `None`
    /// before the first record: then the next `xl_prev` only has to lie before its record,
    /// and a page starting at `lsn` may begin with a continuation, which is skipped.
    pub prev: Option<Lsn>,
    /// The highest `xlp_tli` seen up to `lsn`.
    pub timeline: Option<TimelineId>,
    /// The highest `xlp_tli` allowed, if capped.
    pub max_timeline: Option<TimelineId>,
    /// The page magic learnt from the first page.
    pub page_magic: Option<u16>,
    /// Whether `lsn` is inside the zero space after an `XLOG_SWITCH` record (then everything
    /// up to the end of its segment must be zero).
    pub in_switch_padding: bool,
}

/// Where the validator is inside the record stream.
#[derive(Clone, Copy, Debug)]
enum State {
    /// At the start page: it may begin with the continuation of an earlier record.
    FirstPage,
    /// Skipping, unchecked, the rest of a record that began before the start.
    Skip { remaining: u32 },
    /// Collecting a record header; `start` is meaningful once `have > 0`.
    Header {
        start: u64,
        buf: [u8; HEADER],
        have: usize,
    },
    /// Checking a record body.
    Body {
        start: u64,
        header: [u8; HEADER],
        remaining: u32,
        crc: u32,
    },
    /// Zero MAXALIGN padding up to `end`.
    Padding { end: u64 },
    /// Zeros after `XLOG_SWITCH` up to `end`, the segment end, page headers included.
    SwitchZeros { end: u64 },
}

impl State {
    const NEXT_RECORD: State = State::Header {
        start: 0,
        buf: [0; HEADER],
        have: 0,
    };
}

/// What the page being entered must say about continuation.
enum Continuation {
    /// The start page: a continuation is allowed and skipped.
    Optional,
    /// A record starts right after the header: no continuation.
    None,
    /// A record is incomplete: `remaining` bytes of the record started at `at` must follow.
    Rest { at: u64, remaining: u32 },
}

/// The streaming validator. See the module documentation.
#[derive(Clone, Debug)]
pub struct WalValidator {
    cfg: WalCheckConfig,
    pos: u64,
    page_header: [u8; SIZE_OF_LONG_PAGE_HEADER],
    state: State,
    prev: Option<Lsn>,
    timeline: Option<TimelineId>,
    max_timeline: Option<TimelineId>,
    magic: Option<u16>,
    boundary: RecordBoundary,
    /// The body of the checkpoint record being read, if the current record is one.
    checkpoint: Option<CheckpointCapture>,
    /// `nextXid` of the last checkpoint record checked.
    next_xid: Option<u64>,
    /// `redo` of the last checkpoint record checked.
    last_redo: Option<Lsn>,
}

impl WalValidator {
    /// Starts at a page boundary (normally a segment start). If that page begins with the
    /// continuation of a record that started earlier (`XLP_FIRST_IS_CONTRECORD`), the
    /// continuation is skipped unchecked, like `XLogFindNextRecord`; everything after is
    /// checked.
    ///
    /// # Errors
    /// `NotPageAligned` when `start` is not a multiple of 8192.
    pub fn new(start: Lsn, cfg: WalCheckConfig) -> Result<Self, WalError> {
        if !start.0.is_multiple_of(PAGE) {
            return Err(WalError {
                lsn: start,
                kind: WalErrorKind::NotPageAligned,
                timeline: TimelineId::ONE,
                segment_size: cfg.segment_size,
            });
        }
        let boundary = RecordBoundary {
            lsn: start,
            prev: None,
            timeline: None,
            max_timeline: None,
            page_magic: None,
            in_switch_padding: false,
        };
        Ok(Self::resume(boundary, cfg))
    }

    /// Resumes exactly at a boundary taken from [`WalValidator::boundary`].
    pub fn resume(b: RecordBoundary, cfg: WalCheckConfig) -> Self {
        let size = cfg.segment_size;
        let state = if b.in_switch_padding && size.offset_in_segment(b.lsn) != 0 {
            let end = size.segment_start(b.lsn).0.saturating_add(size.bytes_u64());
            State::SwitchZeros { end }
        } else if b.prev.is_none() && b.lsn.0.is_multiple_of(PAGE) {
            State::FirstPage
        } else {
            State::NEXT_RECORD
        };
        let boundary = RecordBoundary {
            in_switch_padding: matches!(state, State::SwitchZeros { .. }),
            ..b
        };
        WalValidator {
            cfg,
            pos: b.lsn.0,
            page_header: [0; SIZE_OF_LONG_PAGE_HEADER],
            state,
            prev: b.prev,
            timeline: b.timeline,
            max_timeline: b.max_timeline,
            magic: b.page_magic,
            boundary,
            checkpoint: None,
            next_xid: None,
            last_redo: None,
        }
    }

    /// Feeds the next bytes, contiguous with [`WalValidator::position`], in any size and any
    /// split. After an error the validator must not be used further (clone it before feeding
    /// to keep a good state).
    ///
    /// # Errors
    /// The first problem found in the bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        let fits = u64::try_from(bytes.len())
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .is_some();
        if !fits {
            return Err(self.error(self.pos, WalErrorKind::PositionOverflow));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = self.step(rest)?;
            rest = rest.get(used..).unwrap_or_default();
        }
        Ok(())
    }

    /// The end of the bytes fed so far.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// The end of the last fully verified record (MAXALIGNed, its padding checked). After an
    /// `XLOG_SWITCH` it advances over the zero space as it is verified, up to the segment
    /// end. Always at most [`WalValidator::position`].
    pub fn valid_end(&self) -> Lsn {
        self.boundary.lsn
    }

    /// The state at [`WalValidator::valid_end`], from which [`WalValidator::resume`] continues.
    pub fn boundary(&self) -> RecordBoundary {
        self.boundary
    }

    /// The highest timeline seen in page headers.
    pub fn timeline(&self) -> Option<TimelineId> {
        self.timeline
    }

    /// Caps `xlp_tli`: pages on a higher timeline are errors.
    pub fn set_max_timeline(&mut self, tli: TimelineId) {
        self.max_timeline = Some(tli);
        self.boundary.max_timeline = Some(tli);
    }

    /// The page magic, learnt from the first page and then enforced on every page.
    pub fn page_magic(&self) -> Option<u16> {
        self.magic
    }

    /// The next transaction id (epoch and xid as one 64-bit value) of the last checkpoint
    /// record that passed its checks since this validator started; `None` before one has.
    pub fn next_xid(&self) -> Option<u64> {
        self.next_xid
    }

    /// The redo point of the last checkpoint record that passed its checks since this
    /// validator started: where a base backup taken with that checkpoint starts.
    pub fn last_redo(&self) -> Option<Lsn> {
        self.last_redo
    }

    /// Consumes a prefix of `input` (at least one byte) and returns its length.
    fn step(&mut self, input: &[u8]) -> Result<usize, WalError> {
        let in_page = self.pos % PAGE;
        let header_len = page_header_size(Lsn(self.pos), self.cfg.segment_size) as u64;
        let page_rest = usize::try_from(PAGE - in_page).unwrap_or(usize::MAX);
        let data = input.get(..page_rest).unwrap_or(input);
        match self.state {
            State::SwitchZeros { end } => self.zeros_after_switch(input, end),
            _ if in_page < header_len => self.page_header_bytes(input, in_page, header_len),
            State::FirstPage | State::Header { .. } => self.header_bytes(data),
            State::Body {
                start,
                header,
                remaining,
                crc,
            } => self.body_bytes(data, start, header, remaining, crc),
            State::Skip { remaining } => Ok(self.skip_bytes(data, remaining)),
            State::Padding { end } => self.padding_bytes(data, end),
        }
    }

    fn page_header_bytes(
        &mut self,
        input: &[u8],
        in_page: u64,
        header_len: u64,
    ) -> Result<usize, WalError> {
        let from = in_page as usize;
        let take = (header_len as usize - from).min(input.len());
        copy_into(&mut self.page_header, from, input, take);
        self.pos += take as u64;
        if from + take == header_len as usize {
            self.check_page(self.pos - header_len, header_len as usize)?;
        }
        Ok(take)
    }

    fn check_page(&mut self, page: u64, header_len: usize) -> Result<(), WalError> {
        let bytes = self.page_header.get(..header_len).unwrap_or_default();
        // Cannot fail: a page header is at least 24 bytes.
        let hdr = PageHeader::parse(bytes)
            .ok_or_else(|| self.error(page, WalErrorKind::InvalidInfoBits { info: 0 }))?;
        let page_error = |v: &Self, kind| WalError {
            timeline: v.timeline.or(v.max_timeline).unwrap_or(TimelineId::ONE),
            ..v.error(page, kind)
        };
        hdr.check(Lsn(page), &self.cfg)
            .map_err(|k| page_error(self, k))?;
        match self.magic {
            Some(expected) if expected != hdr.magic => {
                let kind = WalErrorKind::MagicChanged {
                    magic: hdr.magic,
                    expected,
                };
                return Err(page_error(self, kind));
            }
            _ => self.magic = Some(hdr.magic),
        }
        self.check_timeline(&hdr).map_err(|k| page_error(self, k))?;
        self.continuation(&hdr, page + header_len as u64)
    }

    fn check_timeline(&mut self, hdr: &PageHeader) -> Result<(), WalErrorKind> {
        let tli = hdr.timeline().ok_or(WalErrorKind::InvalidTimeline)?;
        if let Some(after) = self.timeline.filter(|seen| tli < *seen) {
            return Err(WalErrorKind::OutOfSequenceTimeline { tli, after });
        }
        if let Some(max) = self.max_timeline.filter(|max| tli > *max) {
            return Err(WalErrorKind::TimelineBeyondMax { tli, max });
        }
        self.timeline = Some(tli);
        Ok(())
    }

    /// Checks the page's continuation flags against the record in progress.
    fn continuation(&mut self, hdr: &PageHeader, data_start: u64) -> Result<(), WalError> {
        let contrecord = hdr.has(XLP_FIRST_IS_CONTRECORD);
        let overwrite = hdr.has(XLP_FIRST_IS_OVERWRITE_CONTRECORD);
        let kind = match self.expected_continuation(data_start) {
            Continuation::Rest { at, remaining } if !overwrite => {
                return self.check_continued(hdr, at, remaining);
            }
            // The incomplete record was abandoned; an XLOG_OVERWRITE_CONTRECORD record
            // starts here instead (`XLogDecodeNextRecord` restarts the same way).
            Continuation::Rest { .. } => None,
            // Like `XLogFindNextRecord`: skip what continues a record begun before the start.
            Continuation::Optional if contrecord => {
                self.state = match hdr.rem_len {
                    0 => State::NEXT_RECORD,
                    remaining => State::Skip { remaining },
                };
                return Ok(());
            }
            Continuation::Optional => None,
            Continuation::None if contrecord => Some(WalErrorKind::ContrecordRequested),
            Continuation::None if overwrite => Some(WalErrorKind::UnexpectedOverwriteContrecord),
            Continuation::None => None,
        };
        // A page that starts with a record has no bytes of an earlier one to come.
        let kind = kind.or((!contrecord && hdr.rem_len != 0).then_some(
            WalErrorKind::InvalidContrecordLength {
                rem_len: hdr.rem_len,
                expected: 0,
            },
        ));
        match kind {
            Some(kind) => Err(self.error(data_start, kind)),
            None => {
                self.state = State::NEXT_RECORD;
                Ok(())
            }
        }
    }

    /// `XLogDecodeNextRecord`'s checks of a page continuing the record started at `at`.
    fn check_continued(&self, hdr: &PageHeader, at: u64, remaining: u32) -> Result<(), WalError> {
        let kind = if !hdr.has(XLP_FIRST_IS_CONTRECORD) {
            WalErrorKind::NoContrecordFlag
        } else if hdr.rem_len != remaining {
            WalErrorKind::InvalidContrecordLength {
                rem_len: hdr.rem_len,
                expected: remaining,
            }
        } else {
            return Ok(());
        };
        Err(self.error(at, kind))
    }

    fn expected_continuation(&self, data_start: u64) -> Continuation {
        match self.state {
            State::FirstPage => Continuation::Optional,
            State::Header { start, buf, have } if have > 0 => {
                let tot_len = RecordHeader::parse(&buf).tot_len;
                Continuation::Rest {
                    at: start,
                    remaining: tot_len.saturating_sub(have as u32),
                }
            }
            State::Body {
                start, remaining, ..
            } => Continuation::Rest {
                at: start,
                remaining,
            },
            State::Skip { remaining } => Continuation::Rest {
                at: data_start,
                remaining,
            },
            State::Header { .. } | State::Padding { .. } | State::SwitchZeros { .. } => {
                Continuation::None
            }
        }
    }

    fn header_bytes(&mut self, data: &[u8]) -> Result<usize, WalError> {
        let (start, mut buf, have) = match self.state {
            State::Header { start, buf, have } if have > 0 => (start, buf, have),
            _ => (self.pos, [0; HEADER], 0),
        };
        let take = (HEADER - have).min(data.len());
        copy_into(&mut buf, have, data, take);
        self.pos += take as u64;
        let have = have + take;
        let tot_len = RecordHeader::parse(&buf).tot_len;
        if have < HEADER {
            if have >= 4 {
                check_total_length(tot_len).map_err(|k| self.error(start, k))?;
            }
            self.state = State::Header { start, buf, have };
            return Ok(take);
        }
        let header = RecordHeader::parse(&buf);
        header
            .check(Lsn(start), self.prev)
            .map_err(|k| self.error(start, k))?;
        let remaining = header.tot_len - HEADER as u32;
        self.checkpoint = CheckpointCapture::begin(start, &header);
        self.state = State::Body {
            start,
            header: buf,
            remaining,
            crc: 0,
        };
        if remaining == 0 {
            self.finish_record(start, &buf, 0)?;
        }
        Ok(take)
    }

    fn body_bytes(
        &mut self,
        data: &[u8],
        start: u64,
        header: [u8; HEADER],
        remaining: u32,
        crc: u32,
    ) -> Result<usize, WalError> {
        let take = data.len().min(remaining as usize);
        let body = data.get(..take).unwrap_or_default();
        let crc = crc32c::crc32c_append(crc, body);
        if let Some(capture) = &mut self.checkpoint {
            capture.take(start, body);
        }
        let remaining = remaining - take as u32;
        self.pos += take as u64;
        self.state = State::Body {
            start,
            header,
            remaining,
            crc,
        };
        if remaining == 0 {
            self.finish_record(start, &header, crc)?;
        }
        Ok(take)
    }

    fn finish_record(
        &mut self,
        start: u64,
        header: &[u8; HEADER],
        body_crc: u32,
    ) -> Result<(), WalError> {
        let hdr = RecordHeader::parse(header);
        if finish_record_crc(body_crc, header) != hdr.crc {
            return Err(self.error(start, WalErrorKind::ChecksumMismatch));
        }
        if let Some(capture) = self.checkpoint.take() {
            self.next_xid = capture.next_xid(start).or(self.next_xid);
            self.last_redo = capture.redo(start).map(Lsn).or(self.last_redo);
        }
        self.prev = Some(Lsn(start));
        if !hdr.is_switch() {
            self.end_record();
            return Ok(());
        }
        let size = self.cfg.segment_size;
        self.state = if size.offset_in_segment(Lsn(self.pos)) == 0 {
            State::NEXT_RECORD
        } else {
            let end = size.segment_start(Lsn(self.pos)).0;
            State::SwitchZeros {
                end: end.saturating_add(size.bytes_u64()),
            }
        };
        self.mark_valid();
        Ok(())
    }

    /// After the last byte of a record (verified or skipped): padding, then the next record.
    fn end_record(&mut self) {
        let end = self.pos.saturating_add(MAXIMUM_ALIGNOF - 1) & !(MAXIMUM_ALIGNOF - 1);
        if end > self.pos {
            self.state = State::Padding { end };
        } else {
            self.next_record();
        }
    }

    fn next_record(&mut self) {
        self.state = State::NEXT_RECORD;
        if self.prev.is_some() {
            self.mark_valid();
        }
    }

    fn skip_bytes(&mut self, data: &[u8], remaining: u32) -> usize {
        let take = data.len().min(remaining as usize);
        self.pos += take as u64;
        match remaining - take as u32 {
            0 => self.end_record(),
            remaining => self.state = State::Skip { remaining },
        }
        take
    }

    fn padding_bytes(&mut self, data: &[u8], end: u64) -> Result<usize, WalError> {
        let take = data.len().min((end - self.pos) as usize);
        let zeros = zero_prefix(data, take);
        self.pos += zeros as u64;
        if zeros < take {
            return Err(self.error(self.pos, WalErrorKind::NonzeroPadding));
        }
        if self.pos == end {
            self.next_record();
        }
        Ok(take)
    }

    /// Zeros up to the segment end; `valid_end` follows them byte by byte.
    fn zeros_after_switch(&mut self, input: &[u8], end: u64) -> Result<usize, WalError> {
        let take = usize::try_from(end - self.pos)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let zeros = zero_prefix(input, take);
        self.pos += zeros as u64;
        if self.pos == end {
            self.state = State::NEXT_RECORD;
        }
        self.mark_valid();
        if zeros < take {
            return Err(self.error(self.pos, WalErrorKind::NonzeroAfterSwitch));
        }
        Ok(take)
    }

    fn mark_valid(&mut self) {
        self.boundary = RecordBoundary {
            lsn: Lsn(self.pos),
            prev: self.prev,
            timeline: self.timeline,
            max_timeline: self.max_timeline,
            page_magic: self.magic,
            in_switch_padding: matches!(self.state, State::SwitchZeros { .. }),
        };
    }

    fn error(&self, at: u64, kind: WalErrorKind) -> WalError {
        WalError {
            lsn: Lsn(at),
            kind,
            timeline: self.timeline.unwrap_or(TimelineId::ONE),
            segment_size: self.cfg.segment_size,
        }
    }
}

/// How many of the first `take` bytes of `data` are zero before the first non-zero one.
fn zero_prefix(data: &[u8], take: usize) -> usize {
    let bytes = data.get(..take).unwrap_or_default();
    let mut zeros = 0;
    // OR-folding fixed chunks vectorizes; the zero space after a switch can be a whole segment.
    for chunk in bytes.chunks(64) {
        if chunk.iter().fold(0, |acc, &b| acc | b) != 0 {
            return zeros + chunk.iter().take_while(|&&b| b == 0).count();
        }
        zeros += chunk.len();
    }
    zeros
}

/// Copies `take` bytes from the start of `src` into `dst` at `at`.
fn copy_into(dst: &mut [u8], at: usize, src: &[u8], take: usize) {
    let dst = dst.get_mut(at..at + take).unwrap_or_default();
    let src = src.get(..take).unwrap_or_default();
    if dst.len() == src.len() {
        dst.copy_from_slice(src);
    }
}
