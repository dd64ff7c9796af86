//! Encoding a walsender's answers into the session's output: result sets, command tags,
//! errors and notices, ReadyForQuery.
//!
//! These messages are small and well-formed, so encoding them cannot fail: a field with a NUL
//! byte (which no answer here carries) would be left out rather than sent broken.

use bytes::{Bytes, BytesMut};

use super::{Outbox, Phase};
use crate::types::SqlState;
use crate::wire::backend::{INT4_OID, INT8_OID, TEXT_OID};
use crate::wire::{BackendMessage, ErrorFields, FieldDescription, TransactionStatus};

/// A column of a result set: name and type.
#[derive(Debug, Clone, Copy)]
pub(super) struct Column<'a>(pub &'a str, pub ColumnType);

/// The types walsender's result sets use.
#[derive(Debug, Clone, Copy)]
pub(super) enum ColumnType {
    Text,
    Int4,
    Int8,
}

fn put(out: &mut BytesMut, message: &BackendMessage) {
    let _ = message.write(out);
}

/// RowDescription, in text format with typmod -1 unless given.
pub(super) fn header(out: &mut BytesMut, columns: &[Column<'_>], typmod: i32) {
    let fields = columns
        .iter()
        .map(|Column(name, ty)| {
            let (oid, len) = match ty {
                ColumnType::Text => (TEXT_OID, -1),
                ColumnType::Int4 => (INT4_OID, 4),
                ColumnType::Int8 => (INT8_OID, 8),
            };
            FieldDescription::text(*name, oid, len, typmod)
        })
        .collect();
    put(out, &BackendMessage::RowDescription(fields));
}

/// One DataRow; `None` is NULL.
pub(super) fn row(out: &mut BytesMut, values: Vec<Option<Bytes>>) {
    put(out, &BackendMessage::DataRow(values));
}

/// A whole one-row result set: RowDescription, DataRow, CommandComplete.
pub(super) fn result(
    out: &mut BytesMut,
    columns: &[Column<'_>],
    values: Vec<Option<String>>,
    tag: &str,
) {
    header(out, columns, -1);
    row(
        out,
        values.into_iter().map(|v| v.map(Bytes::from)).collect(),
    );
    complete(out, tag);
}

/// CommandComplete.
pub(super) fn complete(out: &mut BytesMut, tag: &str) {
    put(out, &BackendMessage::CommandComplete(tag.to_owned()));
}

/// ErrorResponse.
pub(super) fn error(out: &mut BytesMut, e: &ErrorFields) {
    put(out, &BackendMessage::ErrorResponse(e.clone()));
}

/// NoticeResponse.
pub(super) fn notice(out: &mut BytesMut, n: ErrorFields) {
    put(out, &BackendMessage::NoticeResponse(n));
}

/// ReadyForQuery, idle.
pub(super) fn ready_for_query(out: &mut BytesMut) {
    put(out, &BackendMessage::ReadyForQuery(TransactionStatus::Idle));
}

/// Any other message.
pub(super) fn message(out: &mut BytesMut, message: &BackendMessage) {
    put(out, message);
}

/// An ERROR, then ReadyForQuery: the command failed, the session goes on.
pub(super) fn failed(io: &mut Outbox, e: &ErrorFields) -> Phase {
    error(&mut io.out, e);
    ready(io)
}

/// ReadyForQuery: back to command mode.
pub(super) fn ready(io: &mut Outbox) -> Phase {
    ready_for_query(&mut io.out);
    Phase::Command
}

/// What commands that need the upstream's identity answer before it is known.
pub(super) fn starting_up() -> ErrorFields {
    ErrorFields::error(
        SqlState::CANNOT_CONNECT_NOW,
        "the database system is starting up",
    )
}

/// Text made printable ASCII the way PostgreSQL cleans `application_name`
/// (`pg_clean_ascii`): anything else becomes `?`.
pub(super) fn printable(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (b' '..=b'~').contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}
