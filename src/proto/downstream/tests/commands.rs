//! §2.3: command mode.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use super::*;
use crate::wire::backend::{INT4_OID, INT8_OID, TEXT_OID};

/// The whole answer to one Query.
fn answer(s: &mut DownstreamSession, text: &str) -> Vec<u8> {
    answer_on(s, &view(), text)
}

/// The answer with the relay in state `view` (another upstream major, say).
fn answer_on(s: &mut DownstreamSession, view: &RelayView, text: &str) -> Vec<u8> {
    s.frame(Ok(query(text)), at(0), view);
    out(s)
}

fn sql_refused() -> Vec<u8> {
    wire(&[
        error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "cannot execute SQL commands in WAL sender for physical replication",
        ),
        ready(),
    ])
}

#[test]
fn sql_is_refused_as_a_physical_walsender_refuses_it() {
    let mut s = logged_in();
    for text in ["SELECT 1", "FROBNICATE", "select pg_sleep(1)"] {
        assert_eq!(answer(&mut s, text), sql_refused(), "{text}");
    }
    assert!(actions(&mut s).is_empty());
}

#[test]
fn identify_system_reports_the_upstream_and_the_durable_end() {
    let mut s = logged_in();
    let expected = wire(&[
        columns(&[
            ("systemid", TEXT_OID, -1),
            ("timeline", INT4_OID, 4),
            ("xlogpos", TEXT_OID, -1),
            ("dbname", TEXT_OID, -1),
        ]),
        row(&[
            Some("7351213962143123456"),
            Some("1"),
            Some("0/3000100"),
            None,
        ]),
        complete("IDENTIFY_SYSTEM"),
        ready(),
    ]);
    assert_eq!(answer(&mut s, "IDENTIFY_SYSTEM"), expected);
    // Odd whitespace and a trailing semicolon are the same command; keywords are
    // case-sensitive (PG15: `identify_system` is refused as SQL).
    assert_eq!(answer(&mut s, " \t IDENTIFY_SYSTEM ;"), expected);
    assert_eq!(answer(&mut s, "identify_system"), sql_refused());
}

#[test]
fn show_answers_an_allow_list() {
    let mut s = logged_in();
    for (name, value) in [
        ("wal_segment_size", "1MB"),
        ("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
        ("server_version_num", "150018"),
        ("data_directory_mode", "0700"),
    ] {
        let expected = wire(&[
            columns(&[(name, TEXT_OID, -1)]),
            row(&[Some(value)]),
            complete("SHOW"),
            ready(),
        ]);
        assert_eq!(answer(&mut s, &format!("SHOW {name}")), expected, "{name}");
    }
    assert_eq!(
        answer(&mut s, "SHOW shared_buffers"),
        wire(&[
            error(
                SqlState::UNDEFINED_OBJECT,
                "unrecognized configuration parameter \"shared_buffers\""
            ),
            ready()
        ])
    );
}

#[test]
fn parse_errors_answer_with_the_parsers_sqlstate() {
    let mut s = logged_in();
    let invalid = wire(&[error(SqlState::SYNTAX_ERROR, "invalid timeline 0"), ready()]);
    assert_eq!(answer(&mut s, "TIMELINE_HISTORY 0"), invalid);
    assert_eq!(answer(&mut s, "START_REPLICATION 0/0 TIMELINE 0"), invalid);
    assert_eq!(
        answer(&mut s, "START_REPLICATION 0/0 TIMELINE 99999999999"),
        wire(&[
            error(
                SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
                "value \"99999999999\" is out of range for a 32-bit unsigned integer"
            ),
            ready()
        ])
    );
    for bad in [
        "START_REPLICATION 0/0/0",
        "START_REPLICATION G/0",
        "START_REPLICATION",
    ] {
        assert_eq!(
            answer(&mut s, bad),
            wire(&[error(SqlState::SYNTAX_ERROR, "syntax error"), ready()]),
            "{bad}"
        );
    }
}

#[test]
fn a_long_name_gets_a_notice_before_its_answer() {
    let mut s = logged_in();
    let long = "x".repeat(70);
    let got = answer(&mut s, &format!("READ_REPLICATION_SLOT {long}"));
    let notice = ErrorFields::notice(
        SqlState::NAME_TOO_LONG,
        format!(
            "identifier \"{long}\" will be truncated to \"{}\"",
            "x".repeat(63)
        ),
    );
    assert_eq!(got, wire(&[BackendMessage::NoticeResponse(notice)]));
    assert_eq!(
        actions(&mut s),
        [Action::ReadSlot(SlotName::new(&"x".repeat(63)).unwrap())]
    );
}

#[test]
fn timeline_history_serves_the_relays_copy() {
    let mut s = logged_in();
    // Unlike the other results, this one has typmod 0, as in PG15.
    let header0 = BackendMessage::RowDescription(vec![
        FieldDescription::text("filename", TEXT_OID, -1, 0),
        FieldDescription::text("content", TEXT_OID, -1, 0),
    ]);
    // PG15 sends the row description before it finds the file missing.
    let missing = wire(&[
        header0.clone(),
        error(
            SqlState::UNDEFINED_FILE,
            "could not open file \"pg_wal/00000001.history\": No such file or directory",
        ),
        ready(),
    ]);
    assert_eq!(answer(&mut s, "TIMELINE_HISTORY 1"), missing);
    let content = Bytes::from_static(b"1\t0/3000100\tno recovery target specified\n");
    let tli2 = TimelineId::new(2).unwrap();
    let v = RelayView {
        histories: Arc::new([(tli2, content.clone())].into()),
        ..view()
    };
    s.frame(Ok(query("TIMELINE_HISTORY 2")), at(0), &v);
    let expected = wire(&[
        header0,
        BackendMessage::DataRow(vec![Some(Bytes::from("00000002.history")), Some(content)]),
        complete("TIMELINE_HISTORY"),
        ready(),
    ]);
    assert_eq!(out(&mut s), expected);
}

#[test]
fn commands_needing_the_upstream_wait_for_it() {
    let mut s = logged_in();
    let unknown = RelayView {
        upstream: None,
        ..view()
    };
    let starting = wire(&[
        error(
            SqlState::CANNOT_CONNECT_NOW,
            "the database system is starting up",
        ),
        ready(),
    ]);
    for text in [
        "IDENTIFY_SYSTEM",
        "SHOW wal_segment_size",
        "CREATE_REPLICATION_SLOT d1 PHYSICAL",
        "START_REPLICATION 0/3000000",
    ] {
        s.frame(Ok(query(text)), at(0), &unknown);
        assert_eq!(out(&mut s), starting, "{text}");
    }
    assert!(actions(&mut s).is_empty());
}

#[test]
fn unsupported_commands_are_refused_clearly() {
    let mut s = logged_in();
    let refused = |text: &str| wire(&[error(SqlState::FEATURE_NOT_SUPPORTED, text), ready()]);
    assert_eq!(
        answer(&mut s, "START_REPLICATION SLOT x LOGICAL 0/0"),
        refused("logical decoding requires a database connection")
    );
    assert_eq!(
        answer(&mut s, "CREATE_REPLICATION_SLOT x LOGICAL pgoutput"),
        refused("logical decoding requires a database connection")
    );
    let backup = ErrorFields::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        "BASE_BACKUP is not supported by walrelay",
    )
    .with_hint("Take the base backup from the primary server.");
    assert_eq!(
        answer(&mut s, "BASE_BACKUP (CHECKPOINT 'fast')"),
        wire(&[BackendMessage::ErrorResponse(backup.clone()), ready()])
    );
    // A 14 upstream: its keyword form parses, and is refused the same way.
    assert_eq!(
        answer_on(&mut s, &view_of("14.23"), "BASE_BACKUP LABEL 'x' FAST"),
        wire(&[BackendMessage::ErrorResponse(backup), ready()])
    );
    assert!(actions(&mut s).is_empty());
}

/// Before the relay refuses BASE_BACKUP itself, its options get PostgreSQL's own errors, in
/// the wording of the upstream's major (`check_base_backup`).
#[test]
fn base_backup_options_get_postgres_errors_first() {
    let mut s = logged_in();
    let refusal = |e: ErrorFields| wire(&[BackendMessage::ErrorResponse(e), ready()]);
    assert_eq!(
        answer(&mut s, "BASE_BACKUP (MAX_RATE 1)"),
        refusal(ErrorFields::error(
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            "1 is outside the valid range for parameter \"MAX_RATE\" (32 .. 1048576)"
        ))
    );
    assert_eq!(
        answer(&mut s, "BASE_BACKUP (LABEL 'a', LABEL 'b')"),
        refusal(ErrorFields::error(
            SqlState::SYNTAX_ERROR,
            "duplicate option \"label\""
        ))
    );
    let server = "BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/tmp/x')";
    assert_eq!(
        answer(&mut s, server),
        refusal(ErrorFields::error(
            SqlState::INSUFFICIENT_PRIVILEGE,
            "must be superuser or a role with privileges of the pg_write_server_files role to create backup stored on server"
        ))
    );
    assert_eq!(
        answer_on(&mut s, &view_of("16.14"), server),
        refusal(
            ErrorFields::error(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "permission denied to create backup stored on server"
            )
            .with_detail("Only roles with privileges of the \"pg_write_server_files\" role may create a backup stored on the server.")
        )
    );
    assert_eq!(
        answer(&mut s, "BASE_BACKUP (TARGET 'blackhole')"),
        refusal(
            ErrorFields::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "unrecognized target: \"blackhole\""
            )
            .with_hint("walrelay sends base backups to the client only.")
        )
    );
    // The keyword form on a 15 upstream is PostgreSQL 15's syntax error.
    assert_eq!(
        answer(&mut s, "BASE_BACKUP LABEL 'x'"),
        wire(&[error(SqlState::SYNTAX_ERROR, "syntax error"), ready()])
    );
    assert!(actions(&mut s).is_empty());
}

#[test]
fn create_slot_validates_then_asks_and_answers_after_the_write() {
    let mut s = logged_in();
    let hint = "Replication slot names may only contain lower case letters, numbers, and the underscore character.";
    let bad = ErrorFields::error(
        SqlState::INVALID_NAME,
        "replication slot name \"../../etc\" contains invalid character",
    )
    .with_hint(hint);
    assert_eq!(
        answer(&mut s, "CREATE_REPLICATION_SLOT \"../../etc\" PHYSICAL"),
        wire(&[BackendMessage::ErrorResponse(bad), ready()])
    );
    assert!(
        actions(&mut s).is_empty(),
        "no slot is touched for a bad name"
    );

    assert!(
        answer(
            &mut s,
            "CREATE_REPLICATION_SLOT d1 TEMPORARY PHYSICAL RESERVE_WAL"
        )
        .is_empty()
    );
    assert_eq!(
        actions(&mut s),
        [Action::CreateSlot {
            name: SlotName::new("d1").unwrap(),
            temporary: true,
            // The start of the segment of the durable end.
            reserve: Some(Lsn(0x300_0000)),
        }]
    );
    assert_eq!(
        s.expects(),
        Expect::Nothing,
        "nothing is read before the answer"
    );
    s.slot_done(Ok(()), at(0));
    let expected = wire(&[
        columns(&[
            ("slot_name", TEXT_OID, -1),
            ("consistent_point", TEXT_OID, -1),
            ("snapshot_name", TEXT_OID, -1),
            ("output_plugin", TEXT_OID, -1),
        ]),
        row(&[Some("d1"), Some("0/0"), None, None]),
        complete("CREATE_REPLICATION_SLOT"),
        ready(),
    ]);
    assert_eq!(out(&mut s), expected);

    answer(&mut s, "CREATE_REPLICATION_SLOT d1 PHYSICAL");
    let [
        Action::CreateSlot {
            reserve: None,
            temporary: false,
            ..
        },
    ] = actions(&mut s)[..]
    else {
        panic!("no create");
    };
    let exists = ErrorFields::error(
        SqlState::DUPLICATE_OBJECT,
        "replication slot \"d1\" already exists",
    );
    s.slot_done(Err(exists.clone()), at(0));
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(exists), ready()])
    );
}

#[test]
fn drop_and_read_slot_ask_the_relay() {
    let mut s = logged_in();
    assert!(answer(&mut s, "DROP_REPLICATION_SLOT \"Bad\" WAIT").is_empty());
    assert_eq!(
        actions(&mut s),
        [Action::DropSlot {
            name: "Bad".into(),
            wait: true
        }]
    );
    let missing = ErrorFields::error(
        SqlState::UNDEFINED_OBJECT,
        "replication slot \"Bad\" does not exist",
    );
    s.slot_done(Err(missing.clone()), at(0));
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(missing), ready()])
    );
    answer(&mut s, "DROP_REPLICATION_SLOT d1");
    assert_eq!(
        actions(&mut s),
        [Action::DropSlot {
            name: "d1".into(),
            wait: false
        }]
    );
    s.slot_done(Ok(()), at(0));
    assert_eq!(
        out(&mut s),
        wire(&[complete("DROP_REPLICATION_SLOT"), ready()])
    );

    let cols = columns(&[
        ("slot_type", TEXT_OID, -1),
        ("restart_lsn", TEXT_OID, -1),
        ("restart_tli", INT8_OID, 8),
    ]);
    answer(&mut s, "READ_REPLICATION_SLOT nosuch");
    assert_eq!(
        actions(&mut s),
        [Action::ReadSlot(SlotName::new("nosuch").unwrap())]
    );
    s.slot_read(None, &view());
    // PG15: one row of three NULLs for a missing slot.
    let nulls = wire(&[
        cols.clone(),
        row(&[None, None, None]),
        complete("READ_REPLICATION_SLOT"),
        ready(),
    ]);
    assert_eq!(out(&mut s), nulls);
    answer(&mut s, "READ_REPLICATION_SLOT d2");
    actions(&mut s);
    s.slot_read(
        Some(FoundSlot {
            restart_lsn: Some(Lsn(0x200_0000)),
        }),
        &view(),
    );
    let found = wire(&[
        cols,
        row(&[Some("physical"), Some("0/2000000"), Some("1")]),
        complete("READ_REPLICATION_SLOT"),
        ready(),
    ]);
    assert_eq!(out(&mut s), found);
}

#[test]
fn read_slot_names_the_timeline_that_wrote_its_restart_lsn() {
    let tli2 = TimelineId::new(2).unwrap();
    let after_fork = RelayView {
        durable: DurableEnd {
            timeline: Some(tli2),
            lsn: Lsn(0x500_0000),
        },
        histories: Arc::new(
            [(
                tli2,
                Bytes::from_static(b"1\t0/3000080\tno recovery target specified\n"),
            )]
            .into(),
        ),
        ..view()
    };
    for (restart, tli) in [(0x200_0000, "1"), (0x300_007F, "1"), (0x300_0080, "2")] {
        let mut s = logged_in();
        answer(&mut s, "READ_REPLICATION_SLOT d2");
        actions(&mut s);
        s.slot_read(
            Some(FoundSlot {
                restart_lsn: Some(Lsn(restart)),
            }),
            &after_fork,
        );
        let got = out(&mut s);
        let lsn = Lsn(restart).to_string();
        let want = wire(&[row(&[Some("physical"), Some(&lsn), Some(tli)])]);
        assert!(
            got.windows(want.len()).any(|w| w == &want[..]),
            "restart_lsn {restart:#x}: want timeline {tli}"
        );
    }
}

#[test]
fn message_types_in_command_mode() {
    let mut s = logged_in();
    // Sync: ReadyForQuery; Copy messages outside a stream: ignored.
    s.frame(Ok(frame(FrontendMessage::Sync)), at(0), &view());
    assert_eq!(out(&mut s), wire(&[ready()]));
    for m in [
        FrontendMessage::CopyDone,
        FrontendMessage::CopyData(Bytes::from_static(b"r")),
    ] {
        s.frame(Ok(frame(m)), at(0), &view());
        assert!(out(&mut s).is_empty());
    }
    s.frame(Ok(raw(b'P', b"\0SELECT 1\0\0\0")), at(0), &view());
    assert_eq!(
        out(&mut s),
        wire(&[
            error(
                SqlState::PROTOCOL_VIOLATION,
                "extended query protocol not supported in a replication connection"
            ),
            ready()
        ])
    );
    assert!(actions(&mut s).is_empty());
    // A Query without its terminating NUL.
    s.frame(Ok(raw(b'Q', b"IDENTIFY_SYSTEM")), at(0), &view());
    assert_eq!(
        out(&mut s),
        wire(&[fatal(
            SqlState::PROTOCOL_VIOLATION,
            "invalid string in message"
        )])
    );
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn unknown_types_and_passwords_are_fatal() {
    // PG15: FATAL 08P01 "invalid frontend message type 153".
    let mut s = logged_in();
    s.frame(Ok(raw(0x99, b"")), at(0), &view());
    assert_eq!(
        out(&mut s),
        wire(&[fatal(
            SqlState::PROTOCOL_VIOLATION,
            "invalid frontend message type 153"
        )])
    );
    assert_eq!(actions(&mut s), [Action::Close]);
    let mut s = logged_in();
    s.frame(Ok(raw(b'p', b"secret\0")), at(0), &view());
    assert_eq!(
        out(&mut s),
        wire(&[fatal(
            SqlState::PROTOCOL_VIOLATION,
            "invalid frontend message type 112"
        )])
    );
}

#[test]
fn a_message_too_long_to_read_closes_silently() {
    // PG15: a Query announcing 2 GB is logged and the connection closed, no answer.
    let mut s = logged_in();
    let e = WireError::FrameLength {
        tag: b'Q',
        len: 0x7fff_fff0,
        max: COMMAND_FRAME_LIMIT,
    };
    s.frame(Err(e), at(0), &view());
    assert!(out(&mut s).is_empty());
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn terminate_and_shutdown_in_command_mode() {
    let mut s = logged_in();
    s.frame(Ok(frame(FrontendMessage::Terminate)), at(0), &view());
    assert!(out(&mut s).is_empty());
    assert_eq!(actions(&mut s), [Action::Close]);
    let mut s = logged_in();
    s.shutdown(at(0));
    assert_eq!(
        out(&mut s),
        wire(&[fatal(
            SqlState::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command"
        )])
    );
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn alter_replication_slot_answers_as_postgres_17_does_for_physical_slots() {
    let mut s = logged_in();
    let v17 = view_of("17.10");
    // The options first: an unknown one is an elog (XX000), a repeated one a syntax error.
    let got = answer_on(&mut s, &v17, "ALTER_REPLICATION_SLOT d1 (RESERVE_WAL)");
    assert_eq!(
        got,
        wire(&[
            error(SqlState::INTERNAL_ERROR, "unrecognized option: reserve_wal"),
            ready()
        ])
    );
    let got = answer_on(
        &mut s,
        &v17,
        "ALTER_REPLICATION_SLOT d1 (FAILOVER, FAILOVER false)",
    );
    assert_eq!(
        got,
        wire(&[
            error(SqlState::SYNTAX_ERROR, "conflicting or redundant options"),
            ready()
        ])
    );
    // Then the slot: missing, or physical (every relay slot is).
    answer_on(&mut s, &v17, "ALTER_REPLICATION_SLOT nosuch (FAILOVER)");
    assert_eq!(
        actions(&mut s),
        [Action::ReadSlot(SlotName::new("nosuch").unwrap())]
    );
    s.slot_read(None, &v17);
    assert_eq!(
        out(&mut s),
        wire(&[
            error(
                SqlState::UNDEFINED_OBJECT,
                "replication slot \"nosuch\" does not exist"
            ),
            ready()
        ])
    );
    answer_on(&mut s, &v17, "ALTER_REPLICATION_SLOT d1 (FAILOVER true)");
    actions(&mut s);
    s.slot_read(Some(FoundSlot { restart_lsn: None }), &v17);
    assert_eq!(
        out(&mut s),
        wire(&[
            error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "cannot use ALTER_REPLICATION_SLOT with a physical replication slot"
            ),
            ready()
        ])
    );
    let got = answer_on(
        &mut s,
        &v17,
        "ALTER_REPLICATION_SLOT \"Bad/Name\" (FAILOVER)",
    );
    assert_eq!(
        got,
        wire(&[
            error(
                SqlState::UNDEFINED_OBJECT,
                "replication slot \"Bad/Name\" does not exist"
            ),
            ready()
        ])
    );
}

/// Commands are parsed as the upstream's major parses them (see
/// `ReplicationCommand::parse_as`), whatever the relay itself knows.
#[test]
fn commands_are_answered_as_the_upstreams_major_answers_them() {
    let mut s = logged_in();
    let v14 = view_of("14.23");
    assert_eq!(
        answer_on(&mut s, &v14, "READ_REPLICATION_SLOT d1"),
        sql_refused()
    );
    assert_eq!(
        answer_on(
            &mut s,
            &v14,
            "CREATE_REPLICATION_SLOT d2 PHYSICAL (RESERVE_WAL)"
        ),
        wire(&[error(SqlState::SYNTAX_ERROR, "syntax error"), ready()])
    );
    assert!(actions(&mut s).is_empty());
    for text in ["ALTER_REPLICATION_SLOT d1 (FAILOVER)", "UPLOAD_MANIFEST"] {
        assert_eq!(answer(&mut s, text), sql_refused(), "{text}");
    }
    assert_eq!(
        answer(&mut s, "CREATE_REPLICATION_SLOT d2 PHYSICAL (FAILOVER)"),
        wire(&[
            error(SqlState::INTERNAL_ERROR, "unrecognized option: failover"),
            ready()
        ])
    );
    answer(&mut s, "READ_REPLICATION_SLOT d1");
    assert_eq!(
        actions(&mut s),
        [Action::ReadSlot(SlotName::new("d1").unwrap())]
    );
}

/// RESERVE_WAL reserves from the segment of the last checkpoint's redo when it is older than
/// the durable end, as PostgreSQL reserves at `GetRedoRecPtr()`: a base backup taken with a
/// spread checkpoint starts there, and its `-X stream` slot must hold that WAL (design note
/// §4, fix 2).
#[test]
fn reserve_wal_reserves_from_the_last_checkpoints_redo() {
    let mut s = logged_in();
    let reserved = |s: &mut DownstreamSession, view: &RelayView, name: &str| {
        let text = format!("CREATE_REPLICATION_SLOT {name} TEMPORARY PHYSICAL RESERVE_WAL");
        answer_on(s, view, &text);
        let Some(Action::CreateSlot { reserve, .. }) = actions(s).into_iter().next() else {
            panic!("no slot created")
        };
        s.slot_done(Ok(()), at(0));
        out(s);
        reserve
    };
    let mut view = view();
    // 1 MB segments in these tests.
    view.last_redo = Some(Lsn(0x12_3456));
    assert_eq!(reserved(&mut s, &view, "r1"), Some(Lsn(0x10_0000)));
    // A redo ahead of what is durable (not yet stored) does not move the reservation ahead.
    view.last_redo = Some(Lsn(0x900_0000));
    assert_eq!(reserved(&mut s, &view, "r2"), Some(Lsn(0x300_0000)));
    view.last_redo = Some(Lsn(0x2F0_0010));
    assert_eq!(reserved(&mut s, &view, "r3"), Some(Lsn(0x2F0_0000)));
}
