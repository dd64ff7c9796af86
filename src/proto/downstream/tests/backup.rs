//! Tests of the parent module.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
//!
//! A relayed BASE_BACKUP: the place, the action with the client's text, and what the session
//! adds to the relayed answer.

use super::*;
use crate::types::SystemId;
use crate::wire::command::BackupRequest;

/// A logged-in session of a relay that relays two BASE_BACKUPs at once.
fn relaying() -> DownstreamSession {
    let config = SessionConfig {
        max_base_backups: 2,
        ..config()
    };
    let mut s = session(config, loopback());
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
    s
}

const SENT: &str = "BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MANIFEST 'yes',  TARGET 'client')";

/// Sends `text`, then answers the place claim with `granted`.
fn start(s: &mut DownstreamSession, text: &str, granted: bool) {
    s.frame(Ok(query(text)), at(0), &view());
    assert_eq!(actions(s), [Action::ClaimBackup]);
    assert_eq!(s.expects(), Expect::Nothing);
    assert!(out(s).is_empty());
    s.backup_claimed(granted);
}

#[test]
fn a_checked_backup_goes_upstream_as_the_client_wrote_it() {
    let mut s = relaying();
    start(&mut s, SENT, true);
    assert_eq!(
        actions(&mut s),
        [Action::StartBackup {
            query: SENT.to_owned(),
            request: BackupRequest {
                progress: true,
                fast_checkpoint: true,
                manifest: true,
                ..BackupRequest::default()
            },
        }]
    );
    assert!(s.is_backing_up());
    assert_eq!(s.expects(), Expect::Nothing);
    // The upstream's answer, its ReadyForQuery included, went to the client.
    s.backup_ended(BackupEnd::Done);
    assert!(out(&mut s).is_empty());
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
    // The next command is answered as usual.
    assert!(!answer_of(&mut s, "IDENTIFY_SYSTEM").is_empty());
}

fn answer_of(s: &mut DownstreamSession, text: &str) -> Vec<u8> {
    s.frame(Ok(query(text)), at(0), &view());
    out(s)
}

#[test]
fn beyond_max_base_backups_is_53300() {
    let mut s = relaying();
    start(&mut s, SENT, false);
    assert_eq!(
        out(&mut s),
        wire(&[
            error(
                SqlState::TOO_MANY_CONNECTIONS,
                "number of requested base backups exceeds max_base_backups (currently 2)"
            ),
            ready()
        ])
    );
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
}

#[test]
fn refusals_never_reach_the_upstream() {
    let mut s = relaying();
    for text in [
        "BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/x')",
        "BASE_BACKUP (TARGET 'blackhole')",
        "BASE_BACKUP (MAX_RATE 1)",
        "BASE_BACKUP LABEL 'x'",
    ] {
        let answer = answer_of(&mut s, text);
        assert!(!answer.is_empty(), "{text}");
        assert!(actions(&mut s).is_empty(), "{text}");
    }
    // Before the upstream is known, as other commands that need it.
    let unknown = RelayView {
        upstream: None,
        ..view()
    };
    s.frame(Ok(query(SENT)), at(0), &unknown);
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(reply::starting_up()), ready()])
    );
    assert!(actions(&mut s).is_empty());
}

#[test]
fn what_the_session_adds_when_the_upstream_fails() {
    let mut s = relaying();
    start(&mut s, SENT, true);
    actions(&mut s);
    s.backup_ended(BackupEnd::ConnectFailed("connection refused".into()));
    let failed = ErrorFields::error(
        SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        "could not connect to the upstream server for BASE_BACKUP",
    )
    .with_detail("connection refused");
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(failed), ready()])
    );

    start(&mut s, SENT, true);
    actions(&mut s);
    s.backup_ended(BackupEnd::UpstreamLost {
        after_error: false,
        detail: "server closed the connection unexpectedly".into(),
    });
    let lost = ErrorFields::error(
        SqlState::CONNECTION_FAILURE,
        "lost connection to the upstream server during BASE_BACKUP",
    )
    .with_detail("server closed the connection unexpectedly");
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(lost), ready()])
    );

    // The upstream's own ErrorResponse went through: only ReadyForQuery is missing.
    start(&mut s, SENT, true);
    actions(&mut s);
    s.backup_ended(BackupEnd::UpstreamLost {
        after_error: true,
        detail: "gone".into(),
    });
    assert_eq!(out(&mut s), wire(&[ready()]));
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));

    // Lost inside a message: nothing can follow on that stream.
    start(&mut s, SENT, true);
    actions(&mut s);
    s.backup_ended(BackupEnd::Broken);
    assert_eq!(actions(&mut s), [Action::Close]);
    assert!(s.is_closed());
}

#[test]
fn zero_places_keeps_the_old_refusal_and_shutdown_closes_a_backup() {
    // max_base_backups 0 (the shared test config).
    let mut s = logged_in();
    let refusal = ErrorFields::error(
        SqlState::FEATURE_NOT_SUPPORTED,
        "BASE_BACKUP is not supported by walrelay",
    )
    .with_hint("Take the base backup from the primary server.");
    assert_eq!(
        answer_of(&mut s, SENT),
        wire(&[BackendMessage::ErrorResponse(refusal), ready()])
    );
    let mut s = relaying();
    start(&mut s, SENT, true);
    actions(&mut s);
    s.shutdown(at(1));
    assert_eq!(actions(&mut s), [Action::Close]);
    // The caller stopped between two messages of the answer.
    let mut s = relaying();
    start(&mut s, SENT, true);
    actions(&mut s);
    s.backup_ended(BackupEnd::Shutdown);
    let fatal = ErrorFields::fatal(
        SqlState::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    );
    assert_eq!(out(&mut s), wire(&[BackendMessage::ErrorResponse(fatal)]));
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn the_backup_upstream_must_be_the_known_one() {
    let known = upstream_of("15.18 (Debian 15.18-0+deb12u1)");
    assert_eq!(
        check_backup_upstream(&known, known.system_id, 150_004),
        Ok(())
    );
    let other = check_backup_upstream(&known, SystemId(42), 150_018).unwrap_err();
    assert_eq!(
        (
            other.code.code(),
            other.message.as_str(),
            other.detail.as_deref()
        ),
        (
            "55000",
            "database system identifier differs between the primary and standby",
            Some(
                "The primary's identifier is 42, the standby's identifier is 7351213962143123456."
            )
        )
    );
    let newer = check_backup_upstream(&known, known.system_id, 160_014).unwrap_err();
    assert_eq!(
        newer.detail.as_deref(),
        Some("The upstream server runs 16, this server reports 15.")
    );
    // The refusal reaches the client as an ERROR; the connection goes on.
    let mut s = relaying();
    start(&mut s, SENT, true);
    actions(&mut s);
    s.backup_ended(BackupEnd::Refused(newer.clone()));
    assert_eq!(
        out(&mut s),
        wire(&[BackendMessage::ErrorResponse(newer), ready()])
    );
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
}
