//! The WAL format, checked byte for byte: page headers (`xlog_internal.h`), record headers
//! and their CRC-32C (`xlogrecord.h`), a streaming record validator that reads like
//! `xlogreader.c`, and timeline history files (`timeline.c`).
//!
//! Pure code: no I/O, no clock. Segment sizes and names live in [`crate::types`].

mod checkpoint;
mod error;
mod history;
mod page;
mod record;
mod validator;

#[cfg(any(fuzzing, test))]
pub mod fuzzing;

#[cfg(test)]
pub(crate) mod testdata;
#[cfg(test)]
mod validator_tests;

pub use error::{WalError, WalErrorKind};
pub use history::{
    HISTORY_FILE_MAX_SIZE, HistoryEntry, HistoryError, TimelineHistory, history_file_name_parse,
};
pub use page::{
    LongPageHeader, PageHeader, SIZE_OF_LONG_PAGE_HEADER, SIZE_OF_SHORT_PAGE_HEADER,
    WAL_PAGE_MAGICS, WalCheckConfig, XLP_ALL_FLAGS, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER, major_version_of_magic, page_header_size,
    page_magic_of_major,
};
pub use record::{
    MAXIMUM_ALIGNOF, RM_MAX_BUILTIN_ID, RM_MIN_CUSTOM_ID, RM_XLOG_ID, RecordHeader,
    SIZE_OF_XLOG_RECORD, XLOG_OVERWRITE_CONTRECORD, XLOG_RECORD_MAX_SIZE, XLOG_SWITCH,
    XLR_INFO_MASK, check_total_length, finish_record_crc, maxalign, record_crc, rmid_is_valid,
};
pub use validator::{RecordBoundary, WalValidator};
