//! A blocking PostgreSQL connection that runs simple queries: the benchmark's probe of LSNs
//! (`pg_current_wal_flush_lsn()`, `pg_last_wal_receive_lsn()`, `IDENTIFY_SYSTEM`) and its way
//! of running the loads, over one persistent loopback connection each, so that polling costs a
//! query round trip rather than a `psql` process. It logs in with trust only (no password).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::BytesMut;
use walrelay::types::Lsn;
use walrelay::wire::{
    Authentication, BackendMessage, FrontendMessage, Severity, StartupMessage, StartupPacket,
    split_frame,
};

/// The largest message accepted from a server.
const MAX_MESSAGE: usize = 1 << 30;

/// One logged-in connection.
pub struct SqlConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl SqlConn {
    /// Connects to `127.0.0.1:port` as `postgres`: a replication connection (`replication=true`,
    /// for the relay's and walsenders' commands) or a database one (database `postgres`).
    pub fn connect(port: u16, replication: bool, application_name: &str) -> Result<SqlConn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
        let mut params = vec![
            ("user".to_string(), "postgres".to_string()),
            ("application_name".to_string(), application_name.to_string()),
        ];
        params.push(if replication {
            ("replication".into(), "true".into())
        } else {
            ("database".into(), "postgres".into())
        });
        let mut out = BytesMut::new();
        StartupPacket::Startup(StartupMessage {
            minor_version: 0,
            params,
        })
        .write(&mut out)?;
        let mut conn = SqlConn {
            stream,
            buf: BytesMut::with_capacity(8192),
        };
        conn.stream.write_all(&out)?;
        conn.until_ready(&mut Vec::new())?;
        Ok(conn)
    }

    /// Runs `sql` (one or more statements) and returns the rows of its results, every column
    /// as text (`None` for NULL).
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut out = BytesMut::new();
        FrontendMessage::Query(sql.to_string()).write(&mut out)?;
        self.stream.write_all(&out)?;
        let mut rows = Vec::new();
        self.until_ready(&mut rows)
            .map_err(|e| anyhow!("{sql:.80}: {e}"))?;
        Ok(rows)
    }

    /// The first column of the first row of `sql`'s result.
    pub fn query_value(&mut self, sql: &str) -> Result<String> {
        self.query_column(sql, 0)
    }

    /// Column `column` of the first row of `sql`'s result.
    pub fn query_column(&mut self, sql: &str, column: usize) -> Result<String> {
        let rows = self.query(sql)?;
        rows.into_iter()
            .next()
            .and_then(|row| row.into_iter().nth(column).flatten())
            .ok_or_else(|| anyhow!("{sql:.80}: no value in column {column}"))
    }

    /// The first value of `sql` as an LSN (NULL is `0/0`).
    pub fn query_lsn(&mut self, sql: &str) -> Result<Lsn> {
        let rows = self.query(sql)?;
        let value = rows.into_iter().next().and_then(|r| r.into_iter().next());
        match value {
            Some(Some(text)) => text
                .parse()
                .map_err(|_| anyhow!("{sql:.80}: {text:?} is no LSN")),
            Some(None) => Ok(Lsn(0)),
            None => bail!("{sql:.80}: no row"),
        }
    }

    /// Reads messages until ReadyForQuery, collecting DataRows into `rows`; an ErrorResponse
    /// (after which the server still sends ReadyForQuery) becomes the error.
    fn until_ready(&mut self, rows: &mut Vec<Vec<Option<String>>>) -> Result<()> {
        let mut error = None;
        loop {
            match self.next_message()? {
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::ErrorResponse(fields) => {
                    let text = format!("{} {}: {}", fields.severity, fields.code, fields.message);
                    if matches!(fields.severity, Severity::Fatal | Severity::Panic) {
                        // The server closes the connection without ReadyForQuery.
                        bail!("{text}");
                    }
                    error = Some(text);
                }
                BackendMessage::Authentication(Authentication::Ok) => {}
                BackendMessage::Authentication(other) => {
                    bail!("the server asks for authentication ({other:?}); use trust")
                }
                BackendMessage::DataRow(columns) => rows.push(
                    columns
                        .into_iter()
                        .map(|c| c.map(|v| String::from_utf8_lossy(&v).into_owned()))
                        .collect(),
                ),
                BackendMessage::CopyBothResponse(_) | BackendMessage::CopyOutResponse(_) => {
                    bail!("the server started a COPY")
                }
                _ => {}
            }
        }
        match error {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    /// The next message from the server.
    fn next_message(&mut self) -> Result<BackendMessage> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, MAX_MESSAGE)? {
                return Ok(BackendMessage::parse(frame)?);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}
