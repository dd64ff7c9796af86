//! §2.1: first packets, the StartupMessage, login and greeting.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use super::*;

fn fresh() -> DownstreamSession {
    session(config(), loopback())
}

/// The only answer is one FATAL error, then the close.
fn refused_with(packet: Result<StartupPacket, WireError>, expected: &BackendMessage) {
    let mut s = fresh();
    s.startup_packet(packet, false, &view());
    assert_eq!(out(&mut s), wire(std::slice::from_ref(expected)));
    assert_eq!(actions(&mut s), [Action::Close]);
    assert!(s.is_closed());
    assert_eq!(s.expects(), Expect::Nothing);
}

#[test]
fn lengths_out_of_range_close_silently() {
    // PG15 closes without an answer and only logs "invalid length of startup packet".
    for len in [0, 3, 7, 10_009, i32::MAX, -1] {
        let mut s = fresh();
        s.startup_packet(Err(WireError::StartupLength { len }), false, &view());
        assert!(out(&mut s).is_empty(), "{len}");
        assert_eq!(actions(&mut s), [Action::Close]);
    }
}

#[test]
fn malformed_startup_packets_get_postgres_errors() {
    refused_with(
        Err(WireError::StartupLayout),
        &fatal(
            SqlState::PROTOCOL_VIOLATION,
            "invalid startup packet layout: expected terminator as last byte",
        ),
    );
    for (major, minor, text) in [
        (
            2,
            0,
            "unsupported frontend protocol 2.0: server supports 3.0 to 3.0",
        ),
        (
            4,
            0,
            "unsupported frontend protocol 4.0: server supports 3.0 to 3.0",
        ),
    ] {
        refused_with(
            Err(WireError::UnsupportedProtocol { major, minor }),
            &fatal(SqlState::FEATURE_NOT_SUPPORTED, text),
        );
    }
}

#[test]
fn startup_message_checks_in_postgres_order() {
    let no_user = [("database", "replication"), ("replication", "true")];
    refused_with(
        Ok(startup(&no_user)),
        &fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        ),
    );
    refused_with(
        Ok(startup(&[("user", ""), ("replication", "true")])),
        &fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        ),
    );
    refused_with(
        Ok(startup(&[("user", "postgres"), ("replication", "maybe")])),
        &fatal(
            SqlState::INVALID_PARAMETER_VALUE,
            "invalid value for parameter \"replication\": \"maybe\"",
        ),
    );
    let logical = BackendMessage::ErrorResponse(
        ErrorFields::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "logical replication connections (replication=database) are not supported by walrelay",
        )
        .with_hint("walrelay relays physical replication only."),
    );
    let database = [("user", "postgres"), ("replication", "database")];
    refused_with(Ok(startup(&database)), &logical);
    // A plain SQL connection (replication off or absent) has no pg_hba.conf entry.
    for replication in [None, Some("off"), Some("0")] {
        let mut params = vec![("user", "alice"), ("database", "app")];
        params.extend(replication.map(|r| ("replication", r)));
        refused_with(
            Ok(startup(&params)),
            &fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "no pg_hba.conf entry for host \"127.0.0.1\", user \"alice\", database \"app\", no encryption",
            ),
        );
    }
}

#[test]
fn only_loopback_clients_are_trusted() {
    let mut s = session(config(), "10.1.2.3".parse().unwrap());
    s.startup_packet(Ok(startup(LOGIN)), false, &view());
    let text = "no pg_hba.conf entry for replication connection from host \"10.1.2.3\", user \"postgres\", no encryption";
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, text)])
    );
    assert_eq!(actions(&mut s), [Action::Close]);
    let mut v6 = session(config(), "::1".parse().unwrap());
    v6.startup_packet(Ok(startup(LOGIN)), false, &view());
    assert_eq!(actions(&mut v6), [Action::ClaimSender]);
}

#[test]
fn before_the_upstream_is_known_the_system_is_starting_up() {
    let mut s = fresh();
    let unknown = RelayView {
        upstream: None,
        ..view()
    };
    s.startup_packet(Ok(startup(LOGIN)), false, &unknown);
    let e = ErrorFields::fatal(
        SqlState::CANNOT_CONNECT_NOW,
        "the database system is starting up",
    )
    .with_detail("walrelay has not reached its upstream server yet.");
    assert_eq!(out(&mut s), wire(&[BackendMessage::ErrorResponse(e)]));
}

#[test]
fn beyond_max_wal_senders_gets_53300() {
    let mut s = fresh();
    s.startup_packet(Ok(startup(LOGIN)), false, &view());
    assert_eq!(actions(&mut s), [Action::ClaimSender]);
    assert_eq!(s.expects(), Expect::Nothing);
    s.claimed(None, &view());
    let text = "number of requested standby connections exceeds max_wal_senders (currently 3)";
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::TOO_MANY_CONNECTIONS, text)])
    );
    assert_eq!(actions(&mut s), [Action::Close]);
    assert_eq!(s.login(), None);
}

fn log_in(s: &mut DownstreamSession, packet: StartupPacket) {
    s.startup_packet(Ok(packet), false, &view());
    assert_eq!(actions(s), [Action::ClaimSender]);
    s.claimed(
        Some(SenderClaim {
            pid: PID,
            cancel_key: CANCEL_KEY,
        }),
        &view(),
    );
}

#[test]
fn the_greeting_is_a_walsenders() {
    let mut s = fresh();
    log_in(&mut s, startup(LOGIN));
    assert_eq!(out(&mut s), wire(&greeting("postgres", "d1")));
    assert!(actions(&mut s).is_empty());
    let login = s.login().unwrap();
    assert_eq!(
        (
            login.user.as_str(),
            login.application_name.as_str(),
            login.pid
        ),
        ("postgres", "d1", PID)
    );
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
}

#[test]
fn the_last_duplicate_wins_and_names_are_made_printable() {
    // PG15: the second `user` is the one logged in; application_name becomes printable ASCII,
    // one `?` per byte that is not.
    let mut s = fresh();
    let params = [
        ("user", "first"),
        ("replication", "on"),
        ("user", "second"),
        ("application_name", "é\u{1b}[31mevil\nname"),
    ];
    log_in(&mut s, startup(&params));
    assert_eq!(out(&mut s), wire(&greeting("second", "???[31mevil?name")));
}

#[test]
fn a_newer_minor_version_or_pq_options_get_negotiate_protocol_version() {
    let mut s = fresh();
    let mut params: Vec<(String, String)> = LOGIN
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    params.push(("_pq_.walrelay_test".into(), "1".into()));
    log_in(
        &mut s,
        StartupPacket::Startup(StartupMessage {
            minor_version: 99,
            params,
        }),
    );
    let mut expected = vec![BackendMessage::NegotiateProtocolVersion {
        newest_version: 196_608,
        unrecognized: vec!["_pq_.walrelay_test".into()],
    }];
    expected.extend(greeting("postgres", "d1"));
    assert_eq!(out(&mut s), wire(&expected));
}

#[test]
fn ssl_and_gss_requests_are_answered_n() {
    let mut s = fresh();
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    assert_eq!(out(&mut s), b"N");
    assert_eq!(s.expects(), Expect::StartupPacket(MAX_STARTUP_PACKET_LEN));
    s.startup_packet(Ok(StartupPacket::GssEncRequest), false, &view());
    assert_eq!(out(&mut s), b"N");
    log_in(&mut s, startup(LOGIN));
    assert_eq!(out(&mut s), wire(&greeting("postgres", "d1")));
}

#[test]
fn bytes_sent_ahead_of_the_ssl_answer_are_refused() {
    // PG15: `N`, then FATAL 08P01, then the close (CVE-2021-23214's fix).
    for request in [StartupPacket::SslRequest, StartupPacket::GssEncRequest] {
        let mut s = fresh();
        s.startup_packet(Ok(request), true, &view());
        let mut expected = b"N".to_vec();
        expected.extend(wire(&[BackendMessage::ErrorResponse(
            ErrorFields::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "received unencrypted data after SSL request",
            )
            .with_detail(
                "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
            ),
        )]));
        assert_eq!(out(&mut s), expected);
        assert_eq!(actions(&mut s), [Action::Close]);
    }
}

#[test]
fn a_second_request_of_a_kind_is_an_unsupported_protocol() {
    let mut s = fresh();
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    out(&mut s);
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    let text = "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0";
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::FEATURE_NOT_SUPPORTED, text)])
    );
    let mut s = fresh();
    for request in [StartupPacket::GssEncRequest, StartupPacket::SslRequest] {
        s.startup_packet(Ok(request), false, &view());
    }
    out(&mut s);
    s.startup_packet(Ok(StartupPacket::GssEncRequest), false, &view());
    let text = "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0";
    assert_eq!(
        out(&mut s),
        wire(&[fatal(SqlState::FEATURE_NOT_SUPPORTED, text)])
    );
}

#[test]
fn a_cancel_request_is_passed_on_and_closes_silently() {
    let mut s = fresh();
    let cancel = StartupPacket::Cancel {
        process_id: 0x1234_5678,
        secret_key: 0x0bad_cafe,
    };
    s.startup_packet(Ok(cancel), false, &view());
    assert!(out(&mut s).is_empty());
    let passed_on = Action::Cancel {
        pid: BackendPid(0x1234_5678),
        secret_key: 0x0bad_cafe,
    };
    assert_eq!(actions(&mut s), [passed_on, Action::Close]);
}

#[test]
fn shutdown_during_startup_closes_silently() {
    let mut s = fresh();
    s.shutdown(at(0));
    assert!(out(&mut s).is_empty());
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn answers_fed_out_of_order_end_the_session() {
    let mut s = fresh();
    s.slot_read(None, &view());
    assert_eq!(actions(&mut s), [Action::Close]);
    assert!(s.is_closed());
}

fn with_tls() -> DownstreamSession {
    let config = SessionConfig {
        tls: true,
        ..config()
    };
    session(config, loopback())
}

fn established() -> TlsSession {
    TlsSession {
        certificate_hash: Some(vec![7; 32]),
        client_certificate: None,
    }
}

#[test]
fn with_a_certificate_ssl_is_answered_s_and_the_handshake_follows() {
    let mut s = with_tls();
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    assert_eq!(out(&mut s), b"S");
    assert_eq!(actions(&mut s), [Action::StartTls { direct: false }]);
    assert_eq!(s.expects(), Expect::Nothing);
    s.tls_started(established());
    assert_eq!(s.expects(), Expect::StartupPacket(MAX_STARTUP_PACKET_LEN));
    log_in(&mut s, startup(LOGIN));
    assert_eq!(out(&mut s), wire(&greeting("postgres", "d1")));
}

#[test]
fn over_tls_neither_request_may_come_again() {
    for (request, code) in [
        (StartupPacket::SslRequest, "1234.5679"),
        (StartupPacket::GssEncRequest, "1234.5680"),
    ] {
        let mut s = with_tls();
        s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
        out(&mut s);
        actions(&mut s);
        s.tls_started(established());
        s.startup_packet(Ok(request), false, &view());
        let text = format!("unsupported frontend protocol {code}: server supports 3.0 to 3.0");
        assert_eq!(
            out(&mut s),
            wire(&[fatal(SqlState::FEATURE_NOT_SUPPORTED, &text)])
        );
        assert_eq!(actions(&mut s), [Action::Close]);
    }
}

#[test]
fn gss_refused_then_ssl_accepted() {
    let mut s = with_tls();
    s.startup_packet(Ok(StartupPacket::GssEncRequest), false, &view());
    assert_eq!(out(&mut s), b"N");
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    assert_eq!(out(&mut s), b"S");
    assert_eq!(actions(&mut s), [Action::StartTls { direct: false }]);
}

#[test]
fn bytes_ahead_of_an_s_are_refused_without_a_handshake() {
    let mut s = with_tls();
    s.startup_packet(Ok(StartupPacket::SslRequest), true, &view());
    let got = out(&mut s);
    assert_eq!(got.first(), Some(&b'S'));
    assert!(String::from_utf8_lossy(&got).contains("received unencrypted data after SSL request"));
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn a_client_hello_first_is_direct_tls_only_with_a_certificate() {
    let mut s = with_tls();
    s.direct_tls();
    assert!(out(&mut s).is_empty());
    assert_eq!(actions(&mut s), [Action::StartTls { direct: true }]);
    s.tls_started(established());
    // Direct TLS stands for the SSLRequest: neither request may follow.
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    assert_eq!(actions(&mut s), [Action::Close]);

    let mut s = fresh();
    s.direct_tls();
    assert!(out(&mut s).is_empty());
    assert_eq!(actions(&mut s), [Action::Close]);

    // Inside TLS, a ClientHello is only a bad length.
    let mut s = with_tls();
    s.startup_packet(Ok(StartupPacket::GssEncRequest), false, &view());
    out(&mut s);
    s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
    out(&mut s);
    actions(&mut s);
    s.tls_started(established());
    s.direct_tls();
    assert_eq!(actions(&mut s), [Action::Close]);
}

#[test]
fn a_tls_session_is_only_taken_while_the_handshake_runs() {
    let mut s = with_tls();
    s.tls_started(established());
    assert_eq!(actions(&mut s), [Action::Close]);
    assert!(s.is_closed());
}
