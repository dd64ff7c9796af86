//! Command mode of a downstream connection, answered as a PostgreSQL 15 physical walsender
//! answers (`postgres.c:PostgresMain` for the message types, `walsender.c:
//! exec_replication_command` and the functions it calls for the commands): result columns,
//! types, CommandComplete tags, error texts and SQLSTATEs.
//!
//! Every Query ends with ReadyForQuery, also after an error; a Sync gets one of its own. The
//! extended query protocol is refused with an ERROR, Copy messages outside a stream are
//! ignored, a PasswordMessage or an unknown message type is FATAL. Commands that need the
//! relay's slots wait for their action's answer before they answer.

use bytes::Bytes;

use super::backup;
use super::reply::{self, Column, ColumnType, failed, ready, starting_up};
use super::streaming::{self, Request};
use super::{Action, FoundSlot, Now, Outbox, Pending, Phase, RelayView, SessionConfig};
use crate::types::{Lsn, SlotName, SqlState, TimelineId, UpstreamInfo};
use crate::wire::command::{
    GenericOption, NEWEST_MAJOR, ReplicationCommand, SlotKind, check_alter_options,
    check_base_backup,
};
use crate::wire::frontend::FrontendMessage;
use crate::wire::{ErrorFields, Frame};

/// Takes one message in command mode.
pub(super) fn frame(
    io: &mut Outbox,
    config: &SessionConfig,
    frame: Frame,
    now: Now,
    view: &RelayView,
) -> Phase {
    let out = &mut io.out;
    match FrontendMessage::parse(frame) {
        Ok(FrontendMessage::Query(text)) => return execute(io, config, &text, now, view),
        Ok(FrontendMessage::Terminate) => return io.close(),
        Ok(FrontendMessage::Sync) => reply::ready_for_query(out),
        Ok(FrontendMessage::Extended { .. }) => {
            let text = "extended query protocol not supported in a replication connection";
            reply::error(out, &ErrorFields::error(SqlState::PROTOCOL_VIOLATION, text));
            reply::ready_for_query(out);
        }
        Ok(
            FrontendMessage::CopyData(_) | FrontendMessage::CopyDone | FrontendMessage::CopyFail(_),
        ) => {}
        Ok(FrontendMessage::Password(_)) => {
            let text = "invalid frontend message type 112";
            return io.fatal(&ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, text));
        }
        Err(e) => return io.fatal(&ErrorFields::fatal(e.sqlstate(), e.to_string())),
    }
    Phase::Command
}

/// Answers one Query string.
fn execute(
    io: &mut Outbox,
    config: &SessionConfig,
    text: &str,
    now: Now,
    view: &RelayView,
) -> Phase {
    // Parsed as the upstream's walsender would parse it: the relay passes for its upstream.
    let major = view
        .upstream
        .as_ref()
        .map_or(NEWEST_MAJOR, |u| u.version_num / 10_000);
    let parsed = ReplicationCommand::parse_as(text, major);
    for notice in parsed.notices {
        reply::notice(
            &mut io.out,
            ErrorFields::notice(notice.sqlstate(), notice.to_string()),
        );
    }
    let command = match parsed.command {
        Ok(c) => c,
        Err(e) => return failed(io, &ErrorFields::error(e.sqlstate(), e.to_string())),
    };
    let refused = |text: &str| Err(ErrorFields::error(SqlState::FEATURE_NOT_SUPPORTED, text));
    let outcome = match command {
        ReplicationCommand::StartReplication {
            slot,
            start,
            timeline,
        } => {
            let request = Request {
                slot,
                start,
                timeline,
            };
            return streaming::start(io, config, request, now, view);
        }
        ReplicationCommand::IdentifySystem => identify_system(&mut io.out, view),
        ReplicationCommand::Show(name) => show(&mut io.out, &name, view),
        ReplicationCommand::TimelineHistory(tli) => timeline_history(&mut io.out, tli, view),
        ReplicationCommand::ReadReplicationSlot(name) => return read_slot(io, &name),
        ReplicationCommand::CreateReplicationSlot {
            name,
            temporary,
            kind,
        } => return create_slot(io, &name, temporary, &kind, view),
        ReplicationCommand::DropReplicationSlot { name, wait } => {
            io.act(Action::DropSlot { name, wait });
            return Phase::Waiting(Pending::DropSlot);
        }
        ReplicationCommand::Sql(_) => {
            refused("cannot execute SQL commands in WAL sender for physical replication")
        }
        ReplicationCommand::StartLogicalReplication { .. } => {
            refused("logical decoding requires a database connection")
        }
        ReplicationCommand::BaseBackup { options, legacy } => {
            // PostgreSQL's own refusals of bad options; a sound request is relayed.
            match check_base_backup(&options, legacy, major) {
                Err(e) => Err(e.to_error()),
                Ok(request) => return backup::begin(io, config, text, request, view),
            }
        }
        ReplicationCommand::AlterReplicationSlot { name, options } => {
            return alter_slot(io, &name, &options);
        }
        ReplicationCommand::UploadManifest => {
            refused("this replication command is not supported by walrelay")
                .map_err(|e| e.with_hint("Incremental backups are taken from the primary server."))
        }
    };
    match outcome {
        Ok(()) => ready(io),
        Err(e) => failed(io, &e),
    }
}

/// The upstream's identity, or the error for commands that need it before it is known.
fn upstream(view: &RelayView) -> Result<&UpstreamInfo, ErrorFields> {
    view.upstream.as_deref().ok_or_else(starting_up)
}

/// `IDENTIFY_SYSTEM`: the upstream's system id, the relay's timeline and durable end.
fn identify_system(out: &mut bytes::BytesMut, view: &RelayView) -> Result<(), ErrorFields> {
    let up = upstream(view)?;
    let columns = [
        Column("systemid", ColumnType::Text),
        Column("timeline", ColumnType::Int4),
        Column("xlogpos", ColumnType::Text),
        Column("dbname", ColumnType::Text),
    ];
    let values = vec![
        Some(up.system_id.to_string()),
        Some(view.timeline().to_string()),
        Some(view.durable.lsn.to_string()),
        None,
    ];
    reply::result(out, &columns, values, "IDENTIFY_SYSTEM");
    Ok(())
}

/// `SHOW`: the settings pg_basebackup, pg_receivewal and walreceivers read.
fn show(out: &mut bytes::BytesMut, name: &str, view: &RelayView) -> Result<(), ErrorFields> {
    let up = upstream(view)?;
    let name = name.to_ascii_lowercase();
    let value = match name.as_str() {
        "wal_segment_size" => up.segment_size.show_text(),
        "data_directory_mode" => "0700".into(),
        "server_version" => up.server_version.clone(),
        "server_version_num" => up.version_num.to_string(),
        "integer_datetimes" => "on".into(),
        "wal_block_size" => "8192".into(),
        _ => {
            let text = format!("unrecognized configuration parameter \"{name}\"");
            return Err(ErrorFields::error(SqlState::UNDEFINED_OBJECT, text));
        }
    };
    reply::result(
        out,
        &[Column(&name, ColumnType::Text)],
        vec![Some(value)],
        "SHOW",
    );
    Ok(())
}

/// `TIMELINE_HISTORY`: the file's name and content, from the relay's copy.
fn timeline_history(
    out: &mut bytes::BytesMut,
    tli: TimelineId,
    view: &RelayView,
) -> Result<(), ErrorFields> {
    let name = tli.history_file_name();
    let columns = [
        Column("filename", ColumnType::Text),
        Column("content", ColumnType::Text),
    ];
    // PostgreSQL sends the row description before it opens the file.
    reply::header(out, &columns, 0);
    let content = view.histories.get(&tli).ok_or_else(|| {
        let text = format!("could not open file \"pg_wal/{name}\": No such file or directory");
        ErrorFields::error(SqlState::UNDEFINED_FILE, text)
    })?;
    reply::row(out, vec![Some(Bytes::from(name)), Some(content.clone())]);
    reply::complete(out, "TIMELINE_HISTORY");
    Ok(())
}

/// `READ_REPLICATION_SLOT`: a bad name is refused; a good one is looked up.
fn read_slot(io: &mut Outbox, name: &str) -> Phase {
    match slot_name(name) {
        Ok(name) => {
            io.act(Action::ReadSlot(name));
            Phase::Waiting(Pending::ReadSlot)
        }
        Err(e) => failed(io, &e),
    }
}

/// `ALTER_REPLICATION_SLOT` (PostgreSQL 17): it changes logical slots only. After its
/// options, the slot is looked up: a missing one is 42704, and every relay slot is physical,
/// which PostgreSQL refuses with 0A000 (`walsender.c:AlterReplicationSlot`,
/// `slot.c:ReplicationSlotAlter`).
fn alter_slot(io: &mut Outbox, name: &str, options: &[GenericOption]) -> Phase {
    if let Err(e) = check_alter_options(options) {
        return failed(io, &ErrorFields::error(e.sqlstate(), e.to_string()));
    }
    match SlotName::new(name) {
        Ok(slot) => {
            io.act(Action::ReadSlot(slot.clone()));
            Phase::Waiting(Pending::AlterSlot(slot))
        }
        Err(_) => failed(io, &no_such_slot(name)),
    }
}

/// The answer to the lookup of `ALTER_REPLICATION_SLOT`.
pub(super) fn alter_slot_answer(
    io: &mut Outbox,
    name: &SlotName,
    slot: Option<FoundSlot>,
) -> Phase {
    let e = match slot {
        None => no_such_slot(name.as_str()),
        Some(_) => ErrorFields::error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "cannot use ALTER_REPLICATION_SLOT with a physical replication slot",
        ),
    };
    failed(io, &e)
}

fn no_such_slot(name: &str) -> ErrorFields {
    ErrorFields::error(
        SqlState::UNDEFINED_OBJECT,
        format!("replication slot \"{name}\" does not exist"),
    )
}

/// A slot name, or PostgreSQL's error for it.
fn slot_name(name: &str) -> Result<SlotName, ErrorFields> {
    SlotName::new(name).map_err(|e| {
        let fields = ErrorFields::error(e.sqlstate(), e.to_string());
        match e.hint() {
            Some(h) => fields.with_hint(h),
            None => fields,
        }
    })
}

/// The answer to `READ_REPLICATION_SLOT`: a missing slot is one row of three NULLs.
pub(super) fn read_slot_answer(
    io: &mut Outbox,
    slot: Option<FoundSlot>,
    view: &RelayView,
) -> Phase {
    let columns = [
        Column("slot_type", ColumnType::Text),
        Column("restart_lsn", ColumnType::Text),
        Column("restart_tli", ColumnType::Int8),
    ];
    let values = match slot {
        None => vec![None, None, None],
        Some(s) => vec![
            Some("physical".to_owned()),
            s.restart_lsn.map(|l| l.to_string()),
            s.restart_lsn.map(|l| view.timeline_of(l).to_string()),
        ],
    };
    reply::result(&mut io.out, &columns, values, "READ_REPLICATION_SLOT");
    ready(io)
}

/// `CREATE_REPLICATION_SLOT … PHYSICAL [RESERVE_WAL] [TEMPORARY]`.
fn create_slot(
    io: &mut Outbox,
    name: &str,
    temporary: bool,
    kind: &SlotKind,
    view: &RelayView,
) -> Phase {
    let SlotKind::Physical { reserve_wal } = kind else {
        let text = "logical decoding requires a database connection";
        return failed(
            io,
            &ErrorFields::error(SqlState::FEATURE_NOT_SUPPORTED, text),
        );
    };
    let checked = upstream(view).and_then(|up| Ok((up.segment_size, slot_name(name)?)));
    match checked {
        Ok((segment_size, name)) => {
            // Where a base backup started now would need WAL from: the last checkpoint's
            // redo, as `slot.c:ReplicationSlotReserveWal` reserves at `GetRedoRecPtr()`.
            let from = view
                .last_redo
                .map_or(view.durable.lsn, |redo| redo.min(view.durable.lsn));
            let reserve = reserve_wal.then(|| segment_size.segment_start(from));
            io.act(Action::CreateSlot {
                name: name.clone(),
                temporary,
                reserve,
            });
            Phase::Waiting(Pending::CreateSlot(name))
        }
        Err(e) => failed(io, &e),
    }
}

/// The answer to a slot change: its result set or tag, or its error.
pub(super) fn slot_done(
    io: &mut Outbox,
    config: &SessionConfig,
    pending: Pending,
    outcome: Result<(), ErrorFields>,
    now: Now,
) -> Phase {
    if let Pending::Acquire(checked) = pending {
        return streaming::acquired(io, config, *checked, outcome, now);
    }
    if let Err(e) = outcome {
        return failed(io, &e);
    }
    match pending {
        Pending::CreateSlot(name) => {
            let columns = [
                Column("slot_name", ColumnType::Text),
                Column("consistent_point", ColumnType::Text),
                Column("snapshot_name", ColumnType::Text),
                Column("output_plugin", ColumnType::Text),
            ];
            let values = vec![
                Some(name.to_string()),
                Some(Lsn::INVALID.to_string()),
                None,
                None,
            ];
            reply::result(&mut io.out, &columns, values, "CREATE_REPLICATION_SLOT");
        }
        _ => reply::complete(&mut io.out, "DROP_REPLICATION_SLOT"),
    }
    ready(io)
}
