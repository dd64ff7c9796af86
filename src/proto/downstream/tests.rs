//! The downstream session driven in memory with a fake clock: every decision the relay makes
//! for a downstream client, checked byte for byte against the messages PostgreSQL 15 sends in
//! the same case (ACCEPTANCE.md §2.1, §2.3, §2.4; the integration tests send the same inputs
//! to the running relay).
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

mod authenticate;
mod backup;
mod commands;
mod startup;
mod streaming;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::types::{SqlState, SystemId, WalSegmentSize};
use crate::wire::backend::FieldDescription;
use crate::wire::frontend::FrontendMessage;
use crate::wire::{BackendMessage, ErrorFields, StartupMessage, TransactionStatus, split_frame};

const PID: BackendPid = BackendPid(4242);
const CANCEL_KEY: i32 = 77;
const SENDER_TIMEOUT: Duration = Duration::from_secs(10);

fn config() -> SessionConfig {
    SessionConfig {
        max_wal_senders: 3,
        max_base_backups: 0,
        sender_timeout: SENDER_TIMEOUT,
        shutdown_wait: Duration::from_secs(2),
        tls: false,
    }
}

fn upstream_of(server_version: &str) -> UpstreamInfo {
    UpstreamInfo::new(
        SystemId(7_351_213_962_143_123_456),
        WalSegmentSize::new(1 << 20).unwrap(),
        server_version.into(),
    )
}

/// The relay as the tests see it: upstream known, durable at 0/3000100 on timeline 1.
fn view() -> RelayView {
    view_of("15.18 (Debian 15.18-0+deb12u1)")
}

/// [`view`] with an upstream of another `server_version`.
fn view_of(server_version: &str) -> RelayView {
    RelayView {
        upstream: Some(Arc::new(upstream_of(server_version))),
        durable: DurableEnd {
            timeline: Some(TimelineId::ONE),
            lsn: Lsn(0x300_0100),
        },
        histories: Arc::default(),
        next_xid: None,
        last_redo: None,
    }
}

/// A fake clock: `at(s)` is `s` seconds after the tests' epoch.
fn at(secs: u64) -> Now {
    thread_local! {
        static EPOCH: Instant = Instant::now();
    }
    Now {
        at: EPOCH.with(|e| *e) + Duration::from_secs(secs),
        wall: PgTimestamp(i64::try_from(secs).unwrap() * 1_000_000),
    }
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// The nonce every test session gets.
const NONCE: [u8; 18] = [9; 18];

/// A session for a client at `peer`, without rules (loopback trusted).
fn session(config: SessionConfig, peer: IpAddr) -> DownstreamSession {
    DownstreamSession::new(config, peer.into(), Arc::default(), NONCE)
}

/// The bytes of `messages`, as the session must send them.
fn wire(messages: &[BackendMessage]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in messages {
        m.write(&mut out).unwrap();
    }
    out.to_vec()
}

/// A frontend message as a frame.
fn frame(message: FrontendMessage) -> Frame {
    let mut out = BytesMut::new();
    message.write(&mut out).unwrap();
    split_frame(&mut out, usize::MAX).unwrap().unwrap()
}

/// A frame with any tag and body.
fn raw(tag: u8, body: &[u8]) -> Frame {
    Frame {
        tag,
        body: Bytes::copy_from_slice(body),
    }
}

fn query(text: &str) -> Frame {
    frame(FrontendMessage::Query(text.into()))
}

fn out(s: &mut DownstreamSession) -> Vec<u8> {
    s.take_output().to_vec()
}

fn actions(s: &mut DownstreamSession) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn fatal(code: SqlState, text: &str) -> BackendMessage {
    BackendMessage::ErrorResponse(ErrorFields::fatal(code, text))
}

fn error(code: SqlState, text: &str) -> BackendMessage {
    BackendMessage::ErrorResponse(ErrorFields::error(code, text))
}

fn ready() -> BackendMessage {
    BackendMessage::ReadyForQuery(TransactionStatus::Idle)
}

fn complete(tag: &str) -> BackendMessage {
    BackendMessage::CommandComplete(tag.into())
}

fn columns(cols: &[(&str, u32, i16)]) -> BackendMessage {
    BackendMessage::RowDescription(
        cols.iter()
            .map(|(name, oid, len)| FieldDescription::text(*name, *oid, *len, -1))
            .collect(),
    )
}

fn row(values: &[Option<&str>]) -> BackendMessage {
    BackendMessage::DataRow(
        values
            .iter()
            .map(|v| v.map(|v| Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    )
}

/// A StartupMessage with these parameters, protocol 3.0.
fn startup(params: &[(&str, &str)]) -> StartupPacket {
    StartupPacket::Startup(StartupMessage {
        minor_version: 0,
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
}

const LOGIN: &[(&str, &str)] = &[
    ("user", "postgres"),
    ("database", "replication"),
    ("replication", "true"),
    ("application_name", "d1"),
];

/// A session that has logged in as `LOGIN`, its greeting taken.
fn logged_in() -> DownstreamSession {
    let mut s = session(config(), loopback());
    s.startup_packet(Ok(startup(LOGIN)), false, &view());
    assert_eq!(actions(&mut s), [Action::ClaimSender]);
    s.claimed(
        Some(SenderClaim {
            pid: PID,
            cancel_key: CANCEL_KEY,
        }),
        &view(),
    );
    out(&mut s);
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
    s
}

/// What a PostgreSQL 15 walsender sends from AuthenticationOk on, for `user` and `app`.
fn greeting(user: &str, app: &str) -> Vec<BackendMessage> {
    let mut m = vec![BackendMessage::Authentication(
        crate::wire::Authentication::Ok,
    )];
    for (name, value) in [
        ("application_name", app),
        ("client_encoding", "SQL_ASCII"),
        ("DateStyle", "ISO, MDY"),
        ("default_transaction_read_only", "off"),
        ("in_hot_standby", "off"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "on"),
        ("server_encoding", "SQL_ASCII"),
        ("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
        ("session_authorization", user),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "Etc/UTC"),
    ] {
        m.push(BackendMessage::ParameterStatus {
            name: name.into(),
            value: value.into(),
        });
    }
    m.push(BackendMessage::BackendKeyData {
        process_id: PID.0,
        secret_key: CANCEL_KEY,
    });
    m.push(ready());
    m
}
