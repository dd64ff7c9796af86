//! Tests of the parent module.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
//!
//! Every row marked **\[obs\]** is what a PostgreSQL 15.18 walsender answered to the same
//! text over a physical replication connection (`psql "replication=true"`, role with
//! REPLICATION only), rows for 16 and 17 what 16.14 and 17 answered.

use super::*;
use crate::wire::command::ReplicationCommand;

/// Parses `text` as `major` does, then checks it: the request, or (SQLSTATE, message).
fn check(text: &str, major: u32) -> Result<BackupRequest, (String, String)> {
    let parsed = ReplicationCommand::parse_as(text, major).command;
    let checked = match parsed {
        Ok(ReplicationCommand::BaseBackup { options, legacy }) => {
            check_base_backup(&options, legacy, major)
        }
        Ok(other) => panic!("{text}: parsed as {other:?}"),
        Err(e) => Err(e),
    };
    checked.map_err(|e| (e.sqlstate().to_string(), e.to_string()))
}

fn err(code: &str, message: &str) -> Result<BackupRequest, (String, String)> {
    Err((code.to_owned(), message.to_owned()))
}

fn ok15(text: &str) -> BackupRequest {
    check(text, 15).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

/// Faults of the option loop, first fault wins **\[obs\]**.
#[test]
fn loop_faults_as_postgres_15_reports_them() {
    let rows: &[(&str, &str, &str)] = &[
        ("(FOO)", "42601", "unrecognized base backup option: \"foo\""),
        (
            "(LABEL 'a', FOO)",
            "42601",
            "unrecognized base backup option: \"foo\"",
        ),
        // A quoted name is not folded, and so unknown.
        (
            "(Label 'a', \"LABEL\" 'b')",
            "42601",
            "unrecognized base backup option: \"LABEL\"",
        ),
        (
            "(INCREMENTAL)",
            "42601",
            "unrecognized base backup option: \"incremental\"",
        ),
        (
            "(LABEL 'a', LABEL 'b')",
            "42601",
            "duplicate option \"label\"",
        ),
        ("(LABEL 'a', LABEL)", "42601", "duplicate option \"label\""),
        ("(WAIT, WAIT)", "42601", "duplicate option \"wait\""),
        (
            "(PROGRESS, PROGRESS 'bogus')",
            "42601",
            "duplicate option \"progress\"",
        ),
        (
            "(MAX_RATE 100, MAX_RATE 'x')",
            "42601",
            "duplicate option \"max_rate\"",
        ),
        (
            "(TARGET 'a', TARGET)",
            "42601",
            "duplicate option \"target\"",
        ),
        (
            "(TARGET 'client', TARGET 'client')",
            "42601",
            "duplicate option \"target\"",
        ),
        (
            "(CHECKPOINT 'fast', CHECKPOINT 'x')",
            "42601",
            "duplicate option \"checkpoint\"",
        ),
        (
            "(MANIFEST 'yes', MANIFEST 'bogus')",
            "42601",
            "duplicate option \"manifest\"",
        ),
        (
            "(MANIFEST 'yes', MANIFEST_CHECKSUMS 'sha256', MANIFEST_CHECKSUMS 'x')",
            "42601",
            "duplicate option \"manifest_checksums\"",
        ),
        (
            "(COMPRESSION 'gzip', COMPRESSION 'x')",
            "42601",
            "duplicate option \"compression\"",
        ),
        (
            "(COMPRESSION_DETAIL 'a', COMPRESSION_DETAIL)",
            "42601",
            "duplicate option \"compression_detail\"",
        ),
        // These read their value before the duplicate check.
        (
            "(CHECKPOINT 'fast', CHECKPOINT)",
            "42601",
            "checkpoint requires a parameter",
        ),
        (
            "(MANIFEST 'yes', MANIFEST)",
            "42601",
            "manifest requires a parameter",
        ),
        (
            "(TARGET_DETAIL 'a', TARGET_DETAIL)",
            "42601",
            "target_detail requires a parameter",
        ),
        (
            "(COMPRESSION 'gzip', COMPRESSION)",
            "42601",
            "compression requires a parameter",
        ),
        ("(LABEL)", "42601", "label requires a parameter"),
        ("(TARGET)", "42601", "target requires a parameter"),
        (
            "(COMPRESSION_DETAIL)",
            "42601",
            "compression_detail requires a parameter",
        ),
        (
            "(PROGRESS 'yes')",
            "42601",
            "progress requires a Boolean value",
        ),
        ("(PROGRESS 2)", "42601", "progress requires a Boolean value"),
        (
            "(PROGRESS 'bogus', PROGRESS)",
            "42601",
            "progress requires a Boolean value",
        ),
        ("(WAIT maybe)", "42601", "wait requires a Boolean value"),
        (
            "(VERIFY_CHECKSUMS 'x')",
            "42601",
            "verify_checksums requires a Boolean value",
        ),
        (
            "(TABLESPACE_MAP 'x')",
            "42601",
            "tablespace_map requires a Boolean value",
        ),
        ("(WAL 'x')", "42601", "wal requires a Boolean value"),
        (
            "(CHECKPOINT 'slow')",
            "42601",
            "unrecognized checkpoint type: \"slow\"",
        ),
        ("(CHECKPOINT)", "42601", "checkpoint requires a parameter"),
        (
            "(CHECKPOINT 5)",
            "42601",
            "unrecognized checkpoint type: \"5\"",
        ),
        // (int) strtoul wraps.
        (
            "(CHECKPOINT 3000000000)",
            "42601",
            "unrecognized checkpoint type: \"-1294967296\"",
        ),
        (
            "(MAX_RATE '100')",
            "42601",
            "max_rate requires a numeric value",
        ),
        ("(MAX_RATE)", "42601", "max_rate requires a numeric value"),
        (
            "(LABEL 5, MAX_RATE 'x')",
            "42601",
            "max_rate requires a numeric value",
        ),
        (
            "(MANIFEST 'maybe')",
            "42601",
            "unrecognized manifest option: \"maybe\"",
        ),
        (
            "(MANIFEST 'o')",
            "42601",
            "unrecognized manifest option: \"o\"",
        ),
        (
            "(MANIFEST 'force')",
            "42601",
            "unrecognized manifest option: \"force\"",
        ),
        (
            "(MANIFEST 2)",
            "42601",
            "unrecognized manifest option: \"2\"",
        ),
        (
            "(MANIFEST '')",
            "42601",
            "unrecognized manifest option: \"\"",
        ),
        (
            "(MANIFEST 'yess')",
            "42601",
            "unrecognized manifest option: \"yess\"",
        ),
        ("(MANIFEST)", "42601", "manifest requires a parameter"),
        (
            "(MANIFEST_CHECKSUMS 'md5')",
            "42601",
            "unrecognized checksum algorithm: \"md5\"",
        ),
        (
            "(MANIFEST_CHECKSUMS 'a', MANIFEST_CHECKSUMS)",
            "42601",
            "unrecognized checksum algorithm: \"a\"",
        ),
        (
            "(MANIFEST 'no', MANIFEST_CHECKSUMS 'x')",
            "42601",
            "unrecognized checksum algorithm: \"x\"",
        ),
        (
            "(COMPRESSION 'brotli')",
            "42601",
            "unrecognized compression algorithm: \"brotli\"",
        ),
        (
            "(COMPRESSION 'GZIP')",
            "42601",
            "unrecognized compression algorithm: \"GZIP\"",
        ),
        ("(COMPRESSION)", "42601", "compression requires a parameter"),
        (
            "(TARGET 'server', TARGET_DETAIL '/tmp/x', COMPRESSION 'brotli')",
            "42601",
            "unrecognized compression algorithm: \"brotli\"",
        ),
    ];
    for (options, code, message) in rows {
        let text = format!("BASE_BACKUP {options}");
        assert_eq!(check(&text, 15), err(code, message), "{text}");
    }
}

/// MAX_RATE's bounds, and the `(int)` PostgreSQL prints **\[obs\]**.
#[test]
fn max_rate_range() {
    let out = |n: &str| {
        let message =
            format!("{n} is outside the valid range for parameter \"MAX_RATE\" (32 .. 1048576)");
        err("22003", &message)
    };
    for (value, printed) in [
        ("1", "1"),
        ("31", "31"),
        ("1048577", "1048577"),
        ("2147483648", "-2147483648"),
        ("4294967295", "-1"),
    ] {
        let text = format!("BASE_BACKUP (MAX_RATE {value})");
        assert_eq!(check(&text, 15), out(printed), "{text}");
    }
    // The range check is in the loop: it comes before a later unknown option or duplicate.
    assert_eq!(check("BASE_BACKUP (MAX_RATE 1, FOO)", 15), out("1"));
    assert_eq!(check("BASE_BACKUP (MAX_RATE 1, MAX_RATE 2)", 15), out("1"));
    assert_eq!(ok15("BASE_BACKUP (MAX_RATE 32)").max_rate, Some(32));
    assert_eq!(
        ok15("BASE_BACKUP (MAX_RATE 1048576)").max_rate,
        Some(1_048_576)
    );
}

/// The checks after the loop, in PostgreSQL's order **\[obs\]**.
#[test]
fn post_loop_faults_in_order() {
    let rows: &[(&str, &str, &str)] = &[
        // No MANIFEST is no manifest.
        (
            "(MANIFEST_CHECKSUMS 'sha256')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(MANIFEST 'no', MANIFEST_CHECKSUMS 'sha256')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(MANIFEST 0, MANIFEST_CHECKSUMS 'crc32c')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(MANIFEST 'n', MANIFEST_CHECKSUMS 'crc32c')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(MANIFEST 'f', MANIFEST_CHECKSUMS 'crc32c')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(MANIFEST_CHECKSUMS 'sha256', TARGET_DETAIL 'x')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(TARGET 'client', TARGET_DETAIL 'x', MANIFEST_CHECKSUMS 'crc32c')",
            "42601",
            "manifest checksums require a backup manifest",
        ),
        (
            "(TARGET_DETAIL 'x')",
            "42601",
            "target detail cannot be used without target",
        ),
        (
            "(LABEL 'x', TARGET_DETAIL 'x', COMPRESSION_DETAIL '1')",
            "42601",
            "target detail cannot be used without target",
        ),
        (
            "(TARGET 'client', TARGET_DETAIL 'x')",
            "42601",
            "target \"client\" does not accept a target detail",
        ),
        (
            "(TARGET 'server')",
            "42601",
            "target \"server\" requires a target detail",
        ),
        // Targets are matched exactly: 'CLIENT' is unknown.
        (
            "(TARGET 'CLIENT')",
            "0A000",
            "unrecognized target: \"CLIENT\"",
        ),
        (
            "(TARGET 'bogus', TARGET_DETAIL 'x')",
            "0A000",
            "unrecognized target: \"bogus\"",
        ),
        ("(TARGET 5)", "0A000", "unrecognized target: \"5\""),
        // An unknown target comes before the compression checks, wherever it stands.
        (
            "(TARGET 'bogus', COMPRESSION_DETAIL '1')",
            "0A000",
            "unrecognized target: \"bogus\"",
        ),
        (
            "(COMPRESSION_DETAIL '1', TARGET 'bogus')",
            "0A000",
            "unrecognized target: \"bogus\"",
        ),
        (
            "(COMPRESSION_DETAIL '1')",
            "42601",
            "compression detail cannot be specified unless compression is enabled",
        ),
        (
            "(TARGET 'client', COMPRESSION_DETAIL '1')",
            "42601",
            "compression detail cannot be specified unless compression is enabled",
        ),
        (
            "(TARGET 'server', TARGET_DETAIL '/tmp/x', COMPRESSION_DETAIL '1')",
            "42601",
            "compression detail cannot be specified unless compression is enabled",
        ),
    ];
    for (options, code, message) in rows {
        let text = format!("BASE_BACKUP {options}");
        assert_eq!(check(&text, 15), err(code, message), "{text}");
    }
}

/// The targets the relay refuses itself: `server` as PostgreSQL refuses it to a role without
/// `pg_write_server_files` **\[obs\]** (15 and 16 wordings), `blackhole` as a target it does
/// not offer.
#[test]
fn server_and_blackhole_targets_are_refused() {
    let server = "BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/tmp/bbverify/x')";
    let pg15 = "must be superuser or a role with privileges of the pg_write_server_files role to create backup stored on server";
    assert_eq!(check(server, 15), err("42501", pg15));
    // PostgreSQL checks the privilege before the path.
    let relative = "BASE_BACKUP (TARGET 'server', TARGET_DETAIL 'rel')";
    assert_eq!(check(relative, 15), err("42501", pg15));
    let pg16 = "permission denied to create backup stored on server";
    for major in [16, 17, NEWEST_MAJOR] {
        assert_eq!(check(server, major), err("42501", pg16), "{major}");
    }
    let detail = "Only roles with privileges of the \"pg_write_server_files\" role may create a backup stored on the server.";
    assert_eq!(
        ParseError::ServerTargetDenied { major: 16 }
            .detail()
            .as_deref(),
        Some(detail)
    );
    assert_eq!(ParseError::ServerTargetDenied { major: 15 }.detail(), None);
    let fields = ParseError::ServerTargetDenied { major: 17 }.to_error();
    assert_eq!(
        (fields.code.code(), fields.detail.as_deref(), fields.hint),
        ("42501", Some(detail), None)
    );

    // PostgreSQL would back up to nowhere ('blackhole') or refuse its detail; the relay
    // offers no such target, whatever the detail.
    for text in [
        "BASE_BACKUP (TARGET 'blackhole')",
        "BASE_BACKUP (TARGET 'blackhole', TARGET_DETAIL 'x')",
    ] {
        assert_eq!(
            check(text, 15),
            err("0A000", "unrecognized target: \"blackhole\""),
            "{text}"
        );
    }
    let fields = ParseError::UnrecognizedTarget("blackhole".into()).to_error();
    assert_eq!(
        fields.hint.as_deref(),
        Some("walrelay sends base backups to the client only.")
    );
    assert_eq!(ParseError::UnrecognizedTarget("bogus".into()).hint(), None);
}

/// What passes, and what the request says.
#[test]
fn accepted_options_and_the_request() {
    // What pg_basebackup 15 sends for `-X stream -c fast` [obs PROTOCOL.md §2.3].
    let sent = "BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MANIFEST 'yes',  TARGET 'client')";
    for major in [15, 16, 17, NEWEST_MAJOR] {
        assert_eq!(
            check(sent, major),
            Ok(BackupRequest {
                progress: true,
                fast_checkpoint: true,
                manifest: true,
                ..BackupRequest::default()
            }),
            "{major}"
        );
    }
    assert_eq!(ok15("BASE_BACKUP"), BackupRequest::default());
    let all = ok15(
        "BASE_BACKUP (PROGRESS ON, WAIT 0, WAL off, TABLESPACE_MAP TRUE, VERIFY_CHECKSUMS 1, CHECKPOINT Spread, MAX_RATE 32, COMPRESSION 'zstd', COMPRESSION_DETAIL 'level=236')",
    );
    assert_eq!(
        all,
        BackupRequest {
            progress: true,
            max_rate: Some(32),
            compression: Compression::Zstd,
            ..BackupRequest::default()
        }
    );
    assert!(ok15("BASE_BACKUP (CHECKPOINT 'FAST', WAL)").fast_checkpoint);
    assert!(ok15("BASE_BACKUP (WAL)").wal);
    // MANIFEST is parse_bool or force-encode, any case.
    for value in [
        "'y'",
        "'Ye'",
        "'ON'",
        "'t'",
        "1",
        "yes",
        "'force-encode'",
        "'FORCE-ENCODE'",
    ] {
        let text = format!("BASE_BACKUP (MANIFEST {value}, MANIFEST_CHECKSUMS 'Sha512')");
        assert!(ok15(&text).manifest, "{text}");
    }
    for value in ["'of'", "'n'", "'f'", "0", "'FALSE'"] {
        let text = format!("BASE_BACKUP (MANIFEST {value})");
        assert!(!ok15(&text).manifest, "{text}");
    }
    let none = ok15("BASE_BACKUP (MANIFEST yes, MANIFEST_CHECKSUMS none, TARGET 'client')");
    assert!(none.manifest);
    // A compression specification is the upstream's to judge (it depends on its build).
    assert_eq!(
        ok15("BASE_BACKUP (COMPRESSION 'gzip', COMPRESSION_DETAIL 'level=236')").compression,
        Compression::Gzip
    );
    assert_eq!(
        ok15("BASE_BACKUP (COMPRESSION 'none', COMPRESSION_DETAIL '1')").compression,
        Compression::None
    );
}

/// `incremental` exists from 17; whether it can run is the upstream's to say (55000 without
/// WAL summarization) **\[obs\]**.
#[test]
fn incremental_from_17() {
    assert_eq!(
        check("BASE_BACKUP (INCREMENTAL)", 16),
        err("42601", "unrecognized base backup option: \"incremental\"")
    );
    assert!(check("BASE_BACKUP (INCREMENTAL)", 17).is_ok_and(|r| r.incremental));
    assert_eq!(
        check("BASE_BACKUP (INCREMENTAL 'x')", 17),
        err("42601", "incremental requires a Boolean value")
    );
    assert_eq!(
        check("BASE_BACKUP (INCREMENTAL false, FOO)", 17),
        err("42601", "unrecognized base backup option: \"foo\"")
    );
    assert_eq!(
        check("BASE_BACKUP (INCREMENTAL, INCREMENTAL)", 18),
        err("42601", "duplicate option \"incremental\"")
    );
}

/// Before 15 the keyword form goes upstream as written; the request is read leniently.
#[test]
fn keyword_form_before_15() {
    let text = "BASE_BACKUP LABEL 'pg_basebackup base backup' PROGRESS FAST WAL NOWAIT MAX_RATE 32 TABLESPACE_MAP NOVERIFY_CHECKSUMS MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'";
    for major in [13, 14] {
        assert_eq!(
            check(text, major),
            Ok(BackupRequest {
                legacy: true,
                progress: true,
                fast_checkpoint: true,
                wal: true,
                max_rate: Some(32),
                manifest: true,
                ..BackupRequest::default()
            })
        );
    }
    // PostgreSQL 14 refuses these itself (duplicate, range) [obs]: the upstream answers.
    assert!(check("BASE_BACKUP LABEL 'a' LABEL 'b'", 14).is_ok());
    assert_eq!(
        check("BASE_BACKUP MAX_RATE 1", 14).map(|r| r.max_rate),
        Ok(None)
    );
    assert_eq!(check("BASE_BACKUP", 12), Ok(BackupRequest::default()));
    // The other major's form, handed in directly, is a syntax error as the grammar says.
    let options = [GenericOption {
        name: "progress".into(),
        value: None,
    }];
    assert_eq!(
        check_base_backup(&options, true, 15),
        Err(ParseError::Syntax)
    );
    assert_eq!(
        check_base_backup(&options, false, 14),
        Err(ParseError::Syntax)
    );
    assert!(check_base_backup(&[], false, 14).is_ok());
}

/// A major newer than the relay knows: only the targets are the relay's business.
#[test]
fn newer_majors_get_the_target_rule_only() {
    let next = NEWEST_MAJOR + 1;
    assert!(check("BASE_BACKUP (FOO, LABEL 'a', LABEL 'b')", next).is_ok());
    assert_eq!(
        check("BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/x')", next),
        err(
            "42501",
            "permission denied to create backup stored on server"
        )
    );
    assert_eq!(
        check("BASE_BACKUP (TARGET 'blackhole')", next),
        err("0A000", "unrecognized target: \"blackhole\"")
    );
    assert!(
        check("BASE_BACKUP (TARGET 'client', CHECKPOINT 'fast')", next)
            .is_ok_and(|r| r.fast_checkpoint)
    );
}

#[test]
fn parse_bool_as_postgres() {
    for (text, want) in [
        ("t", Some(true)),
        ("TRUE", Some(true)),
        ("tr", Some(true)),
        ("truex", None),
        ("y", Some(true)),
        ("no", Some(false)),
        ("o", None),
        ("on", Some(true)),
        ("of", Some(false)),
        ("off", Some(false)),
        ("offf", None),
        ("1", Some(true)),
        ("0", Some(false)),
        ("01", None),
        ("", None),
        ("é", None),
    ] {
        assert_eq!(parse_bool(text), want, "{text:?}");
    }
}
