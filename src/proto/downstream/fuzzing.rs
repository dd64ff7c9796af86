//! Fuzz entry point for the downstream session; `fuzz/fuzz_targets/downstream_session.rs`
//! only calls it.
//!
//! The input is a client's byte stream, preceded by one byte of choices (the client's address,
//! how the relay answers the session's actions, whether rules ask for SCRAM). The session is driven as the service drives
//! it: first packets while it wants them, then frames, every action answered, WAL "sent" up to
//! what it asks for, the clock moving on; at the end, shutdown. Properties: no panic; what the
//! session sends after the login always splits into well-formed backend messages; nothing is
//! read while an action waits for its answer.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::proto::access::HbaFile;
use crate::proto::auth::{AuthFile, Secret};
use crate::types::{SystemId, WalSegmentSize};
use crate::wire::BackendMessage;
use crate::wire::frame::{split_frame, split_startup_packet};

/// Drives one session over `data`: see the module documentation.
pub fn fuzz_session(data: &[u8]) {
    let Some((&choices, stream)) = data.split_first() else {
        return;
    };
    let peer = if choices & 1 == 0 {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    };
    let config = SessionConfig {
        max_wal_senders: 2,
        max_base_backups: 0,
        sender_timeout: Duration::from_secs(10),
        shutdown_wait: Duration::from_secs(2),
        tls: false,
    };
    let view = view(choices);
    let mut s = DownstreamSession::new(config, peer.into(), policy(choices), [7; 18]);
    let mut input = BytesMut::from(stream);
    let t0 = Instant::now();
    for step in 0..10_000u64 {
        let now = Now {
            at: t0 + Duration::from_millis(step * 700),
            wall: PgTimestamp(i64::try_from(step).unwrap_or(0)),
        };
        answer_actions(&mut s, choices, step, now, &view);
        check_output(&mut s);
        let more = match s.expects() {
            Expect::StartupPacket(max) => match split_startup_packet(&mut input, max) {
                Ok(Some(p)) => {
                    let buffered = !input.is_empty();
                    s.startup_packet(Ok(p), buffered, &view);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    s.startup_packet(Err(e), false, &view);
                    false
                }
            },
            Expect::Frame(max) => match split_frame(&mut input, max) {
                Ok(Some(f)) => {
                    s.frame(Ok(f), now, &view);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    s.frame(Err(e), now, &view);
                    false
                }
            },
            Expect::Nothing => false,
        };
        if let Some(range) = s.next_send(&view) {
            assert!(
                range.from < range.limit,
                "an empty range to send: {range:?}"
            );
            s.sent(range.limit);
        }
        s.tick(now);
        if !more {
            break;
        }
    }
    s.shutdown(Now {
        at: t0 + Duration::from_secs(100_000),
        wall: PgTimestamp(0),
    });
    answer_actions(
        &mut s,
        choices,
        0,
        Now {
            at: t0,
            wall: PgTimestamp(0),
        },
        &view,
    );
    check_output(&mut s);
}

fn view(choices: u8) -> RelayView {
    let tli2 = TimelineId::new(2).filter(|_| choices & 4 != 0);
    let upstream = UpstreamInfo::new(
        SystemId(7),
        WalSegmentSize::new(1 << 20).unwrap_or(WalSegmentSize::DEFAULT),
        "15.18".into(),
    );
    let history = Bytes::from_static(b"1\t0/3000080\tno recovery target specified\n");
    RelayView {
        upstream: (choices & 2 == 0).then(|| Arc::new(upstream)),
        durable: DurableEnd {
            timeline: Some(tli2.unwrap_or(TimelineId::ONE)),
            lsn: Lsn(0x300_0100),
        },
        histories: Arc::new(tli2.map(|t| (t, history)).into_iter().collect()),
        next_xid: (choices & 8 != 0).then_some((5 << 32) | 1000),
        last_redo: None,
    }
}

/// With bit 7, rules that ask everyone for SCRAM, and one user with a secret; else none
/// (loopback trusted).
fn policy(choices: u8) -> Arc<AccessPolicy> {
    let mut policy = AccessPolicy::default();
    if choices & 0x80 != 0 {
        let rules = "host replication all all scram-sha-256\n";
        policy.hba = HbaFile::parse(rules, "fuzz", &mut |_| Err(String::new())).ok();
        let secret = Secret::scram_from_password("fuzz-password", [1; 16], 16);
        let users = format!("postgres {secret}\n");
        policy.users = AuthFile::parse(&users, std::path::Path::new("fuzz")).unwrap_or_default();
    }
    Arc::new(policy)
}

/// Answers what the session asks; the answers depend on `choices` and the step.
fn answer_actions(s: &mut DownstreamSession, choices: u8, step: u64, now: Now, view: &RelayView) {
    while let Some(action) = s.poll_action() {
        let yes = !(u64::from(choices >> 4) + step).is_multiple_of(3);
        let refused = ErrorFields::error(crate::types::SqlState::OBJECT_IN_USE, "busy");
        match action {
            Action::ClaimSender => {
                let claim = yes.then_some(SenderClaim {
                    pid: BackendPid(1),
                    cancel_key: 2,
                });
                s.claimed(claim, view);
            }
            Action::ReadSlot(_) => {
                let found = yes.then_some(FoundSlot {
                    restart_lsn: Some(Lsn(0x300_0000)),
                });
                s.slot_read(found, view);
            }
            Action::CreateSlot { .. } | Action::DropSlot { .. } | Action::AcquireSlot(_) => {
                s.slot_done(if yes { Ok(()) } else { Err(refused) }, now);
            }
            _ => {}
        }
    }
}

/// Once logged in, the output must be whole backend messages.
fn check_output(s: &mut DownstreamSession) {
    let logged_in = s.login().is_some();
    let mut out = s.take_output();
    if !logged_in {
        return;
    }
    while !out.is_empty() {
        let frame = split_frame(&mut out, usize::MAX);
        assert!(
            matches!(frame, Ok(Some(_))),
            "output that is not whole messages"
        );
        if let Ok(Some(frame)) = frame {
            assert!(BackendMessage::parse(frame).is_ok(), "a malformed message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frontend::FrontendMessage;
    use crate::wire::{StartupMessage, StartupPacket};

    fn login() -> Vec<u8> {
        let mut out = BytesMut::new();
        let params = [("user", "u"), ("replication", "true")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec();
        StartupPacket::Startup(StartupMessage {
            minor_version: 0,
            params,
        })
        .write(&mut out)
        .unwrap();
        out.to_vec()
    }

    fn query(text: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        FrontendMessage::Query(text.into()).write(&mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn scripted_sessions_never_panic() {
        let script: Vec<u8> = [
            login(),
            query("IDENTIFY_SYSTEM"),
            query("CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL"),
            query("START_REPLICATION SLOT s PHYSICAL 0/3000000 TIMELINE 1"),
            vec![b'd', 0, 0, 0, 5, b'x'],
            vec![b'c', 0, 0, 0, 4],
        ]
        .concat();
        for choices in 0..=255u8 {
            let mut data = vec![choices];
            data.extend_from_slice(&script);
            fuzz_session(&data);
            data.truncate(data.len() / 2);
            fuzz_session(&data);
        }
        fuzz_session(&[]);
        fuzz_session(&[0, 0, 0, 0, 3]);
    }
}
