//! `START_REPLICATION` and §2.4: the streaming phase.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use super::*;
use crate::types::FullXid;
use crate::wire::backend::{CopyResponse, INT8_OID, TEXT_OID};
use crate::wire::replication::{
    ClientCopyData, HotStandbyFeedback, PrimaryKeepalive, ServerCopyData, StandbyStatusUpdate,
};

const START: Lsn = Lsn(0x300_0000);

fn copy_both() -> BackendMessage {
    BackendMessage::CopyBothResponse(CopyResponse::default())
}

fn keepalive(end: Lsn, secs: u64, reply: bool) -> Vec<u8> {
    let mut out = BytesMut::new();
    let k = PrimaryKeepalive {
        end,
        send_time: at(secs).wall,
        reply_requested: reply,
    };
    ServerCopyData::Keepalive(k).write(&mut out).unwrap();
    out.to_vec()
}

fn client_data(data: ClientCopyData) -> Frame {
    let mut out = BytesMut::new();
    data.write(&mut out);
    split_frame(&mut out, usize::MAX).unwrap().unwrap()
}

fn status(write: u64, flush: u64, reply: bool) -> Frame {
    client_data(ClientCopyData::StatusUpdate(StandbyStatusUpdate {
        write: Lsn(write),
        flush: Lsn(flush),
        apply: Lsn(0),
        send_time: PgTimestamp(0),
        reply_requested: reply,
    }))
}

/// A session streaming from `START`, with `slot` if given; the CopyBothResponse taken.
fn streaming(slot: Option<&str>) -> DownstreamSession {
    let mut s = logged_in();
    let text = match slot {
        Some(name) => format!("START_REPLICATION SLOT {name} PHYSICAL {START}"),
        None => format!("START_REPLICATION {START}"),
    };
    s.frame(Ok(query(&text)), at(0), &view());
    if let Some(name) = slot {
        assert_eq!(actions(&mut s), [Action::AcquireSlot(name.into())]);
        s.slot_done(Ok(()), at(0));
    }
    assert_eq!(out(&mut s), wire(&[copy_both()]));
    assert_eq!(
        actions(&mut s),
        [Action::BeginStream(StreamStart {
            slot: slot.map(|n| SlotName::new(n).unwrap()),
            timeline: TimelineId::ONE,
            start: START,
        })]
    );
    assert!(s.is_streaming());
    assert_eq!(s.expects(), Expect::Frame(SMALL_FRAME_LIMIT));
    s
}

#[test]
fn wal_goes_out_up_to_the_durable_end() {
    let mut s = streaming(None);
    let range = s.next_send(&view()).unwrap();
    assert_eq!(
        range,
        crate::proto::downstream::streaming::SendRange {
            timeline: TimelineId::ONE,
            from: START,
            limit: Lsn(0x300_0100),
        }
    );
    s.sent(Lsn(0x300_0100));
    assert_eq!(
        actions(&mut s),
        [Action::Progress {
            sent: Lsn(0x300_0100),
            client: ClientPositions::default()
        }]
    );
    assert_eq!(s.next_send(&view()), None, "nothing beyond the durable end");
    let later = RelayView {
        durable: DurableEnd {
            timeline: Some(TimelineId::ONE),
            lsn: Lsn(0x300_4000),
        },
        ..view()
    };
    assert_eq!(s.next_send(&later).unwrap().from, Lsn(0x300_0100));
    assert!(out(&mut s).is_empty());
}

#[test]
fn a_start_ahead_of_the_relay_waits_with_keepalives() {
    // Newer PostgreSQL waits for the WAL instead of refusing (PG15 refused it).
    let mut s = logged_in();
    s.frame(
        Ok(query("START_REPLICATION FFFFFFFF/FFFFFFFF TIMELINE 1")),
        at(0),
        &view(),
    );
    assert_eq!(out(&mut s), wire(&[copy_both()]));
    actions(&mut s);
    assert_eq!(s.next_send(&view()), None);
    assert_eq!(
        s.deadline(),
        Some(at(5).at),
        "a ping at half the sender timeout"
    );
    s.tick(at(5));
    assert_eq!(out(&mut s), keepalive(Lsn::MAX, 5, true));
    s.frame(Ok(status(0, 0, true)), at(6), &view());
    assert_eq!(out(&mut s), keepalive(Lsn::MAX, 6, false));
}

#[test]
fn status_updates_move_the_slot_up_to_what_was_sent() {
    let mut s = streaming(Some("d1"));
    s.sent(Lsn(0x300_0080));
    actions(&mut s);
    // A reconnecting walreceiver reports its replay position, ahead of what was sent: the
    // slot moves only to what was sent.
    s.frame(Ok(status(0x300_00F0, 0x300_00F0, false)), at(1), &view());
    let client = ClientPositions {
        write: Lsn(0x300_00F0),
        flush: Lsn(0x300_00F0),
        apply: Lsn(0),
        reply_time: PgTimestamp(0),
    };
    assert_eq!(
        actions(&mut s),
        [
            Action::Progress {
                sent: Lsn(0x300_0080),
                client
            },
            Action::ConfirmFlush {
                slot: "d1".into(),
                flush: Lsn(0x300_0080)
            }
        ]
    );
    assert!(out(&mut s).is_empty(), "no reply was asked for");
    // flush 0 (pg_receivewal without --synchronous) moves no slot.
    s.frame(Ok(status(0x300_0080, 0, false)), at(1), &view());
    assert!(matches!(actions(&mut s)[..], [Action::Progress { .. }]));
}

#[test]
fn a_position_beyond_the_relays_wal_is_a_protocol_violation() {
    let mut s = streaming(Some("d1"));
    s.frame(Ok(status(1, 0xFFFF_FFFF_0000_0000, false)), at(1), &view());
    let text = "standby reported flush position FFFFFFFF/0, which is ahead of the WAL flush position of this server 0/3000100";
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::PROTOCOL_VIOLATION, text)])
    );
    assert_eq!(
        actions(&mut s),
        [
            Action::EndStream {
                slot: Some("d1".into())
            },
            Action::Close
        ]
    );
}

/// After a promotion the relay stores timeline 2 again from the start of the segment it
/// forked in, while a standby that streamed timeline 1 to its end reports that end: below the
/// parent's end it is WAL the relay had, and the stream goes on.
#[test]
fn a_position_up_to_the_parents_end_is_accepted_after_a_timeline_switch() {
    let tli2 = TimelineId::new(2).unwrap();
    let history = Bytes::from_static(b"1\t0/3000080\tno recovery target specified\n");
    let view = RelayView {
        durable: DurableEnd {
            timeline: Some(tli2),
            lsn: Lsn(0x300_0040),
        },
        histories: Arc::new([(tli2, history)].into()),
        ..view()
    };
    let mut s = logged_in();
    s.frame(
        Ok(query(
            "START_REPLICATION SLOT d1 PHYSICAL 0/3000000 TIMELINE 2",
        )),
        at(0),
        &view,
    );
    assert_eq!(actions(&mut s), [Action::AcquireSlot("d1".into())]);
    s.slot_done(Ok(()), at(0));
    assert_eq!(out(&mut s), wire(&[copy_both()]));
    actions(&mut s);
    s.frame(Ok(status(0x300_0080, 0x300_0080, false)), at(1), &view);
    assert!(out(&mut s).is_empty());
    assert!(s.is_streaming());
    let text = "standby reported flush position 0/3000081, which is ahead of the WAL flush position of this server 0/3000080";
    s.frame(Ok(status(0x300_0080, 0x300_0081, false)), at(2), &view);
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::PROTOCOL_VIOLATION, text)])
    );
}

/// `pg_basebackup -X stream` starts its WAL streamer at the backup's start, which may be
/// ahead of what the relay holds yet, and reports that position at once: the stream waits.
#[test]
fn a_client_may_report_where_it_asked_to_start() {
    let mut s = logged_in();
    s.frame(
        Ok(query("START_REPLICATION PHYSICAL 0/3002000 TIMELINE 1")),
        at(0),
        &view(),
    );
    assert_eq!(out(&mut s), wire(&[copy_both()]));
    actions(&mut s);
    s.frame(Ok(status(0x300_2000, 0, false)), at(1), &view());
    assert!(out(&mut s).is_empty());
    assert!(s.is_streaming());
    s.frame(Ok(status(0x300_2001, 0, false)), at(2), &view());
    let text = "standby reported write position 0/3002001, which is ahead of the WAL flush position of this server 0/3002000";
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::PROTOCOL_VIOLATION, text)])
    );
}

#[test]
fn malformed_client_messages_end_the_stream_with_08p01() {
    let short = raw(b'd', &[b'r', 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    let mut long_body = vec![b'r'];
    long_body.extend_from_slice(&[0; 34]);
    let long = raw(b'd', &long_body);
    for (what, frame, text) in [
        (
            "'r' of 10 bytes",
            short,
            "insufficient data left in message",
        ),
        (
            "'r' with a trailing byte",
            long,
            "invalid message format: 1 unexpected bytes at end of message",
        ),
        (
            "a Query",
            query("IDENTIFY_SYSTEM"),
            "invalid standby message type \"Q\"",
        ),
    ] {
        let mut s = streaming(None);
        s.frame(Ok(frame), at(1), &view());
        let got = out(&mut s);
        let mut body = BytesMut::from(&got[..]);
        let Some(BackendMessage::ErrorResponse(e)) = split_frame(&mut body, usize::MAX)
            .unwrap()
            .map(|f| BackendMessage::parse(f).unwrap())
        else {
            panic!("{what}: {got:?}");
        };
        assert_eq!(
            (&e.severity, &e.code),
            (&crate::wire::Severity::Fatal, &SqlState::PROTOCOL_VIOLATION),
            "{what}"
        );
        assert!(e.message.contains(text), "{what}: {}", e.message);
        assert_eq!(
            actions(&mut s),
            [Action::EndStream { slot: None }, Action::Close],
            "{what}"
        );
    }
}

#[test]
fn every_status_update_asking_for_a_reply_gets_one_keepalive() {
    let mut s = streaming(None);
    s.sent(Lsn(0x300_0100));
    for i in 0..100 {
        s.frame(Ok(status(0x300_0100, 0x300_0100, true)), at(2), &view());
        assert_eq!(out(&mut s), keepalive(Lsn(0x300_0100), 2, false), "{i}");
    }
}

#[test]
fn a_silent_client_is_pinged_at_half_the_timeout_then_dropped() {
    let mut s = streaming(None);
    assert_eq!(s.deadline(), Some(at(5).at));
    s.tick(at(4));
    assert!(out(&mut s).is_empty());
    s.tick(at(5));
    assert_eq!(out(&mut s), keepalive(START, 5, true));
    s.tick(at(7));
    assert!(out(&mut s).is_empty(), "one ping per silence");
    assert_eq!(s.deadline(), Some(at(10).at));
    s.tick(at(10));
    assert!(out(&mut s).is_empty(), "dropped without a message");
    assert_eq!(
        actions(&mut s),
        [Action::EndStream { slot: None }, Action::Close]
    );
}

#[test]
fn any_message_proves_the_client_alive() {
    let mut s = streaming(None);
    s.tick(at(5));
    out(&mut s);
    s.frame(Ok(status(0x300_0000, 0, false)), at(9), &view());
    s.tick(at(10));
    assert!(!s.is_closed());
    assert_eq!(s.deadline(), Some(at(14).at));
}

#[test]
fn hot_standby_feedback_is_forwarded_unless_not_in_the_recent_past() {
    let feedback = |epoch, xid| {
        client_data(ClientCopyData::HotStandbyFeedback(HotStandbyFeedback {
            send_time: PgTimestamp(0),
            xmin: xid,
            xmin_epoch: epoch,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        }))
    };
    let mut s = streaming(Some("d1"));
    let horizon = XminHorizon {
        xmin: FullXid::new(0, 748),
        catalog_xmin: None,
    };
    s.frame(Ok(feedback(0, 748)), at(1), &view());
    assert_eq!(
        actions(&mut s),
        [Action::Feedback {
            slot: Some("d1".into()),
            horizon
        }]
    );
    // 0/0 releases.
    s.frame(Ok(feedback(0, 0)), at(1), &view());
    assert_eq!(
        actions(&mut s),
        [Action::Feedback {
            slot: Some("d1".into()),
            horizon: XminHorizon::default()
        }]
    );
    // With the upstream at epoch 5, an epoch-0 xmin is not in the recent past: ignored.
    let epoch5 = RelayView {
        next_xid: Some((5 << 32) | 1000),
        last_redo: None,
        ..view()
    };
    s.frame(Ok(feedback(0, 748)), at(1), &epoch5);
    assert!(actions(&mut s).is_empty());
    s.frame(Ok(feedback(5, 900)), at(1), &epoch5);
    assert_eq!(actions(&mut s).len(), 1);
    assert!(out(&mut s).is_empty());
}

#[test]
fn the_client_ends_the_stream_with_copy_done() {
    let mut s = streaming(Some("d1"));
    s.frame(Ok(frame(FrontendMessage::CopyDone)), at(1), &view());
    assert_eq!(
        out(&mut s),
        wire(&[
            BackendMessage::CopyDone,
            complete("START_STREAMING"),
            complete("START_REPLICATION"),
            ready()
        ])
    );
    assert_eq!(
        actions(&mut s),
        [Action::EndStream {
            slot: Some("d1".into())
        }]
    );
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
    // A second CopyDone, now in command mode, is ignored.
    s.frame(Ok(frame(FrontendMessage::CopyDone)), at(1), &view());
    assert!(out(&mut s).is_empty());
}

#[test]
fn terminate_mid_stream_closes() {
    let mut s = streaming(None);
    s.frame(Ok(frame(FrontendMessage::Terminate)), at(1), &view());
    assert!(out(&mut s).is_empty());
    assert_eq!(
        actions(&mut s),
        [Action::EndStream { slot: None }, Action::Close]
    );
}

#[test]
fn removed_wal_ends_the_stream_with_58p01() {
    let mut s = streaming(None);
    let e = ErrorFields::error(
        SqlState::UNDEFINED_FILE,
        "requested WAL segment 000000010000000000000003 has already been removed",
    );
    s.wal_unavailable(&e);
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(e), ready()])
    );
    assert_eq!(actions(&mut s), [Action::EndStream { slot: None }]);
    assert!(!s.is_streaming());
}

#[test]
fn slot_errors_answer_before_copy_mode() {
    let mut s = logged_in();
    s.frame(
        Ok(query("START_REPLICATION SLOT d1 PHYSICAL 0/3000000")),
        at(0),
        &view(),
    );
    assert_eq!(actions(&mut s), [Action::AcquireSlot("d1".into())]);
    let busy = ErrorFields::error(
        SqlState::OBJECT_IN_USE,
        "replication slot \"d1\" is active for PID 7",
    );
    s.slot_done(Err(busy.clone()), at(0));
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(busy), ready()])
    );
    assert!(actions(&mut s).is_empty());
    assert!(!s.is_streaming());
}

/// The relay after a promotion: timeline 2 from 0/3000080.
fn on_timeline_2() -> RelayView {
    let tli2 = TimelineId::new(2).unwrap();
    let history = Bytes::from_static(b"1\t0/3000080\tno recovery target specified\n");
    RelayView {
        durable: DurableEnd {
            timeline: Some(tli2),
            lsn: Lsn(0x300_2000),
        },
        histories: Arc::new([(tli2, history)].into()),
        ..view()
    }
}

fn next_timeline() -> Vec<BackendMessage> {
    vec![
        columns(&[
            ("next_tli", INT8_OID, 8),
            ("next_tli_startpos", TEXT_OID, -1),
        ]),
        row(&[Some("2"), Some("0/3000080")]),
        complete("START_STREAMING"),
    ]
}

#[test]
fn timelines_not_in_the_history_are_refused() {
    let mut s = logged_in();
    s.frame(
        Ok(query("START_REPLICATION 0/0 TIMELINE 9")),
        at(0),
        &on_timeline_2(),
    );
    assert_eq!(
        out(&mut s),
        wire(&[
            error(
                SqlState::INTERNAL_ERROR,
                "requested timeline 9 is not in this server's history"
            ),
            ready()
        ])
    );
    s.frame(
        Ok(query("START_REPLICATION 0/3000100 TIMELINE 1")),
        at(0),
        &on_timeline_2(),
    );
    let e = ErrorFields::error(
        SqlState::INTERNAL_ERROR,
        "requested starting point 0/3000100 on timeline 1 is not in this server's history",
    )
    .with_detail("This server's history forked from timeline 1 at 0/3000080.");
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(e), ready()])
    );
}

#[test]
fn a_historic_timeline_ends_at_its_switch_point() {
    let mut s = logged_in();
    let v = on_timeline_2();
    s.frame(
        Ok(query("START_REPLICATION 0/3000000 TIMELINE 1")),
        at(0),
        &v,
    );
    assert_eq!(out(&mut s), wire(&[copy_both()]));
    actions(&mut s);
    let range = s.next_send(&v).unwrap();
    assert_eq!(
        (range.timeline, range.from, range.limit),
        (
            TimelineId::new(2).unwrap(),
            Lsn(0x300_0000),
            Lsn(0x300_0080)
        ),
        "the segment timeline 1 ends in is read from timeline 2's file"
    );
    s.sent(Lsn(0x300_0080));
    actions(&mut s);
    assert_eq!(s.next_send(&v), None);
    assert_eq!(out(&mut s), wire(&[BackendMessage::CopyDone]));
    assert_eq!(s.next_send(&v), None);
    assert!(out(&mut s).is_empty(), "CopyDone once");
    // Status updates still count while the client finishes.
    s.frame(Ok(status(0x300_0080, 0x300_0080, false)), at(1), &v);
    actions(&mut s);
    s.frame(Ok(frame(FrontendMessage::CopyDone)), at(1), &v);
    let mut expected = next_timeline();
    expected.extend([complete("START_REPLICATION"), ready()]);
    assert_eq!(out(&mut s), wire(&expected));
    assert_eq!(actions(&mut s), [Action::EndStream { slot: None }]);
}

/// As walsender reads it: a historic timeline's segments from its own files, except the one
/// it ends in, from the next timeline's file (the relay's copy on the old timeline may stop
/// short of the switch point).
#[test]
fn only_the_segment_a_historic_timeline_ends_in_is_read_from_the_next_timeline() {
    let (one, two) = (TimelineId::ONE, TimelineId::new(2).unwrap());
    let history = Bytes::from_static(b"1\t0/3100080\tno recovery target specified\n");
    let v = RelayView {
        durable: DurableEnd {
            timeline: Some(two),
            lsn: Lsn(0x320_0000),
        },
        histories: Arc::new([(two, history)].into()),
        ..view()
    };
    let mut s = logged_in();
    s.frame(
        Ok(query("START_REPLICATION 0/30FFF00 TIMELINE 1")),
        at(0),
        &v,
    );
    assert_eq!(out(&mut s), wire(&[copy_both()]));
    actions(&mut s);
    let range = s.next_send(&v).unwrap();
    assert_eq!((range.timeline, range.from), (one, Lsn(0x30F_FF00)));
    s.sent(Lsn(0x310_0000));
    actions(&mut s);
    let range = s.next_send(&v).unwrap();
    assert_eq!(
        (range.timeline, range.from, range.limit),
        (two, Lsn(0x310_0000), Lsn(0x310_0080))
    );
}

#[test]
fn a_historic_timeline_ending_at_the_start_skips_copy_mode() {
    let mut s = logged_in();
    s.frame(
        Ok(query("START_REPLICATION 0/3000080 TIMELINE 1")),
        at(0),
        &on_timeline_2(),
    );
    let mut expected = next_timeline();
    expected.extend([complete("START_REPLICATION"), ready()]);
    assert_eq!(out(&mut s), wire(&expected));
    assert_eq!(actions(&mut s), [Action::EndStream { slot: None }]);
}

#[test]
fn a_stream_follows_the_relay_onto_a_new_timeline() {
    let mut s = streaming(None);
    s.sent(Lsn(0x300_0080));
    actions(&mut s);
    // The relay followed a promotion at 0/3000080: this timeline ends there.
    assert_eq!(s.next_send(&on_timeline_2()), None);
    assert_eq!(out(&mut s), wire(&[BackendMessage::CopyDone]));
}

#[test]
fn shutdown_asks_for_confirmation_then_ends_with_copy_0() {
    let mut s = streaming(None);
    s.sent(Lsn(0x300_0100));
    actions(&mut s);
    s.shutdown(at(3));
    assert_eq!(out(&mut s), keepalive(Lsn(0x300_0100), 3, true));
    assert_eq!(s.next_send(&view()), None, "nothing more is sent");
    assert_eq!(s.deadline(), Some(at(5).at));
    s.frame(Ok(status(0x300_0100, 0x300_0100, false)), at(4), &view());
    assert_eq!(out(&mut s), wire(&[complete("COPY 0")]));
    assert_eq!(
        actions(&mut s)[1..],
        [Action::EndStream { slot: None }, Action::Close]
    );

    let mut s = streaming(None);
    s.sent(Lsn(0x300_0100));
    s.shutdown(at(3));
    out(&mut s);
    actions(&mut s);
    s.tick(at(4));
    assert!(out(&mut s).is_empty());
    s.tick(at(5));
    assert_eq!(out(&mut s), wire(&[complete("COPY 0")]), "the wait is over");
    assert_eq!(
        actions(&mut s),
        [Action::EndStream { slot: None }, Action::Close]
    );
}
