//! The upstream session driven in memory: what the relay does with each message a server
//! sends, at login, in command mode and while streaming.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::proto::auth::Channel;
use crate::proto::conninfo::ChannelBindingMode;
use crate::types::SqlState;
use crate::wire::backend::{CopyResponse, FieldDescription, INT8_OID, TEXT_OID};
use crate::wire::replication::{PrimaryKeepalive, ServerCopyData, XLogData};
use crate::wire::{Authentication, TransactionStatus, split_frame};

fn frames(messages: &[BackendMessage]) -> Vec<Frame> {
    let mut out = BytesMut::new();
    for m in messages {
        m.write(&mut out).unwrap();
    }
    std::iter::from_fn(|| split_frame(&mut out, usize::MAX).unwrap()).collect()
}

fn session() -> UpstreamSession {
    let auth = ClientAuth::new("repl", None, ChannelBindingMode::Prefer, Channel::Plain);
    let params = vec![("user".into(), "repl".into())];
    UpstreamSession::new(params, auth).unwrap()
}

/// Feeds `messages`, returning the events that are not `Continue`.
fn feed(s: &mut UpstreamSession, messages: &[BackendMessage]) -> Result<Vec<Event>, SessionError> {
    let mut events = Vec::new();
    for f in frames(messages) {
        match s.message(f, Instant::now())? {
            Event::Continue => {}
            e => events.push(e),
        }
    }
    Ok(events)
}

fn ready() -> BackendMessage {
    BackendMessage::ReadyForQuery(TransactionStatus::Idle)
}

fn param(name: &str, value: &str) -> BackendMessage {
    BackendMessage::ParameterStatus {
        name: name.into(),
        value: value.into(),
    }
}

fn logged_in() -> UpstreamSession {
    let mut s = session();
    s.take_output();
    let login = [
        BackendMessage::Authentication(Authentication::Ok),
        param("server_version", "15.18"),
        BackendMessage::BackendKeyData {
            process_id: 99,
            secret_key: 1,
        },
        ready(),
    ];
    feed(&mut s, &login).unwrap();
    s
}

fn copy_data(data: &ServerCopyData) -> BackendMessage {
    let mut payload = BytesMut::new();
    match data {
        ServerCopyData::XLogData(x) => x.write_payload(&mut payload),
        ServerCopyData::Keepalive(k) => k.write_payload(&mut payload),
    }
    BackendMessage::CopyData(payload.freeze())
}

fn wal(start: u64, n: usize) -> BackendMessage {
    copy_data(&ServerCopyData::XLogData(XLogData {
        start: Lsn(start),
        end: Lsn(start + n as u64),
        send_time: PgTimestamp(0),
        data: Bytes::from(vec![1; n]),
    }))
}

/// A logged-in session that has sent START_REPLICATION from 0/1000000 on slot `walrelay`.
fn starting() -> UpstreamSession {
    let mut s = logged_in();
    let timing = StreamTiming {
        status_interval: Duration::from_secs(10),
        receive_timeout: Duration::from_secs(30),
    };
    s.start_replication(
        Some("walrelay"),
        TimelineId::ONE,
        Lsn(0x100_0000),
        timing,
        Instant::now(),
    )
    .unwrap();
    let sent = s.take_output();
    assert!(sent.ends_with(b"START_REPLICATION SLOT \"walrelay\" PHYSICAL 0/1000000 TIMELINE 1\0"));
    s
}

fn streaming() -> UpstreamSession {
    let mut s = starting();
    let copy_both = BackendMessage::CopyBothResponse(CopyResponse::default());
    assert_eq!(feed(&mut s, &[copy_both]).unwrap(), [Event::Streaming]);
    s
}

#[test]
fn login_sends_the_startup_message_and_reads_until_ready() {
    let mut s = session();
    let sent = s.take_output();
    assert_eq!(&sent[4..8], &196_608_i32.to_be_bytes(), "protocol 3.0");
    assert_eq!(s.frame_limit(), crate::wire::frame::AUTH_FRAME_LIMIT);
    let events = feed(
        &mut s,
        &[
            BackendMessage::Authentication(Authentication::Ok),
            param("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
            param("in_hot_standby", "on"),
            param("default_transaction_read_only", "off"),
            BackendMessage::NoticeResponse(ErrorFields::notice(
                SqlState::SUCCESSFUL_COMPLETION,
                "hi",
            )),
            BackendMessage::BackendKeyData {
                process_id: 4242,
                secret_key: 7,
            },
            ready(),
        ],
    )
    .unwrap();
    let server = ServerInfo {
        server_version: "15.18 (Debian 15.18-0+deb12u1)".into(),
        version_num: 150_018,
        backend_pid: 4242,
        cancel_key: CancelKey(7),
        default_read_only: Some(false),
        in_hot_standby: Some(true),
    };
    assert_eq!(events, [Event::Ready(server)]);
    assert_eq!(s.frame_limit(), crate::wire::frame::BACKEND_FRAME_LIMIT);
}

#[test]
fn login_refusals() {
    let refused = ErrorFields::fatal(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "no");
    let err = feed(
        &mut session(),
        &[BackendMessage::ErrorResponse(refused.clone())],
    )
    .unwrap_err();
    assert!(
        matches!(err, SessionError::Server(ref e) if *e == refused),
        "{err}"
    );
    // A password asked for with none configured.
    let err = feed(
        &mut session(),
        &[BackendMessage::Authentication(
            Authentication::Md5Password { salt: [1; 4] },
        )],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "authentication failed: fe_sendauth: no password supplied"
    );
    let err = feed(&mut session(), &[ready()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol violation: expected authentication request, got message type 'Z'"
    );
    let mut flood = vec![BackendMessage::Authentication(Authentication::Ok)];
    flood.extend((0..=MAX_STARTUP_MESSAGES).map(|i| param(&format!("p{i}"), "v")));
    let err = feed(&mut session(), &flood).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol violation: too many messages before ReadyForQuery"
    );
}

#[test]
fn a_command_answer_is_collected_until_ready() {
    let mut s = logged_in();
    s.query("IDENTIFY_SYSTEM").unwrap();
    assert!(s.query("SHOW x").is_err(), "one command at a time");
    let answer = [
        BackendMessage::RowDescription(vec![FieldDescription::text("systemid", TEXT_OID, -1, -1)]),
        BackendMessage::DataRow(vec![Some(Bytes::from_static(b"7"))]),
        BackendMessage::CommandComplete("IDENTIFY_SYSTEM".into()),
        ready(),
    ];
    let events = feed(&mut s, &answer).unwrap();
    let [Event::Result(result)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(result.columns, [("systemid".to_owned(), TEXT_OID)]);
    assert_eq!(result.tags, ["IDENTIFY_SYSTEM"]);
    // An error is reported once ReadyForQuery has come: the session is idle again.
    s.query("TIMELINE_HISTORY 1").unwrap();
    let e = ErrorFields::error(SqlState::UNDEFINED_FILE, "could not open file");
    let err = feed(&mut s, &[BackendMessage::ErrorResponse(e.clone()), ready()]).unwrap_err();
    assert_eq!(err.server_sqlstate(), Some(&SqlState::UNDEFINED_FILE));
    s.query("IDENTIFY_SYSTEM").unwrap();
}

#[test]
fn too_many_notices_in_a_command_are_hostile() {
    let mut s = logged_in();
    s.query("IDENTIFY_SYSTEM").unwrap();
    let notice =
        BackendMessage::NoticeResponse(ErrorFields::notice(SqlState::SUCCESSFUL_COMPLETION, "n"));
    let flood = vec![notice; MAX_NOTICES + 1];
    let err = feed(&mut s, &flood).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol violation: too many notices from server"
    );
}

#[test]
fn copy_both_starts_the_stream_and_wal_must_be_contiguous() {
    let mut s = streaming();
    let events = feed(&mut s, &[wal(0x100_0000, 16), wal(0x100_0010, 8)]).unwrap();
    assert!(matches!(
        &events[..],
        [
            Event::Wal { .. },
            Event::Wal {
                start: Lsn(0x100_0010),
                ..
            }
        ]
    ));
    let err = feed(&mut s, &[wal(0x100_0000, 8)]).unwrap_err();
    assert!(
        matches!(err, SessionError::Stream(StreamError::Discontinuity { .. })),
        "{err}"
    );
}

/// PostgreSQL 12 and 13 send ParameterStatus to a walsender's client on every reload, in the
/// middle of the stream; it may come at any time, and libpq takes it in its stride.
#[test]
fn a_parameter_status_mid_stream_goes_by() {
    let mut s = streaming();
    let events = feed(
        &mut s,
        &[
            wal(0x100_0000, 16),
            param("TimeZone", "Etc/UTC"),
            wal(0x100_0010, 8),
        ],
    )
    .unwrap();
    assert!(matches!(
        &events[..],
        [
            Event::Wal { .. },
            Event::Wal {
                start: Lsn(0x100_0010),
                ..
            }
        ]
    ));
}

#[test]
fn the_server_asks_and_the_session_reports() {
    let mut s = streaming();
    let ask = copy_data(&ServerCopyData::Keepalive(PrimaryKeepalive {
        end: Lsn(0x100_0000),
        send_time: PgTimestamp(0),
        reply_requested: true,
    }));
    assert_eq!(feed(&mut s, &[ask]).unwrap(), [Event::ReplyRequested]);
    s.report(
        Lsn(0x100_0000),
        Lsn(0x100_0000),
        Instant::now(),
        PgTimestamp(1),
    );
    let sent = s.take_output();
    assert_eq!((sent[0], sent[5]), (b'd', b'r'), "a status update");
}

#[test]
fn a_status_update_reports_durable_as_flush_never_more_than_written() {
    let mut s = streaming();
    let now = Instant::now();
    s.keep_alive(Lsn(0x100_0800), Lsn(0x100_0400), now, PgTimestamp(1))
        .unwrap();
    let sent = s.take_output();
    let mut body = BytesMut::from(&sent[..]);
    let f = split_frame(&mut body, usize::MAX).unwrap().unwrap();
    let r = crate::wire::ClientCopyData::parse(f.body.slice(..)).unwrap();
    let crate::wire::ClientCopyData::StatusUpdate(r) = r else {
        panic!("{r:?}");
    };
    assert_eq!(
        (r.write, r.flush, r.apply),
        (Lsn(0x100_0800), Lsn(0x100_0400), Lsn(0))
    );
    // Nothing changed and the interval has not passed: no update.
    s.keep_alive(Lsn(0x100_0800), Lsn(0x100_0400), now, PgTimestamp(1))
        .unwrap();
    assert!(s.take_output().is_empty());
}

#[test]
fn a_silent_server_times_out_on_the_relays_clock() {
    let mut s = streaming();
    let later = Instant::now() + Duration::from_secs(31);
    let err = s
        .keep_alive(Lsn(0), Lsn(0), later, PgTimestamp(0))
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Stream(StreamError::Timeout(_))),
        "{err}"
    );
}

#[test]
fn copy_done_ends_the_timeline_and_the_next_one_follows() {
    let mut s = streaming();
    feed(&mut s, &[wal(0x100_0000, 0x80)]).unwrap();
    assert_eq!(
        feed(&mut s, &[BackendMessage::CopyDone]).unwrap(),
        [Event::TimelineDone]
    );
    s.end_timeline(
        Lsn(0x100_0080),
        Lsn(0x100_0080),
        Instant::now(),
        PgTimestamp(0),
    );
    let sent = s.take_output();
    assert_eq!(
        sent.last_chunk::<5>(),
        Some(&[b'c', 0, 0, 0, 4]),
        "CopyDone last"
    );
    let next = [
        BackendMessage::RowDescription(vec![
            FieldDescription::text("next_tli", INT8_OID, 8, -1),
            FieldDescription::text("next_tli_startpos", TEXT_OID, -1, -1),
        ]),
        BackendMessage::DataRow(vec![
            Some(Bytes::from_static(b"2")),
            Some(Bytes::from_static(b"0/1000080")),
        ]),
        BackendMessage::CommandComplete("START_STREAMING".into()),
        BackendMessage::CommandComplete("START_REPLICATION".into()),
        ready(),
    ];
    let events = feed(&mut s, &next).unwrap();
    let [Event::TimelineEnded(end)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!((end.next.get(), end.start), (2, Lsn(0x100_0080)));
    s.query("IDENTIFY_SYSTEM").unwrap();
}

#[test]
fn what_ends_a_stream() {
    let ended = BackendMessage::CommandComplete("COPY 0".into());
    let err = feed(&mut streaming(), &[ended]).unwrap_err();
    assert!(
        matches!(err, SessionError::StreamEnded(ref t) if t == "COPY 0"),
        "{err}"
    );
    let e = ErrorFields::error(
        SqlState::UNDEFINED_FILE,
        "requested WAL segment has already been removed",
    );
    let err = feed(&mut streaming(), &[BackendMessage::ErrorResponse(e)]).unwrap_err();
    assert_eq!(err.server_sqlstate(), Some(&SqlState::UNDEFINED_FILE));
    let err = feed(&mut streaming(), &[ready()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol violation: unexpected message type 'Z' during streaming"
    );
}

#[test]
fn start_replication_answered_without_copy_mode() {
    let mut s = starting();
    let out = BackendMessage::CopyOutResponse(CopyResponse::default());
    let err = feed(&mut s, &[out]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol violation: expected CopyBothResponse, got message type 'H'"
    );
    let mut s = starting();
    let e = ErrorFields::error(
        SqlState::UNDEFINED_OBJECT,
        "replication slot \"walrelay\" does not exist",
    );
    let err = feed(&mut s, &[BackendMessage::ErrorResponse(e), ready()]).unwrap_err();
    assert_eq!(err.server_sqlstate(), Some(&SqlState::UNDEFINED_OBJECT));
}
