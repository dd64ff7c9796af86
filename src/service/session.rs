//! Simple-query round trips on an upstream replication connection.
//!
//! Each replication command is sent as a simple Query; the answer is read up to
//! ReadyForQuery, so the connection is idle again afterwards, also after an error
//! (PostgreSQL's errors in command mode do not end the session).

use crate::proto::query::QueryResult;
use crate::service::conn::{ConnError, Connection};
use crate::service::upstream::UpstreamError;
use crate::wire::frontend::FrontendMessage;
use crate::wire::{BackendMessage, ErrorFields};

/// Most NoticeResponses accepted during one command before the server is taken as hostile.
const MAX_NOTICES: usize = 100;

/// Sends `sql` and reads the whole answer.
///
/// # Errors
/// A connection failure, a malformed answer, or the server's ErrorResponse (after its
/// ReadyForQuery has been read).
pub async fn simple_query(conn: &mut Connection, sql: &str) -> Result<QueryResult, UpstreamError> {
    FrontendMessage::Query(sql.to_owned()).write(conn.out())?;
    conn.flush().await?;
    read_result(conn).await
}

/// Reads one command's answer up to ReadyForQuery.
///
/// # Errors
/// As [`simple_query`].
pub async fn read_result(conn: &mut Connection) -> Result<QueryResult, UpstreamError> {
    let first = BackendMessage::parse(conn.recv_reply().await?)?;
    read_result_from(conn, first).await
}

/// Reads one command's answer up to ReadyForQuery, starting with `first`, a message the
/// caller has already read.
///
/// # Errors
/// As [`simple_query`].
pub async fn read_result_from(
    conn: &mut Connection,
    first: BackendMessage,
) -> Result<QueryResult, UpstreamError> {
    let mut result = QueryResult::default();
    let mut error: Option<ErrorFields> = None;
    let mut notices = 0usize;
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => BackendMessage::parse(conn.recv_reply().await?)?,
        };
        match msg {
            BackendMessage::RowDescription(fields) => {
                result
                    .on_row_description(fields.into_iter().map(|f| (f.name, f.type_oid)).collect());
            }
            BackendMessage::DataRow(row) => result.on_data_row(row)?,
            BackendMessage::CommandComplete(tag) => result.on_command_complete(tag),
            BackendMessage::EmptyQueryResponse | BackendMessage::ParameterStatus { .. } => {}
            BackendMessage::ErrorResponse(e) => error = Some(e),
            BackendMessage::NoticeResponse(n) => {
                notices += 1;
                if notices > MAX_NOTICES {
                    return Err(UpstreamError::Protocol(
                        "too many notices from server".into(),
                    ));
                }
                tracing::info!(notice = %n, "upstream notice");
            }
            BackendMessage::ReadyForQuery(_) => {
                return match error {
                    Some(e) => Err(UpstreamError::Server(e)),
                    None => Ok(result),
                };
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message type '{}' in command response",
                    char::from(other.tag())
                )));
            }
        }
    }
}

impl From<ConnError> for UpstreamError {
    fn from(e: ConnError) -> Self {
        UpstreamError::Conn(e)
    }
}
