//! The command phase of a downstream connection, answered as a PostgreSQL 15 physical
//! walsender answers (`walsender.c:exec_replication_command` and the functions it calls):
//! result columns, types, CommandComplete tags, error texts and SQLSTATEs.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::ServerContext;
use super::sender;
use super::startup::Login;
use crate::service::conn::ConnError;
use crate::service::conn::{FrameReader, FrameWriter};
use crate::slots::{Persistency, SlotError};
use crate::types::{Lsn, TimelineId};
use crate::wire::backend::{INT4_OID, INT8_OID, TEXT_OID};
use crate::wire::command::{ReplicationCommand, SlotKind};
use crate::wire::frame::COMMAND_FRAME_LIMIT;
use crate::wire::frontend::FrontendMessage;
use crate::wire::{BackendMessage, ErrorFields, FieldDescription, TransactionStatus};

/// A column of a result set: name, type OID, type length.
pub type Column<'a> = (&'a str, u32, i16);

const TEXT: (u32, i16) = (TEXT_OID, -1);

/// Serves commands until the client terminates, the connection breaks, or shutdown.
///
/// # Errors
/// A broken connection.
pub async fn run<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    login: &Login,
    ctx: &Arc<ServerContext>,
    shutdown: &CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => {
                let e = ErrorFields::new("FATAL", "57P01", "terminating connection due to administrator command");
                BackendMessage::ErrorResponse(e).write(wr.out())?;
                wr.close().await;
                return Ok(());
            }
            frame = rd.frame(COMMAND_FRAME_LIMIT) => frame?,
        };
        match FrontendMessage::parse(frame) {
            Ok(FrontendMessage::Query(text)) => {
                execute(rd, wr, login, ctx, shutdown, &text).await?;
            }
            Ok(FrontendMessage::Terminate) => return Ok(()),
            Ok(FrontendMessage::Sync) => ready(wr),
            Ok(FrontendMessage::Extended { .. }) => {
                let text = "extended query protocol not supported in a replication connection";
                error(wr, ErrorFields::new("ERROR", "08P01", text));
                ready(wr);
            }
            Ok(
                FrontendMessage::CopyData(_)
                | FrontendMessage::CopyDone
                | FrontendMessage::CopyFail(_),
            ) => {}
            Ok(FrontendMessage::Password(_)) => {
                return fatal(
                    wr,
                    ErrorFields::new("FATAL", "08P01", "invalid frontend message type 112"),
                )
                .await;
            }
            Err(e) => {
                return fatal(wr, ErrorFields::new("FATAL", e.sqlstate(), e.to_string())).await;
            }
        }
        wr.flush().await?;
    }
}

async fn fatal<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    e: ErrorFields,
) -> Result<(), ConnError> {
    info!(sqlstate = %e.code, error = %e.message, "closing connection");
    wr.fatal(&e).await;
    Ok(())
}

/// Answers one Query string.
async fn execute<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    login: &Login,
    ctx: &Arc<ServerContext>,
    shutdown: &CancellationToken,
    text: &str,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let parsed = ReplicationCommand::parse(text);
    for notice in parsed.notices {
        let n = ErrorFields::new("NOTICE", notice.sqlstate(), notice.to_string());
        BackendMessage::NoticeResponse(n).write(wr.out())?;
    }
    let command = match parsed.command {
        Ok(c) => c,
        Err(e) => {
            error(wr, ErrorFields::new("ERROR", e.sqlstate(), e.to_string()));
            ready(wr);
            return Ok(());
        }
    };
    match command {
        ReplicationCommand::StartReplication {
            slot,
            start,
            timeline,
        } => {
            let request = sender::Request {
                slot,
                start,
                timeline,
            };
            sender::start_replication(rd, wr, login, ctx, shutdown, request).await?;
        }
        ReplicationCommand::DropReplicationSlot { name, wait: true } => {
            drop_slot_waiting(wr, login, ctx, shutdown, &name).await?;
        }
        other => answer(wr, login, ctx, other),
    }
    ready(wr);
    Ok(())
}

/// The commands that answer at once.
fn answer<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    login: &Login,
    ctx: &ServerContext,
    command: ReplicationCommand,
) {
    let outcome = match command {
        ReplicationCommand::IdentifySystem => identify_system(wr, ctx),
        ReplicationCommand::Show(name) => show(wr, ctx, &name),
        ReplicationCommand::TimelineHistory(tli) => timeline_history(wr, ctx, tli),
        ReplicationCommand::ReadReplicationSlot(name) => read_slot(wr, ctx, &name),
        ReplicationCommand::CreateReplicationSlot {
            name,
            temporary,
            kind,
        } => create_slot(wr, login, ctx, &name, temporary, &kind),
        ReplicationCommand::DropReplicationSlot { name, .. } => ctx
            .slots()
            .drop_slot(&name, login.slot.pid)
            .map(|()| complete(wr, "DROP_REPLICATION_SLOT"))
            .map_err(slot_error),
        ReplicationCommand::Sql(_) => Err(ErrorFields::new(
            "ERROR",
            "0A000",
            "cannot execute SQL commands in WAL sender for physical replication",
        )),
        ReplicationCommand::StartLogicalReplication { .. } => Err(ErrorFields::new(
            "ERROR",
            "0A000",
            "logical decoding requires a database connection",
        )),
        ReplicationCommand::BaseBackup { .. } => {
            Err(
                ErrorFields::new("ERROR", "0A000", "BASE_BACKUP is not supported by walrelay")
                    .with_hint("Take the base backup from the primary server."),
            )
        }
        ReplicationCommand::AlterReplicationSlot { .. } | ReplicationCommand::UploadManifest => {
            Err(ErrorFields::new(
                "ERROR",
                "0A000",
                "this replication command is not supported by walrelay",
            ))
        }
        ReplicationCommand::StartReplication { .. } => Ok(()),
    };
    if let Err(e) = outcome {
        error(wr, e);
    }
}

fn identify_system<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    ctx: &ServerContext,
) -> Result<(), ErrorFields> {
    let up = ctx.upstream().ok_or_else(starting_up)?;
    let p = ctx.durable();
    let tli = ctx.timeline();
    let columns: [Column; 4] = [
        ("systemid", TEXT.0, TEXT.1),
        ("timeline", INT4_OID, 4),
        ("xlogpos", TEXT.0, TEXT.1),
        ("dbname", TEXT.0, TEXT.1),
    ];
    let row = vec![
        Some(up.system_id.to_string()),
        Some(tli.to_string()),
        Some(p.lsn.to_string()),
        None,
    ];
    result(wr, &columns, -1, vec![row], "IDENTIFY_SYSTEM");
    Ok(())
}

fn show<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    ctx: &ServerContext,
    name: &str,
) -> Result<(), ErrorFields> {
    let up = ctx.upstream().ok_or_else(starting_up)?;
    let name = name.to_ascii_lowercase();
    let value = match name.as_str() {
        "wal_segment_size" => up.segment_size.show_text(),
        "data_directory_mode" => "0700".into(),
        "server_version" => up.server_version,
        "server_version_num" => up.version_num.to_string(),
        "integer_datetimes" => "on".into(),
        "wal_block_size" => "8192".into(),
        _ => {
            let text = format!("unrecognized configuration parameter \"{name}\"");
            return Err(ErrorFields::new("ERROR", "42704", text));
        }
    };
    let column = [(name.as_str(), TEXT.0, TEXT.1)];
    result(wr, &column, -1, vec![vec![Some(value)]], "SHOW");
    Ok(())
}

fn timeline_history<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    ctx: &ServerContext,
    tli: TimelineId,
) -> Result<(), ErrorFields> {
    let name = tli.history_file_name();
    let columns: [Column; 2] = [("filename", TEXT.0, TEXT.1), ("content", TEXT.0, TEXT.1)];
    let content = std::fs::read(ctx.wal_dir().join(&name));
    match content {
        Ok(bytes) => {
            write_header(wr, &columns, 0);
            let row =
                BackendMessage::DataRow(vec![Some(Bytes::from(name)), Some(Bytes::from(bytes))]);
            let _ = row.write(wr.out());
            complete(wr, "TIMELINE_HISTORY");
            Ok(())
        }
        Err(e) => {
            write_header(wr, &columns, 0);
            let text = format!("could not open file \"pg_wal/{name}\": {}", io_text(&e));
            Err(ErrorFields::new("ERROR", "58P01", text))
        }
    }
}

fn read_slot<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    ctx: &ServerContext,
    name: &str,
) -> Result<(), ErrorFields> {
    crate::slots::validate_slot_name(name).map_err(slot_error)?;
    let info = ctx.slots().get(name);
    let tli = ctx.timeline();
    let row = match info {
        None => vec![None, None, None],
        Some(s) => vec![
            Some("physical".to_owned()),
            s.restart_lsn.map(|l| l.to_string()),
            s.restart_lsn.map(|_| tli.to_string()),
        ],
    };
    let columns: [Column; 3] = [
        ("slot_type", TEXT.0, TEXT.1),
        ("restart_lsn", TEXT.0, TEXT.1),
        ("restart_tli", INT8_OID, 8),
    ];
    result(wr, &columns, -1, vec![row], "READ_REPLICATION_SLOT");
    Ok(())
}

fn create_slot<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    login: &Login,
    ctx: &ServerContext,
    name: &str,
    temporary: bool,
    kind: &SlotKind,
) -> Result<(), ErrorFields> {
    let SlotKind::Physical { reserve_wal } = kind else {
        return Err(ErrorFields::new(
            "ERROR",
            "0A000",
            "logical decoding requires a database connection",
        ));
    };
    let up = ctx.upstream().ok_or_else(starting_up)?;
    let reserve = reserve_wal.then(|| up.segment_size.segment_start(ctx.durable().lsn));
    let persistency = if temporary {
        Persistency::Temporary {
            owner: login.slot.pid,
        }
    } else {
        Persistency::Persistent
    };
    ctx.slots()
        .create(name, persistency, reserve)
        .map_err(slot_error)?;
    let columns: [Column; 4] = [
        ("slot_name", TEXT.0, TEXT.1),
        ("consistent_point", TEXT.0, TEXT.1),
        ("snapshot_name", TEXT.0, TEXT.1),
        ("output_plugin", TEXT.0, TEXT.1),
    ];
    let row = vec![
        Some(name.to_owned()),
        Some(Lsn::INVALID.to_string()),
        None,
        None,
    ];
    result(wr, &columns, -1, vec![row], "CREATE_REPLICATION_SLOT");
    Ok(())
}

/// `DROP_REPLICATION_SLOT name WAIT`: waits while another connection holds the slot.
async fn drop_slot_waiting<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    login: &Login,
    ctx: &ServerContext,
    shutdown: &CancellationToken,
    name: &str,
) -> Result<(), ConnError> {
    loop {
        let outcome = ctx.slots().drop_slot(name, login.slot.pid);
        match outcome {
            Ok(()) => {
                complete(wr, "DROP_REPLICATION_SLOT");
                return Ok(());
            }
            Err(SlotError::Active { .. }) => {}
            Err(e) => {
                error(wr, slot_error(e));
                return Ok(());
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(ConnError::Closed),
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
}

/// The ErrorResponse for a slot error, with PostgreSQL's SQLSTATE and hint.
pub fn slot_error(e: SlotError) -> ErrorFields {
    let fields = ErrorFields::new("ERROR", e.sqlstate(), e.to_string());
    match e.hint() {
        Some(h) => fields.with_hint(h),
        None => fields,
    }
}

/// The error for commands that need the upstream's identity before it is known.
pub fn starting_up() -> ErrorFields {
    ErrorFields::new("ERROR", "57P03", "the database system is starting up")
}

/// PostgreSQL's wording of common I/O errors.
fn io_text(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory",
        std::io::ErrorKind::PermissionDenied => "Permission denied",
        _ => "I/O error",
    }
}

/// Writes RowDescription.
pub fn write_header<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    columns: &[Column],
    typmod: i32,
) {
    let fields = columns
        .iter()
        .map(|(name, oid, len)| FieldDescription::text(*name, *oid, *len, typmod))
        .collect();
    let _ = BackendMessage::RowDescription(fields).write(wr.out());
}

/// Writes a whole result set: RowDescription, DataRows, CommandComplete.
pub fn result<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    columns: &[Column],
    typmod: i32,
    rows: Vec<Vec<Option<String>>>,
    tag: &str,
) {
    write_header(wr, columns, typmod);
    for row in rows {
        let values = row.into_iter().map(|v| v.map(Bytes::from)).collect();
        let _ = BackendMessage::DataRow(values).write(wr.out());
    }
    complete(wr, tag);
}

/// Writes CommandComplete.
pub fn complete<W: AsyncWrite + Unpin>(wr: &mut FrameWriter<W>, tag: &str) {
    let _ = BackendMessage::CommandComplete(tag.to_owned()).write(wr.out());
}

/// Writes an ErrorResponse.
pub fn error<W: AsyncWrite + Unpin>(wr: &mut FrameWriter<W>, e: ErrorFields) {
    let _ = BackendMessage::ErrorResponse(e).write(wr.out());
}

/// Writes ReadyForQuery.
pub fn ready<W: AsyncWrite + Unpin>(wr: &mut FrameWriter<W>) {
    let _ = BackendMessage::ReadyForQuery(TransactionStatus::Idle).write(wr.out());
}
