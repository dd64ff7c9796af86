//! Behaviour tests of the command parser: the exact strings real clients send, and hostile
//! input. Comments marked **\[obs\]** record what a PostgreSQL 15.18 walsender (a throwaway
//! cluster, `wal_level=replica`, raw protocol client) answered to the same text.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use super::*;

use ReplicationCommand as C;

fn ok(text: &str) -> ReplicationCommand {
    let parsed = ReplicationCommand::parse(text);
    assert!(parsed.notices.is_empty(), "{text:?}: {:?}", parsed.notices);
    let command = parsed.command.unwrap_or_else(|e| panic!("{text:?}: {e}"));
    fuzz_command(text.as_bytes());
    command
}

fn err(text: &str) -> (&'static str, String) {
    let e = text.parse::<ReplicationCommand>().unwrap_err();
    let code: &'static str = Box::leak(e.sqlstate().to_string().into_boxed_str());
    (code, e.to_string())
}

fn syntax() -> (&'static str, String) {
    ("42601", "syntax error".into())
}

fn tli(n: u32) -> Option<TimelineId> {
    TimelineId::new(n)
}

fn physical_slot(name: &str, temporary: bool, reserve_wal: bool) -> ReplicationCommand {
    C::CreateReplicationSlot {
        name: name.into(),
        temporary,
        kind: SlotKind::Physical { reserve_wal },
    }
}

fn opt(name: &str, value: Option<OptionValue>) -> GenericOption {
    GenericOption {
        name: name.into(),
        value,
    }
}

fn s(v: &str) -> Option<OptionValue> {
    Some(OptionValue::Str(v.into()))
}

#[test]
fn what_the_walreceiver_pg_receivewal_and_pg_basebackup_send() {
    assert_eq!(ok("IDENTIFY_SYSTEM"), C::IdentifySystem);
    assert_eq!(
        ok("SHOW wal_segment_size"),
        C::Show("wal_segment_size".into())
    );
    assert_eq!(
        ok("SHOW data_directory_mode"),
        C::Show("data_directory_mode".into())
    );
    assert_eq!(
        ok("TIMELINE_HISTORY 2"),
        C::TimelineHistory(TimelineId::new(2).unwrap())
    );
    assert_eq!(
        ok("READ_REPLICATION_SLOT s"),
        C::ReadReplicationSlot("s".into())
    );
    let cases = [
        (
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_123\" TEMPORARY PHYSICAL (RESERVE_WAL)",
            physical_slot("pg_walreceiver_123", true, true),
        ),
        (
            "CREATE_REPLICATION_SLOT \"pg_basebackup_77\" TEMPORARY PHYSICAL ( RESERVE_WAL)",
            physical_slot("pg_basebackup_77", true, true),
        ),
        // The walreceiver of PostgreSQL 13–14, and against servers before 15.
        (
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_9\" TEMPORARY PHYSICAL RESERVE_WAL",
            physical_slot("pg_walreceiver_9", true, true),
        ),
        (
            "CREATE_REPLICATION_SLOT \"rwslot\" PHYSICAL",
            physical_slot("rwslot", false, false),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(ok(text), expected, "{text}");
    }
    assert_eq!(
        ok("DROP_REPLICATION_SLOT \"s\" WAIT"),
        C::DropReplicationSlot {
            name: "s".into(),
            wait: true
        }
    );
    assert_eq!(
        ok("DROP_REPLICATION_SLOT \"rwslot\""),
        C::DropReplicationSlot {
            name: "rwslot".into(),
            wait: false
        }
    );
}

#[test]
fn start_replication_as_clients_send_it() {
    let start = |slot: Option<&str>, lsn: u64, timeline| C::StartReplication {
        slot: slot.map(Into::into),
        start: Lsn(lsn),
        timeline,
    };
    let cases = [
        (
            "START_REPLICATION SLOT \"sb1\" 0/3000000 TIMELINE 1",
            start(Some("sb1"), 0x300_0000, tli(1)),
        ),
        (
            "START_REPLICATION 0/3000000 TIMELINE 2",
            start(None, 0x300_0000, tli(2)),
        ),
        (
            "START_REPLICATION SLOT \"x\" PHYSICAL 0/0",
            start(Some("x"), 0, None),
        ),
        ("START_REPLICATION 0/3000100", start(None, 0x300_0100, None)),
        // [obs] both accepted by PG 15.18 (answered after CopyBothResponse: "ahead of the WAL
        // flush position"); lowercase hex and the padded form of PG 18+ too.
        (
            "START_REPLICATION FFFFFFFF/FFFFFFFF",
            start(None, u64::MAX, None),
        ),
        (
            "START_REPLICATION ffffffff/0 TIMELINE 9",
            start(None, 0xFFFF_FFFF_0000_0000, tli(9)),
        ),
        ("START_REPLICATION 0/0000000A", start(None, 10, None)),
        // [obs] accepted: a location runs into the keyword after it.
        (
            "START_REPLICATION 0/3000000TIMELINE 9",
            start(None, 0x300_0000, tli(9)),
        ),
        (
            "START_REPLICATION SLOT x PHYSICAL 0/0 TIMELINE 1 ;",
            start(Some("x"), 0, tli(1)),
        ),
        (
            "START_REPLICATION 0/1 TIMELINE 4294967295",
            start(None, 1, tli(u32::MAX)),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(ok(text), expected, "{text}");
    }
    assert_eq!(
        ok("START_REPLICATION SLOT \"x\" LOGICAL 0/0 (\"a\" 'b', c)"),
        C::StartLogicalReplication {
            slot: "x".into(),
            start: Lsn(0),
            options: vec![("a".into(), Some("b".into())), ("c".into(), None)],
        }
    );
}

#[test]
fn start_replication_refusals() {
    // [obs] PG 15.18 answers every one of these with 42601 "syntax error".
    for text in [
        "START_REPLICATION G/0",
        "START_REPLICATION 0/0/0",
        "START_REPLICATION",
        "START_REPLICATION TIMELINE 1",
        "START_REPLICATION 0 /3000000 TIMELINE 9",
        "START_REPLICATION PHYSICAL SLOT x 0/0",
        "START_REPLICATION 0/0 TIMELINE 1 TIMELINE 1",
        "START_REPLICATION LOGICAL 0/0",
        "START_REPLICATION SLOT 'x' 0/0",
        "START_REPLICATION SLOT x LOGICAL 0/0 ()",
        "START_REPLICATION SLOT x LOGICAL 0/0 (a 1)",
        "START_REPLICATION SLOT x LOGICAL 0/0 (WAIT 'a')",
        "START_REPLICATION SLOT x LOGICAL 0/0 TIMELINE 1",
        "START_REPLICATION 0/0 TIMELINE",
        "START_REPLICATION 0/0 TIMELINE -1",
    ] {
        assert_eq!(err(text), syntax(), "{text}");
    }
    // [obs] 42601 "invalid timeline 0".
    let invalid = ("42601", "invalid timeline 0".to_owned());
    assert_eq!(err("START_REPLICATION 0/3000000 TIMELINE 0"), invalid);
    assert_eq!(err("TIMELINE_HISTORY 0"), invalid);
    assert_eq!(err("TIMELINE_HISTORY 00000"), invalid);
    // [obs] PG 15.18 wraps these: TIMELINE 4294967296 is "invalid timeline 0", 99999999999
    // is "requested timeline 1215752191 is not in this server's history", and
    // TIMELINE_HISTORY 99999999999999999999999 reads FFFFFFFF.history. The relay refuses.
    for n in ["4294967296", "99999999999"] {
        let message = format!("value \"{n}\" is out of range for a 32-bit unsigned integer");
        assert_eq!(
            err(&format!("START_REPLICATION 0/0 TIMELINE {n}")),
            ("22003", message.clone())
        );
        assert_eq!(err(&format!("TIMELINE_HISTORY {n}")), ("22003", message));
    }
    let huge = format!("TIMELINE_HISTORY {}", "9".repeat(1000));
    let (_, message) = err(&huge);
    assert_eq!(
        message,
        format!(
            "value \"{}...\" is out of range for a 32-bit unsigned integer",
            "9".repeat(20)
        )
    );
    // [obs] PG 15.18 reads 123456789/0 as 23456789/0; the relay refuses.
    assert_eq!(
        err("START_REPLICATION 123456789/0"),
        ("42601", "invalid streaming start location".into())
    );
    assert_eq!(
        ok("TIMELINE_HISTORY 00002"),
        C::TimelineHistory(TimelineId::new(2).unwrap())
    );
}

#[test]
fn sql_and_non_commands() {
    // [obs] PG 15.18 answers each with 0A000 "cannot execute SQL commands in WAL sender for
    // physical replication": the first token is not a command keyword.
    for text in [
        "SELECT 1",
        "FROBNICATE",
        "identify_system",
        "Identify_System",
        "",
        " ",
        ";",
        "; IDENTIFY_SYSTEM",
        "-- c",
        "/* c */ IDENTIFY_SYSTEM",
        "\x0bIDENTIFY_SYSTEM",
        "IDENTIFY_SYSTEMx",
        "99999999999999999999999",
        "123456789/0",
        "TIMELINE 1",
        "PHYSICAL",
        "start_replication 0/0",
        "select 'unterminated' ; '",
    ] {
        assert_eq!(ok(text), C::Sql(text.into()), "{text:?}");
    }
}

#[test]
fn syntax_errors_and_unterminated_quotes() {
    // [obs] PG 15.18: 42601 "syntax error" for each.
    for text in [
        "IDENTIFY_SYSTEM;;",
        "IDENTIFY_SYSTEM; IDENTIFY_SYSTEM",
        "IDENTIFY_SYSTEM -- c",
        "IDENTIFY_SYSTEM /* c */",
        "IDENTIFY_SYSTEM\x0b",
        "DROP_REPLICATION_SLOT \"a\"\"b\"",
        "DROP_REPLICATION_SLOT 'ab'",
        "DROP_REPLICATION_SLOT ab wait",
        "DROP_REPLICATION_SLOT 1abc",
        "SHOW TIMELINE",
        "SHOW a.",
        "SHOW",
        "TIMELINE_HISTORY",
        "TIMELINE_HISTORY -1",
        "READ_REPLICATION_SLOT 'x'",
    ] {
        assert_eq!(err(text), syntax(), "{text:?}");
    }
    // PostgreSQL 17 grammar (PG 15 takes these for SQL).
    for text in [
        "UPLOAD_MANIFEST x",
        "ALTER_REPLICATION_SLOT x",
        "ALTER_REPLICATION_SLOT x ()",
    ] {
        assert_eq!(err(text), syntax(), "{text:?}");
    }
    // [obs] 42601 "unterminated quoted string", for identifiers as well, and even as the
    // first token, which is lexed before anything is known to be SQL.
    for text in [
        "DROP_REPLICATION_SLOT \"a",
        "DROP_REPLICATION_SLOT 'a",
        "'abc",
        "\"abc",
        "IDENTIFY_SYSTEM 'abc",
    ] {
        assert_eq!(
            err(text),
            ("42601", "unterminated quoted string".into()),
            "{text:?}"
        );
    }
    // [obs] Like bison, a token is read only when the grammar needs it: after `SHOW x` it
    // must see whether a `.` follows; after `SHOW` a number is already wrong, and `TIMELINE 0`
    // is refused as soon as it is read.
    let unterminated = ("42601", "unterminated quoted string".to_owned());
    assert_eq!(err("SHOW x 'abc"), unterminated);
    assert_eq!(err("SHOW 1 'abc"), syntax());
    let invalid = ("42601", "invalid timeline 0".to_owned());
    assert_eq!(err("TIMELINE_HISTORY 0 'abc"), invalid);
    assert_eq!(err("START_REPLICATION 0/0 TIMELINE 0 'abc"), invalid);
}

#[test]
fn names_fold_unless_quoted_and_keep_odd_characters() {
    // [obs] PG 15.18: DROP_REPLICATION_SLOT Ab looks for "ab", "Ab" for "Ab", "" for "";
    // SHOW WAL_SEGMENT_SIZE and SHOW "WAL_SEGMENT_SIZE" both answer 16MB; SHOW a . b and
    // SHOW "a b".c look up "a.b" and "a b.c".
    let drop = |name: &str| C::DropReplicationSlot {
        name: name.into(),
        wait: false,
    };
    assert_eq!(ok("DROP_REPLICATION_SLOT Ab"), drop("ab"));
    assert_eq!(ok("DROP_REPLICATION_SLOT \"Ab\""), drop("Ab"));
    assert_eq!(ok("DROP_REPLICATION_SLOT \"\""), drop(""));
    assert_eq!(ok("DROP_REPLICATION_SLOT éÉ$x"), drop("éÉ$x"));
    assert_eq!(
        ok("SHOW WAL_SEGMENT_SIZE"),
        C::Show("wal_segment_size".into())
    );
    assert_eq!(
        ok("SHOW \"WAL_SEGMENT_SIZE\""),
        C::Show("WAL_SEGMENT_SIZE".into())
    );
    assert_eq!(ok("SHOW a . b"), C::Show("a.b".into()));
    assert_eq!(ok("SHOW \"a b\".c"), C::Show("a b.c".into()));
    assert_eq!(ok("SHOW _x$1"), C::Show("_x$1".into()));
    assert_eq!(
        ok("READ_REPLICATION_SLOT \"a\".\"B\""),
        C::ReadReplicationSlot("a.B".into())
    );
    // [obs] whitespace is space, tab, newline, carriage return and form feed.
    assert_eq!(ok("\x0cIDENTIFY_SYSTEM\r\n\t"), C::IdentifySystem);
    assert_eq!(ok("IDENTIFY_SYSTEM;"), C::IdentifySystem);
    assert_eq!(
        ok("TIMELINE_HISTORY 1;"),
        C::TimelineHistory(TimelineId::ONE)
    );
}

#[test]
fn long_identifiers_give_notices_even_when_the_parse_fails() {
    // [obs] PG 15.18 sends NOTICE 42622 "identifier "aaa…" will be truncated to "aaa…""
    // (folded text for a bare identifier, as written for a quoted one) before the answer:
    // before the slot row, before 0A000 for SQL, twice before a syntax error.
    let long = "A".repeat(70);
    let bare = ReplicationCommand::parse(&format!(
        "CREATE_REPLICATION_SLOT {long} TEMPORARY PHYSICAL"
    ));
    assert_eq!(
        bare.command,
        Ok(physical_slot(&"a".repeat(63), true, false))
    );
    assert_eq!(
        bare.notices,
        [Notice::IdentifierTruncated {
            identifier: "a".repeat(70),
            truncated: "a".repeat(63),
        }]
    );
    let quoted = ReplicationCommand::parse(&format!("CREATE_REPLICATION_SLOT \"{long}\" PHYSICAL"));
    assert_eq!(
        quoted.command,
        Ok(physical_slot(&"A".repeat(63), false, false))
    );
    assert_eq!(
        quoted.notices[0].to_string(),
        format!(
            "identifier \"{long}\" will be truncated to \"{}\"",
            "A".repeat(63)
        )
    );
    let sql = ReplicationCommand::parse(&format!("{long} \"{long}"));
    assert!(matches!(sql.command, Ok(C::Sql(_))));
    assert_eq!(sql.notices.len(), 1);
    let failed = ReplicationCommand::parse(&format!("DROP_REPLICATION_SLOT \"{long}\" \"{long}\""));
    assert_eq!(failed.command, Err(ParseError::Syntax));
    assert_eq!(failed.notices.len(), 2);
    // A multibyte character that straddles byte 63 is dropped whole.
    let straddle = format!("DROP_REPLICATION_SLOT {}éb", "a".repeat(62));
    let parsed = ReplicationCommand::parse(&straddle);
    assert_eq!(
        parsed.command,
        Ok(C::DropReplicationSlot {
            name: "a".repeat(62),
            wait: false
        })
    );
}

#[test]
fn create_replication_slot_options() {
    // [obs] PG 15.18 created each of these slots.
    for (text, reserve_wal) in [
        (
            "CREATE_REPLICATION_SLOT t2 TEMPORARY PHYSICAL (reserve_wal)",
            true,
        ),
        (
            "CREATE_REPLICATION_SLOT t3 TEMPORARY PHYSICAL (Reserve_Wal 'on')",
            true,
        ),
        (
            "CREATE_REPLICATION_SLOT t4 TEMPORARY PHYSICAL (RESERVE_WAL TRUE)",
            true,
        ),
        (
            "CREATE_REPLICATION_SLOT t5 TEMPORARY PHYSICAL (RESERVE_WAL 0)",
            false,
        ),
        (
            "CREATE_REPLICATION_SLOT t5 PHYSICAL (RESERVE_WAL off);",
            false,
        ),
    ] {
        let C::CreateReplicationSlot { kind, .. } = ok(text) else {
            panic!("{text}")
        };
        assert_eq!(kind, SlotKind::Physical { reserve_wal }, "{text}");
    }
    let cases = [
        (
            "(RESERVE_WAL '1')",
            ("42601", "reserve_wal requires a Boolean value"),
        ),
        (
            "(RESERVE_WAL 2)",
            ("42601", "reserve_wal requires a Boolean value"),
        ),
        ("(RESERVE_WAL, RESERVE_WAL)", CONFLICTING),
        ("RESERVE_WAL RESERVE_WAL", CONFLICTING),
        ("(TWO_PHASE)", CONFLICTING),
        ("TWO_PHASE", CONFLICTING),
        ("EXPORT_SNAPSHOT", CONFLICTING),
        ("(SNAPSHOT)", CONFLICTING),
        (
            "(FOO, RESERVE_WAL, RESERVE_WAL)",
            ("XX000", "unrecognized option: foo"),
        ),
        ("(RESERVE_WAL, RESERVE_WAL, FOO)", CONFLICTING),
        (
            "(\"RESERVE_WAL\")",
            ("XX000", "unrecognized option: RESERVE_WAL"),
        ),
        ("()", ("42601", "syntax error")),
        ("(RESERVE_WAL) RESERVE_WAL", ("42601", "syntax error")),
        ("(RESERVE_WAL,)", ("42601", "syntax error")),
        ("(RESERVE_WAL 0/0)", ("42601", "syntax error")),
        ("(READ_REPLICATION_SLOT)", ("42601", "syntax error")),
        // PG 15.18 wraps 4294967297 to 1 and creates the slot; the relay refuses.
        (
            "(RESERVE_WAL 4294967297)",
            (
                "22003",
                "value \"4294967297\" is out of range for a 32-bit unsigned integer",
            ),
        ),
        // PG 17 semantics: failover is for logical slots (PG 15: XX000 unrecognized option).
        ("(FAILOVER)", CONFLICTING),
    ];
    for (options, (sqlstate, message)) in cases {
        let text = format!("CREATE_REPLICATION_SLOT t7 TEMPORARY PHYSICAL {options}");
        assert_eq!(err(&text), (sqlstate, message.to_owned()), "{text}");
    }
    // [obs] syntax errors: no LOGICAL plugin, TEMPORARY after PHYSICAL, a keyword as name.
    for text in [
        "CREATE_REPLICATION_SLOT \"t8\" TEMPORARY LOGICAL",
        "CREATE_REPLICATION_SLOT t7 PHYSICAL TEMPORARY",
        "CREATE_REPLICATION_SLOT SLOT PHYSICAL",
        "CREATE_REPLICATION_SLOT t7",
        "CREATE_REPLICATION_SLOT t7 (RESERVE_WAL)",
    ] {
        assert_eq!(err(text), syntax(), "{text}");
    }
    // The syntax is checked before the options.
    assert_eq!(
        err("CREATE_REPLICATION_SLOT x PHYSICAL (FOO) garbage"),
        syntax()
    );
    // Names are not the parser's business: PG checks them when the command runs.
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT \"../../etc\" PHYSICAL"),
        physical_slot("../../etc", false, false)
    );
}

const CONFLICTING: (&str, &str) = ("42601", "conflicting or redundant options");

#[test]
fn logical_slots_parse_so_they_can_be_refused() {
    // [obs] PG 15.18 gets through the grammar and the options, then refuses with 55000
    // "logical decoding requires wal_level >= logical" (0A000 "... requires a database
    // connection" once wal_level is logical).
    let logical = |snapshot, two_phase| C::CreateReplicationSlot {
        name: "t8".into(),
        temporary: true,
        kind: SlotKind::Logical {
            plugin: "pgoutput".into(),
            snapshot,
            two_phase,
            failover: false,
        },
    };
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT \"t8\" TEMPORARY LOGICAL pgoutput"),
        logical(SnapshotAction::Export, false)
    );
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT t8 TEMPORARY LOGICAL pgoutput (SNAPSHOT 'use', TWO_PHASE)"),
        logical(SnapshotAction::Use, true)
    );
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT t8 TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT TWO_PHASE"),
        logical(SnapshotAction::Nothing, true)
    );
    let prefix = "CREATE_REPLICATION_SLOT \"t8\" LOGICAL pgoutput";
    for (options, sqlstate, message) in [
        ("(RESERVE_WAL)", "42601", "conflicting or redundant options"),
        (
            "EXPORT_SNAPSHOT NOEXPORT_SNAPSHOT",
            "42601",
            "conflicting or redundant options",
        ),
        ("(SNAPSHOT)", "42601", "snapshot requires a parameter"),
        (
            "(TWO_PHASE 'x')",
            "42601",
            "two_phase requires a Boolean value",
        ),
        (
            "(SNAPSHOT 'bogus')",
            "22023",
            "unrecognized value for CREATE_REPLICATION_SLOT option \"snapshot\": \"bogus\"",
        ),
    ] {
        let text = format!("{prefix} {options}");
        assert_eq!(err(&text), (sqlstate, message.to_owned()), "{text}");
    }
}

#[test]
fn base_backup_new_and_legacy_syntax() {
    let pg15 = "BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MANIFEST 'yes',  TARGET 'client')";
    assert_eq!(
        ok(pg15),
        C::BaseBackup {
            options: vec![
                opt("label", s("pg_basebackup base backup")),
                opt("progress", None),
                opt("checkpoint", s("fast")),
                opt("wait", Some(OptionValue::Int(0))),
                opt("manifest", s("yes")),
                opt("target", s("client")),
            ],
            legacy: false,
        }
    );
    assert_eq!(
        ok(pg15).to_string(),
        "BASE_BACKUP (LABEL 'pg_basebackup base backup', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', TARGET 'client')"
    );
    // [obs] PG 15.18 parses this (then refuses the option "timeline" when it runs the
    // backup): an identifier value is folded unless quoted.
    assert_eq!(
        ok("BASE_BACKUP (LABEL x, TIMELINE, CHECKPOINT \"X\")"),
        C::BaseBackup {
            options: vec![
                opt("label", Some(OptionValue::Ident("x".into()))),
                opt("timeline", None),
                opt("checkpoint", Some(OptionValue::Ident("X".into()))),
            ],
            legacy: false,
        }
    );
    assert_eq!(
        ok("BASE_BACKUP"),
        C::BaseBackup {
            options: vec![],
            legacy: false
        }
    );
    // The keyword syntax of PostgreSQL 11–14 pg_basebackup, parsed as 14 (refused by PG 15
    // [obs], see each_major_parses_its_own_grammar).
    let legacy = "BASE_BACKUP LABEL 'pg_basebackup base backup' PROGRESS FAST WAL NOWAIT MAX_RATE 32 TABLESPACE_MAP NOVERIFY_CHECKSUMS MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'";
    let as14 = |text: &str| ReplicationCommand::parse_as(text, 14).command.unwrap();
    let C::BaseBackup {
        options,
        legacy: true,
    } = as14(legacy)
    else {
        panic!("not legacy")
    };
    assert_eq!(options.len(), 10);
    assert_eq!(options[5], opt("max_rate", Some(OptionValue::Int(32))));
    assert_eq!(as14(legacy).to_string(), legacy);
    assert_eq!(err(legacy), syntax());
    // [obs] PG 15.18: 42601 "syntax error".
    for text in [
        "BASE_BACKUP ()",
        "BASE_BACKUP (READ_REPLICATION_SLOT)",
        "BASE_BACKUP (LABEL 'x' 'y')",
        "BASE_BACKUP (LABEL 'x',)",
        "BASE_BACKUP (WAIT 0/0)",
        "BASE_BACKUP label 'x'",
        "BASE_BACKUP \"LABEL\" 'x'",
        "BASE_BACKUP LABEL x",
        "BASE_BACKUP MAX_RATE 'x'",
        "BASE_BACKUP PROGRESS (LABEL 'x')",
    ] {
        assert_eq!(err(text), syntax(), "{text}");
    }
    // Option meanings are checked apart (`check_base_backup`), as PG checks them when it runs
    // the backup: unknown and duplicate options parse.
    assert!(matches!(
        ok("BASE_BACKUP (FOO, label 'a', label 'b')"),
        C::BaseBackup { .. }
    ));
}

#[test]
fn postgres_17_commands() {
    assert_eq!(ok("UPLOAD_MANIFEST"), C::UploadManifest);
    assert_eq!(
        ok("ALTER_REPLICATION_SLOT x (FAILOVER, TWO_PHASE false)"),
        C::AlterReplicationSlot {
            name: "x".into(),
            options: vec![
                opt("failover", None),
                opt("two_phase", Some(OptionValue::Ident("false".into())))
            ],
        }
    );
}

#[test]
fn a_megabyte_command() {
    let padded = format!("IDENTIFY_SYSTEM{};", " ".repeat(1 << 20));
    assert_eq!(ok(&padded), C::IdentifySystem);
    let sql = format!("SELECT '{}'", "x".repeat(1 << 20));
    assert_eq!(ok(&sql), C::Sql(sql.clone()));
    let many: Vec<String> = (0..100_000).map(|i| format!("o{i} 'v'")).collect();
    let backup = format!("BASE_BACKUP ({})", many.join(", "));
    let C::BaseBackup { options, .. } = ok(&backup) else {
        panic!("not a backup")
    };
    assert_eq!(options.len(), 100_000);
    let label = format!("BASE_BACKUP (LABEL '{}')", "''".repeat(1 << 19));
    assert!(matches!(ok(&label), C::BaseBackup { .. }));
    assert_eq!(
        err(&format!("IDENTIFY_SYSTEM {}", "x ".repeat(1 << 19))),
        syntax()
    );
}

/// Each major's grammar, as walsenders of 12.22, 13.23, 14.23, 15.18 and 16.14 answered the
/// same text over a physical replication connection **\[obs\]**: a command word the major
/// does not know is SQL (0A000), new syntax is a syntax error, and an option it does not know
/// is unrecognized (XX000).
#[test]
fn each_major_parses_its_own_grammar() {
    let answer = |text: &str, major: u32| -> Result<ReplicationCommand, (String, String)> {
        ReplicationCommand::parse_as(text, major)
            .command
            .map_err(|e| (e.sqlstate().to_string(), e.to_string()))
    };
    let sql = |text: &str| Ok(C::Sql(text.to_owned()));
    let syntax = || Err(("42601".to_owned(), "syntax error".to_owned()));
    let failover = || {
        Err((
            "XX000".to_owned(),
            "unrecognized option: failover".to_owned(),
        ))
    };
    for major in 12..=14 {
        for text in [
            "READ_REPLICATION_SLOT x",
            "ALTER_REPLICATION_SLOT s (FAILOVER)",
            "UPLOAD_MANIFEST",
        ] {
            assert_eq!(answer(text, major), sql(text), "{major}: {text}");
        }
        for text in [
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL)",
            "CREATE_REPLICATION_SLOT s2 PHYSICAL (FAILOVER)",
            "CREATE_REPLICATION_SLOT s3 PHYSICAL (RESERVE_WAL, FAILOVER false)",
            "CREATE_REPLICATION_SLOT s LOGICAL pgoutput TWO_PHASE",
        ] {
            assert_eq!(answer(text, major), syntax(), "{major}: {text}");
        }
        assert_eq!(
            answer("CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL", major),
            Ok(physical_slot("s", false, true))
        );
    }
    for major in 15..=16 {
        assert_eq!(
            answer("READ_REPLICATION_SLOT x", major),
            Ok(C::ReadReplicationSlot("x".into()))
        );
        assert_eq!(
            answer("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL)", major),
            Ok(physical_slot("s", false, true))
        );
        for text in [
            "CREATE_REPLICATION_SLOT s2 PHYSICAL (FAILOVER)",
            "CREATE_REPLICATION_SLOT s3 PHYSICAL (RESERVE_WAL, FAILOVER false)",
        ] {
            assert_eq!(answer(text, major), failover(), "{major}: {text}");
        }
        for text in ["ALTER_REPLICATION_SLOT s (FAILOVER)", "UPLOAD_MANIFEST"] {
            assert_eq!(answer(text, major), sql(text), "{major}: {text}");
        }
    }
    // 17 knows failover, for logical slots only; the newest grammar is the default.
    for major in [17, NEWEST_MAJOR] {
        let text = "CREATE_REPLICATION_SLOT s2 PHYSICAL (FAILOVER)";
        assert_eq!(
            answer(text, major),
            Err((
                "42601".to_owned(),
                "conflicting or redundant options".to_owned()
            ))
        );
        assert!(matches!(
            answer("ALTER_REPLICATION_SLOT s (FAILOVER)", major),
            Ok(C::AlterReplicationSlot { .. })
        ));
    }
    assert_eq!(
        ReplicationCommand::parse("UPLOAD_MANIFEST").command,
        Ok(C::UploadManifest)
    );
}

/// BASE_BACKUP's two forms: the keywords up to 14 (`MANIFEST*` from 13), the parenthesized
/// list from 15, each a syntax error in the other's majors **\[obs\]** (12.22, 14.23,
/// 15.18, 16.14, 17).
#[test]
fn each_major_takes_its_own_base_backup_form() {
    let answer = |text: &str, major: u32| ReplicationCommand::parse_as(text, major).command;
    let backup = |options: Vec<GenericOption>, legacy| Ok(C::BaseBackup { options, legacy });
    let rate = || opt("max_rate", Some(OptionValue::Int(1)));
    let label = || opt("label", s("x"));
    for major in [12, 13, 14, 15, 16, 17, NEWEST_MAJOR] {
        assert_eq!(
            answer("BASE_BACKUP", major),
            backup(vec![], false),
            "{major}"
        );
    }
    for major in [12, 13, 14] {
        assert_eq!(
            answer("BASE_BACKUP LABEL 'x' MAX_RATE 1", major),
            backup(vec![label(), rate()], true),
            "{major}"
        );
        assert_eq!(
            answer("BASE_BACKUP MAX_RATE 1;", major),
            backup(vec![rate()], true)
        );
        assert!(answer("BASE_BACKUP LABEL 'a' LABEL 'b'", major).is_ok());
        for text in [
            "BASE_BACKUP (LABEL 'x')",
            "BASE_BACKUP (MAX_RATE 1)",
            "BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/x')",
            "BASE_BACKUP (INCREMENTAL)",
            "BASE_BACKUP label 'x' MAX_RATE 1",
            "BASE_BACKUP MAX_RATE 'x'",
            "BASE_BACKUP LABEL x",
        ] {
            assert_eq!(
                answer(text, major),
                Err(ParseError::Syntax),
                "{major}: {text}"
            );
        }
    }
    // MANIFEST and MANIFEST_CHECKSUMS came with 13.
    for text in [
        "BASE_BACKUP MANIFEST 'yes' MAX_RATE 1",
        "BASE_BACKUP MANIFEST_CHECKSUMS 'x' MAX_RATE 1",
    ] {
        assert_eq!(answer(text, 12), Err(ParseError::Syntax), "{text}");
        assert!(answer(text, 13).is_ok(), "{text}");
        assert!(answer(text, 14).is_ok(), "{text}");
    }
    for major in [15, 16, 17, NEWEST_MAJOR] {
        assert_eq!(
            answer("BASE_BACKUP (LABEL 'x', MAX_RATE 1)", major),
            backup(vec![label(), rate()], false)
        );
        for text in [
            "BASE_BACKUP LABEL 'x' MAX_RATE 1",
            "BASE_BACKUP MANIFEST 'yes' MAX_RATE 1",
            "BASE_BACKUP LABEL 'a' LABEL 'b'",
            "BASE_BACKUP MAX_RATE 1;",
            "BASE_BACKUP PROGRESS FAST WAL NOWAIT TABLESPACE_MAP NOVERIFY_CHECKSUMS MAX_RATE 1",
        ] {
            assert_eq!(
                answer(text, major),
                Err(ParseError::Syntax),
                "{major}: {text}"
            );
        }
    }
}
