//! The PostgreSQL frontend/backend protocol, version 3.0, as far as physical streaming
//! replication needs it: pure encoding and decoding, no I/O.
//!
//! - [`reader`]: a bounds-checked big-endian reader (`pqformat.c`'s `pq_getmsg*`).
//! - [`frame`]: splitting typed messages and first packets off a receive buffer, with length
//!   caps checked before anything is allocated (`pq_getmessage`, `ProcessStartupPacket`).
//! - [`startup`]: SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.
//! - [`backend`] and [`frontend`]: the messages each side sends, both encoded and decoded;
//!   [`error_fields`]: the fields of ErrorResponse and NoticeResponse.
//! - [`replication`]: the CopyData payloads of the replication stream (`w`, `k`, `r`, `h`).
//! - [`command`]: the replication command language of a walsender's simple Query
//!   (`repl_scanner.l`, `repl_gram.y`).
//!
//! Every decoder takes a [`Frame`] or payload `Bytes` and returns a [`WireError`] for malformed
//! input; [`WireError::sqlstate`] gives the SQLSTATE PostgreSQL would answer with.

pub mod backend;
pub mod command;
pub mod error;
pub mod error_fields;
pub mod frame;
pub mod frontend;
pub mod reader;
pub mod replication;
pub mod startup;
mod writer;

#[cfg(fuzzing)]
pub mod fuzzing;

pub use backend::{Authentication, BackendMessage, FieldDescription, TransactionStatus};
pub use command::ReplicationCommand;
pub use error::WireError;
pub use error_fields::{ErrorFields, Severity};
pub use frame::{Frame, frame_len, split_frame, split_startup_packet};
pub use frontend::{FrontendMessage, SaslInitialResponse};
pub use reader::Reader;
pub use replication::{
    ClientCopyData, HotStandbyFeedback, PrimaryKeepalive, ServerCopyData, StandbyStatusUpdate,
    XLogData,
};
pub use startup::{StartupMessage, StartupPacket};
