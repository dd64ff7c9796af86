//! §2.2 and the access rules: who is let in, how, and with which refusal.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::*;
use crate::proto::access::{HbaFile, IdentFile};
use crate::proto::auth::{
    AuthAction, AuthFile, AuthRequest, Channel, ClientAuth, Secret, mock_salt,
};
use crate::proto::conninfo::{ChannelBindingMode, Password};
use crate::proto::downstream::authenticate::{PASSWORD_FRAME_LIMIT, SASL_FRAME_LIMIT};
use crate::wire::Authentication;

/// The name the rules are parsed under, as it appears in [`HbaRule::describe`].
const RULES_FILE: &str = "pg_hba.conf";
/// The relay's stable secret for mock salts.
const MOCK: [u8; 32] = [0x42; 32];
/// The `tls-server-end-point` hash of the relay's certificate.
const HASH: [u8; 32] = [0xab; 32];
/// The salt and iteration count of the SCRAM secrets made here.
const SALT: [u8; 16] = *b"0123456789abcdef";
const ITERATIONS: u32 = 64;
const PASSWORD: &str = "pencil";
/// base64 of [`NONCE`]: the server nonce every session here appends to the client's.
const NONCE_B64: &str = "CQkJCQkJCQkJCQkJCQkJCQkJ";

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The AuthenticationCleartextPassword message, which must never go out over plaintext.
const CLEARTEXT_REQUEST: &[u8] = b"R\0\0\0\x08\0\0\0\x03";

fn remote() -> Peer {
    Peer::Tcp("10.1.2.3".parse().unwrap())
}

fn rules(text: &str) -> HbaFile {
    HbaFile::parse(text, RULES_FILE, &mut |_| Err(String::new())).unwrap()
}

/// How a login by the rule on `line` of `text` is described.
fn rule_at(text: &str, line: usize) -> Option<String> {
    let hba = rules(text);
    let rule = hba.rules().iter().find(|r| r.line() == line).unwrap();
    Some(rule.describe())
}

fn scram_secret(password: &str) -> Secret {
    Secret::scram_from_password(password, SALT, ITERATIONS)
}

/// `hba` as the rules, `users` as the auth file, no CA file.
fn policy(hba: &str, users: &[(&str, Secret)]) -> AccessPolicy {
    let text: String = users.iter().map(|(u, s)| format!("{u} {s}\n")).collect();
    AccessPolicy {
        hba: Some(rules(hba)),
        users: AuthFile::parse(&text, Path::new("users.txt")).unwrap(),
        mock_nonce: MOCK,
        ..AccessPolicy::default()
    }
}

/// alice has a SCRAM secret for [`PASSWORD`], bob an MD5 one.
fn alice_and_bob(hba: &str) -> AccessPolicy {
    policy(
        hba,
        &[
            ("alice", scram_secret(PASSWORD)),
            ("bob", Secret::md5_from_password(PASSWORD, "bob")),
        ],
    )
}

/// The same policy, with a CA file to verify client certificates.
fn with_ca(policy: AccessPolicy) -> AccessPolicy {
    AccessPolicy {
        client_ca: true,
        ..policy
    }
}

/// TLS with the certificate hash (so -PLUS is offered), no client certificate.
fn tls() -> Option<TlsSession> {
    Some(TlsSession {
        certificate_hash: Some(HASH.to_vec()),
        client_certificate: None,
    })
}

/// TLS with a verified client certificate whose common name is `cn`.
fn tls_cert(cn: Option<&str>) -> Option<TlsSession> {
    Some(TlsSession {
        certificate_hash: Some(HASH.to_vec()),
        client_certificate: Some(cn.map(str::to_owned)),
    })
}

/// A session from `peer`, over `tls` if given, that sent its StartupMessage as `user`.
fn connect(
    policy: &AccessPolicy,
    peer: Peer,
    tls: Option<TlsSession>,
    user: &str,
) -> DownstreamSession {
    connect_with_nonce(policy, peer, tls, user, NONCE)
}

fn connect_with_nonce(
    policy: &AccessPolicy,
    peer: Peer,
    tls: Option<TlsSession>,
    user: &str,
    nonce: [u8; 18],
) -> DownstreamSession {
    let config = SessionConfig {
        tls: tls.is_some(),
        ..config()
    };
    let mut s = DownstreamSession::new(config, peer, Arc::new(policy.clone()), nonce);
    if let Some(tls) = tls {
        s.startup_packet(Ok(StartupPacket::SslRequest), false, &view());
        assert_eq!(out(&mut s), b"S");
        assert_eq!(actions(&mut s), [Action::StartTls { direct: false }]);
        s.tls_started(tls);
    }
    let params = [
        ("user", user),
        ("database", "replication"),
        ("replication", "true"),
        ("application_name", "d1"),
    ];
    s.startup_packet(Ok(startup(&params)), false, &view());
    s
}

fn send(s: &mut DownstreamSession, frame: Frame) {
    s.frame(Ok(frame), at(0), &view());
}

/// A SASLInitialResponse: the mechanism, its NUL, `len`, then `data`.
fn initial(mechanism: &str, len: i32, data: &[u8]) -> Frame {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(data);
    raw(b'p', &body)
}

/// A well-formed SASLInitialResponse carrying `data`.
fn sasl_first(mechanism: &str, data: &[u8]) -> Frame {
    initial(mechanism, i32::try_from(data.len()).unwrap(), data)
}

/// A PasswordMessage: `password` and its NUL.
fn password_message(password: &[u8]) -> Frame {
    let mut body = password.to_vec();
    body.push(0);
    raw(b'p', &body)
}

fn auth(request: Authentication) -> BackendMessage {
    BackendMessage::Authentication(request)
}

/// AuthenticationSASL listing `mechanisms`.
fn offer(mechanisms: &[&str]) -> Vec<u8> {
    let mechanisms = mechanisms.iter().map(|m| (*m).to_owned()).collect();
    wire(&[auth(Authentication::Sasl { mechanisms })])
}

fn fatal_fields(code: SqlState, text: &str) -> ErrorFields {
    ErrorFields::fatal(code, text)
}

fn malformed(detail: &str) -> ErrorFields {
    ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, "malformed SCRAM message").with_detail(detail)
}

fn wrong_password(user: &str) -> ErrorFields {
    let text = format!("password authentication failed for user \"{user}\"");
    ErrorFields::fatal(SqlState::INVALID_PASSWORD, text)
}

fn no_entry(host: &str, user: &str, encryption: &str) -> ErrorFields {
    let text = format!(
        "no pg_hba.conf entry for replication connection from host \"{host}\", user \"{user}\", {encryption}"
    );
    ErrorFields::fatal(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, text)
}

fn rejected(host: &str, user: &str, encryption: &str) -> ErrorFields {
    let text = format!(
        "pg_hba.conf rejects replication connection for host \"{host}\", user \"{user}\", {encryption}"
    );
    ErrorFields::fatal(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, text)
}

fn refusal(e: ErrorFields) -> Vec<u8> {
    wire(&[BackendMessage::ErrorResponse(e)])
}

/// The messages in `bytes`, which must hold whole messages only.
fn messages(bytes: &[u8]) -> Vec<BackendMessage> {
    let mut buf = BytesMut::from(bytes);
    let mut all = Vec::new();
    while let Some(frame) = split_frame(&mut buf, usize::MAX).unwrap() {
        all.push(BackendMessage::parse(frame).unwrap());
    }
    assert!(buf.is_empty(), "a partial message: {buf:?}");
    all
}

/// `got` is `expected`, compared as messages first for a readable difference.
#[track_caller]
fn assert_sent(got: &[u8], expected: &[u8]) {
    assert_eq!(messages(got), messages(expected));
    assert_eq!(got, expected);
}

/// The session sent `e` and nothing else, and closes.
#[track_caller]
fn refused(s: &mut DownstreamSession, e: ErrorFields) {
    assert_sent(&out(s), &refusal(e));
    closes(s);
}

/// The session closes after what it sent.
#[track_caller]
fn closes(s: &mut DownstreamSession) {
    assert_eq!(actions(s), [Action::Close]);
    assert!(s.is_closed());
    assert_eq!(s.expects(), Expect::Nothing);
    assert_eq!(s.login(), None);
}

/// The login is authenticated as `how` and waits for its place; given one, the greeting goes
/// out (AuthenticationOk first) and command mode begins.
#[track_caller]
fn admitted(s: &mut DownstreamSession, user: &str, how: &Authenticated) {
    assert!(!s.has_output(), "sent before the place was given");
    assert_eq!(actions(s), [Action::ClaimSender]);
    assert_eq!(s.expects(), Expect::Nothing);
    s.claimed(
        Some(SenderClaim {
            pid: PID,
            cancel_key: CANCEL_KEY,
        }),
        &view(),
    );
    assert_sent(&out(s), &wire(&greeting(user, "d1")));
    assert!(actions(s).is_empty());
    let login = s.login().unwrap();
    assert_eq!((login.user.as_str(), &login.how), (user, how));
    assert_eq!(s.expects(), Expect::Frame(COMMAND_FRAME_LIMIT));
}

fn how(method: &'static str, rule: Option<String>, identity: Option<&str>) -> Authenticated {
    Authenticated {
        method,
        rule,
        identity: identity.map(str::to_owned),
    }
}

/// The data of the one SASLContinue the session sent; it waits for a SASL message.
#[track_caller]
fn sasl_continue(s: &mut DownstreamSession) -> Vec<u8> {
    let got = out(s);
    let all = messages(&got);
    let [BackendMessage::Authentication(Authentication::SaslContinue(data))] = all.as_slice()
    else {
        panic!("expected one SASLContinue, got {all:?}");
    };
    assert_eq!(
        got,
        wire(&[auth(Authentication::SaslContinue(data.clone()))])
    );
    assert!(actions(s).is_empty());
    assert_eq!(s.expects(), Expect::Frame(SASL_FRAME_LIMIT));
    data.to_vec()
}

/// The nonce of a client-first-message.
fn client_nonce(first: &[u8]) -> String {
    let text = std::str::from_utf8(first).unwrap();
    let (_, nonce) = text.split_once(",r=").unwrap();
    nonce.split(',').next().unwrap().to_owned()
}

/// The server-first-message PostgreSQL sends for this client-first-message, salt and count.
fn server_first(first: &[u8], salt: &[u8], iterations: u32) -> String {
    format!(
        "r={}{NONCE_B64},s={},i={iterations}",
        client_nonce(first),
        STANDARD.encode(salt)
    )
}

/// Sends the client's first message under `mechanism`; the server-first-message must carry
/// `salt` and `iterations`, and goes to the client.
#[track_caller]
fn scram_first(
    s: &mut DownstreamSession,
    client: &mut ScramSha256,
    mechanism: &str,
    salt: &[u8],
    iterations: u32,
) {
    let first = client.message().to_vec();
    send(s, sasl_first(mechanism, &first));
    let data = sasl_continue(s);
    assert_eq!(
        String::from_utf8(data.clone()).unwrap(),
        server_first(&first, salt, iterations)
    );
    client.update(&data).unwrap();
}

/// Sends the client's final message: the session answers one SASLFinal whose signature the
/// client verifies, and nothing else (AuthenticationOk waits for the place).
#[track_caller]
fn scram_final_ok(s: &mut DownstreamSession, client: &mut ScramSha256) {
    send(s, raw(b'p', client.message()));
    let got = out(s);
    let all = messages(&got);
    let [BackendMessage::Authentication(Authentication::SaslFinal(data))] = all.as_slice() else {
        panic!("expected one SASLFinal, got {all:?}");
    };
    client.finish(data).expect("the server's signature");
    assert_eq!(got, wire(&[auth(Authentication::SaslFinal(data.clone()))]));
}

/// A whole SCRAM exchange that succeeds with the `postgres-protocol` client.
#[track_caller]
fn scram_login(s: &mut DownstreamSession, mechanism: &str, binding: ChannelBinding) {
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), binding);
    scram_first(s, &mut client, mechanism, &SALT, ITERATIONS);
    scram_final_ok(s, &mut client);
}

/// A minimal client-first-message with a fixed nonce.
const CLIENT_FIRST: &[u8] = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";

/// The Authentication codes in `bytes`.
fn request_codes(bytes: &[u8]) -> Vec<i32> {
    messages(bytes)
        .into_iter()
        .filter_map(|m| match m {
            BackendMessage::Authentication(a) => Some(match a {
                Authentication::Ok => 0,
                Authentication::CleartextPassword => 3,
                Authentication::Md5Password { .. } => 5,
                Authentication::Sasl { .. } => 10,
                Authentication::SaslContinue(_) => 11,
                Authentication::SaslFinal(_) => 12,
                Authentication::Unknown(code) => code,
            }),
            _ => None,
        })
        .collect()
}

// No rules.

#[test]
fn without_rules_loopback_and_the_unix_socket_are_trusted() {
    let trust = how("trust", None, None);
    for peer in [
        Peer::Tcp(loopback()),
        Peer::Tcp("127.9.8.7".parse().unwrap()),
        Peer::Tcp("::1".parse().unwrap()),
        Peer::Local,
    ] {
        let mut s = connect(&AccessPolicy::default(), peer, None, "postgres");
        // No authentication request at all: straight to the place, then the greeting.
        admitted(&mut s, "postgres", &trust);
    }
    // Over TLS as well.
    let mut s = connect(
        &AccessPolicy::default(),
        Peer::Tcp(loopback()),
        tls(),
        "postgres",
    );
    admitted(&mut s, "postgres", &trust);
}

#[test]
fn without_rules_everyone_else_is_refused_naming_the_encryption() {
    let nobody = AccessPolicy::default();
    let mut s = connect(&nobody, remote(), None, "postgres");
    refused(&mut s, no_entry("10.1.2.3", "postgres", "no encryption"));
    let mut s = connect(&nobody, remote(), tls(), "postgres");
    refused(&mut s, no_entry("10.1.2.3", "postgres", "SSL encryption"));
    let v6 = Peer::Tcp("2001:db8::7".parse().unwrap());
    let mut s = connect(&nobody, v6, None, "alice");
    refused(&mut s, no_entry("2001:db8::7", "alice", "no encryption"));
    // A certificate does not help either.
    let mut s = connect(
        &with_ca(nobody),
        remote(),
        tls_cert(Some("postgres")),
        "postgres",
    );
    refused(&mut s, no_entry("10.1.2.3", "postgres", "SSL encryption"));
}

// Rules.

const LAYERED: &str = "\
# who may replicate
hostssl   replication alice     10.0.0.0/8   scram-sha-256
host      replication bob,carol 10.1.0.0/16  trust
host      replication all       10.1.2.0/24  reject
hostnossl replication all       10.0.0.0/8   trust
local     replication all                    trust
";

#[test]
fn the_first_matching_rule_decides() {
    let p = alice_and_bob(LAYERED);
    // alice over TLS: line 2, SCRAM (with -PLUS, as TLS has a certificate hash).
    let mut s = connect(&p, remote(), tls(), "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM_PLUS, SCRAM]));
    assert!(actions(&mut s).is_empty());
    // alice in plaintext: line 2 needs TLS, line 3 does not list her, line 4 rejects.
    let mut s = connect(&p, remote(), None, "alice");
    refused(&mut s, rejected("10.1.2.3", "alice", "no encryption"));
    // bob and carol: line 3 trusts them, before line 4 could reject them.
    for user in ["bob", "carol"] {
        let mut s = connect(&p, remote(), None, user);
        admitted(&mut s, user, &how("trust", rule_at(LAYERED, 3), None));
    }
    // The rule is described as PostgreSQL 16 logs it.
    assert_eq!(
        rule_at(LAYERED, 3).unwrap(),
        "file \"pg_hba.conf\" line 3: \"host      replication bob,carol 10.1.0.0/16  trust\""
    );
    // dave from 10.1.2.3 reaches line 4.
    let mut s = connect(&p, remote(), tls(), "dave");
    refused(&mut s, rejected("10.1.2.3", "dave", "SSL encryption"));
    // The Unix socket only matches `local`.
    let mut s = connect(&p, Peer::Local, None, "dave");
    admitted(&mut s, "dave", &how("trust", rule_at(LAYERED, 6), None));
}

#[test]
fn hostssl_and_hostnossl_follow_the_encryption() {
    let p = alice_and_bob(LAYERED);
    let elsewhere = Peer::Tcp("10.200.0.1".parse().unwrap());
    // Plaintext from 10.200.0.1: only `hostnossl` matches.
    let mut s = connect(&p, elsewhere, None, "carol");
    admitted(&mut s, "carol", &how("trust", rule_at(LAYERED, 5), None));
    // Over TLS `hostnossl` no longer matches, and nothing else does for carol.
    let mut s = connect(&p, elsewhere, tls(), "carol");
    refused(&mut s, no_entry("10.200.0.1", "carol", "SSL encryption"));
    // alice: `hostssl` over TLS only.
    let mut s = connect(&p, elsewhere, tls(), "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM_PLUS, SCRAM]));
    let mut s = connect(&p, elsewhere, None, "alice");
    admitted(&mut s, "alice", &how("trust", rule_at(LAYERED, 5), None));
}

#[test]
fn user_lists_and_cidr_masks_select_rules() {
    let text = "\
host replication alice,\"Bob\" 192.168.1.0/24 trust
host replication all 192.168.1.128 255.255.255.128 reject
host replication all ::1/128 trust
";
    let p = alice_and_bob(text);
    let near = Peer::Tcp("192.168.1.77".parse().unwrap());
    let far = Peer::Tcp("192.168.2.77".parse().unwrap());
    let high = Peer::Tcp("192.168.1.200".parse().unwrap());
    let mut s = connect(&p, near, None, "alice");
    admitted(&mut s, "alice", &how("trust", rule_at(text, 1), None));
    // User names are matched exactly: "Bob" is not bob.
    let mut s = connect(&p, near, None, "Bob");
    admitted(&mut s, "Bob", &how("trust", rule_at(text, 1), None));
    let mut s = connect(&p, near, None, "bob");
    refused(&mut s, no_entry("192.168.1.77", "bob", "no encryption"));
    // Outside the /24.
    let mut s = connect(&p, far, None, "alice");
    refused(&mut s, no_entry("192.168.2.77", "alice", "no encryption"));
    // An address with a separate mask.
    let mut s = connect(&p, high, None, "bob");
    refused(&mut s, rejected("192.168.1.200", "bob", "no encryption"));
    // IPv4 loopback is not in ::1/128, and rules replace the loopback default.
    let mut s = connect(&p, Peer::Tcp(loopback()), None, "alice");
    refused(&mut s, no_entry("127.0.0.1", "alice", "no encryption"));
    let mut s = connect(&p, Peer::Tcp("::1".parse().unwrap()), None, "alice");
    admitted(&mut s, "alice", &how("trust", rule_at(text, 3), None));
    // No `local` rule: the Unix socket has no entry.
    let mut s = connect(&p, Peer::Local, None, "alice");
    refused(&mut s, no_entry("[local]", "alice", "no encryption"));
}

#[test]
fn reject_rules_refuse_naming_host_user_and_encryption() {
    let text = "\
hostssl replication all 10.1.2.3/32 reject
host    replication all 10.1.2.3/32 reject
local   replication all             reject
host    replication all 0.0.0.0/0   trust
";
    let p = alice_and_bob(text);
    let mut s = connect(&p, remote(), tls(), "alice");
    refused(&mut s, rejected("10.1.2.3", "alice", "SSL encryption"));
    let mut s = connect(&p, remote(), None, "bob");
    refused(&mut s, rejected("10.1.2.3", "bob", "no encryption"));
    let mut s = connect(&p, Peer::Local, None, "alice");
    refused(&mut s, rejected("[local]", "alice", "no encryption"));
    // A later rule is never reached from a rejected address, but is from another.
    let mut s = connect(&p, Peer::Tcp("10.1.2.4".parse().unwrap()), None, "bob");
    admitted(&mut s, "bob", &how("trust", rule_at(text, 4), None));
}

#[test]
fn database_rules_never_match_replication_and_sql_connections_stay_refused() {
    let text = "host all all 0.0.0.0/0 trust\nhost app,sameuser all 0.0.0.0/0 trust\n";
    let p = alice_and_bob(text);
    // `all` does not cover physical replication (`check_db`).
    let mut s = connect(&p, remote(), None, "alice");
    refused(&mut s, no_entry("10.1.2.3", "alice", "no encryption"));
    // A SQL connection is refused before the rules, whatever they say.
    let mut s = DownstreamSession::new(config(), remote(), Arc::new(p), NONCE);
    let sql = [("user", "alice"), ("database", "app")];
    s.startup_packet(Ok(startup(&sql)), false, &view());
    let text = "no pg_hba.conf entry for host \"10.1.2.3\", user \"alice\", database \"app\", no encryption";
    refused(
        &mut s,
        fatal_fields(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, text),
    );
}

// scram-sha-256.

const SCRAM_RULES: &str = "\
host  replication all 10.0.0.0/8 scram-sha-256
local replication all            scram-sha-256
";

#[test]
fn scram_login_with_a_real_client() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "alice");
    // R 10, the one mechanism, and the list's terminating NUL.
    let got = out(&mut s);
    assert_eq!(got, b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
    assert_eq!(got, offer(&[SCRAM]));
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.expects(), Expect::Frame(SASL_FRAME_LIMIT));
    scram_login(&mut s, SCRAM, ChannelBinding::unsupported());
    // SASLFinal went out; AuthenticationOk only once the place is given.
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
    );
    // The same over the Unix socket.
    let mut s = connect(&p, Peer::Local, None, "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM]));
    scram_login(&mut s, SCRAM, ChannelBinding::unsupported());
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(SCRAM_RULES, 2), None),
    );
}

#[test]
fn scram_plus_over_tls_with_the_certificate_hash() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), tls(), "alice");
    // -PLUS first, only over TLS with a certificate hash.
    assert_eq!(
        out(&mut s),
        b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    );
    let binding = ChannelBinding::tls_server_end_point(HASH.to_vec());
    scram_login(&mut s, SCRAM_PLUS, binding);
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
    );
}

#[test]
fn over_tls_a_client_may_still_choose_scram_without_binding() {
    let p = alice_and_bob(SCRAM_RULES);
    // `n`: the client does not do channel binding at all.
    let mut s = connect(&p, remote(), tls(), "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM_PLUS, SCRAM]));
    scram_login(&mut s, SCRAM, ChannelBinding::unsupported());
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
    );
    // TLS without a certificate hash: no -PLUS, and `y` (the client could bind, the server
    // cannot) is accepted.
    let no_hash = Some(TlsSession {
        certificate_hash: None,
        client_certificate: None,
    });
    let mut s = connect(&p, remote(), no_hash.clone(), "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM]));
    scram_login(&mut s, SCRAM, ChannelBinding::unrequested());
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
    );
    // -PLUS is then not a mechanism the client may pick.
    let mut s = connect(&p, remote(), no_hash, "alice");
    out(&mut s);
    let first = b"p=tls-server-end-point,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    send(&mut s, sasl_first(SCRAM_PLUS, first));
    refused(
        &mut s,
        fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ),
    );
}

#[test]
fn channel_binding_is_enforced() {
    let p = alice_and_bob(SCRAM_RULES);
    // H5: binding data of another certificate.
    let mut s = connect(&p, remote(), tls(), "alice");
    out(&mut s);
    let binding = ChannelBinding::tls_server_end_point(vec![0xcd; 32]);
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), binding);
    scram_first(&mut s, &mut client, SCRAM_PLUS, &SALT, ITERATIONS);
    send(&mut s, raw(b'p', client.message()));
    refused(
        &mut s,
        fatal_fields(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "SCRAM channel binding check failed",
        ),
    );
    // H5: `y,,` while -PLUS is offered over TLS: a downgrade.
    let mut s = connect(&p, remote(), tls(), "alice");
    out(&mut s);
    let client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unrequested());
    assert!(client.message().starts_with(b"y,,"));
    send(&mut s, sasl_first(SCRAM, client.message()));
    refused(
        &mut s,
        ErrorFields::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "SCRAM channel binding negotiation error",
        )
        .with_detail(
            "The client supports SCRAM channel binding but thinks the server does not.  \
             However, this server does support channel binding.",
        ),
    );
    // H5: `p=` on plaintext, under plain SCRAM-SHA-256.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    let first = b"p=tls-server-end-point,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    send(&mut s, sasl_first(SCRAM, first));
    refused(
        &mut s,
        malformed(
            "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
             message includes channel binding data.",
        ),
    );
    // -PLUS chosen, then no binding in the message.
    let mut s = connect(&p, remote(), tls(), "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM_PLUS, CLIENT_FIRST));
    refused(
        &mut s,
        malformed(
            "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include \
             channel binding data.",
        ),
    );
}

#[test]
fn a_wrong_scram_password_fails_with_28p01() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    let mut client = ScramSha256::new(b"pencil2", ChannelBinding::unsupported());
    // The real salt and count: nothing tells the client its password is wrong until the end.
    scram_first(&mut s, &mut client, SCRAM, &SALT, ITERATIONS);
    send(&mut s, raw(b'p', client.message()));
    refused(&mut s, wrong_password("alice"));
}

#[test]
fn an_empty_scram_password_fails_with_28p01() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    let mut client = ScramSha256::new(b"", ChannelBinding::unsupported());
    scram_first(&mut s, &mut client, SCRAM, &SALT, ITERATIONS);
    send(&mut s, raw(b'p', client.message()));
    refused(&mut s, wrong_password("alice"));
}

#[test]
fn an_unknown_user_gets_a_mock_exchange_that_fails_alike() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "mallory");
    // The same offer as for a real user.
    assert_eq!(out(&mut s), offer(&[SCRAM]));
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    // A salt derived from the relay's secret, and PostgreSQL's default count.
    let salt = mock_salt("mallory", &MOCK);
    scram_first(&mut s, &mut client, SCRAM, &salt, 4096);
    send(&mut s, raw(b'p', client.message()));
    refused(&mut s, wrong_password("mallory"));
}

#[test]
fn the_mock_salt_is_stable_across_sessions_and_differs_per_user() {
    let p = alice_and_bob(SCRAM_RULES);
    let salt_of = |policy: &AccessPolicy, user: &str, n: u8| {
        let nonce = [n; 18];
        let mut s = connect_with_nonce(policy, remote(), None, user, nonce);
        out(&mut s);
        send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
        let first = String::from_utf8(sasl_continue(&mut s)).unwrap();
        // The server nonce is the session's own.
        let server_nonce = STANDARD.encode(nonce);
        let prefix = format!("r=fyko+d2lbbFgONRv9qkxdawL{server_nonce},s=");
        first.strip_prefix(&prefix).unwrap().to_owned()
    };
    // H4: five attempts, five server nonces, one salt and count.
    let salts: Vec<String> = (1..=5).map(|n| salt_of(&p, "mallory", n)).collect();
    let expected = format!("{},i=4096", STANDARD.encode(mock_salt("mallory", &MOCK)));
    assert_eq!(salts, vec![expected.clone(); 5]);
    // Another unknown user has another salt, stable too.
    let trudy = salt_of(&p, "trudy", 1);
    assert_ne!(trudy, expected);
    assert_eq!(trudy, salt_of(&p, "trudy", 2));
    // A real user's salt is the secret's.
    assert_eq!(
        salt_of(&p, "alice", 3),
        format!("{},i={ITERATIONS}", STANDARD.encode(SALT))
    );
    // The salt comes from the relay's secret, not from the session.
    let other_relay = AccessPolicy {
        mock_nonce: [0x43; 32],
        ..p.clone()
    };
    assert_ne!(salt_of(&other_relay, "mallory", 1), expected);
}

#[test]
fn an_md5_secret_under_a_scram_rule_fails_the_mock_exchange() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "bob");
    // SCRAM, never MD5, even though bob's secret is an MD5 hash.
    assert_eq!(out(&mut s), offer(&[SCRAM]));
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let salt = mock_salt("bob", &MOCK);
    scram_first(&mut s, &mut client, SCRAM, &salt, 4096);
    send(&mut s, raw(b'p', client.message()));
    refused(&mut s, wrong_password("bob"));
}

/// `CREATE ROLE golden PASSWORD 'pencil'` on PostgreSQL 15.18, from `pg_authid`.
const GOLDEN: &str = "SCRAM-SHA-256$4096:FDXm7AEsaL60D3Lnwyj5Og==$\
                      Ke+LwZKS/0YYy1lBpuYejNkjsgii+7C+f638BqsDxP4=:\
                      YW5E2xgiB2hseh74++lD1w7JIwDDKUp6wwgA/EzOXBg=";

/// Two exchanges recorded from a PostgreSQL 15.18 server, replayed with its server nonce: the
/// session answers byte for byte what PostgreSQL sent.
#[test]
fn golden_exchanges_recorded_from_postgresql_replay_byte_for_byte() {
    let p = policy(SCRAM_RULES, &[("golden", Secret::parse(GOLDEN).unwrap())]);
    let cert_hash: Vec<u8> = (0..32)
        .map(|i| {
            let hex = "09b89abd633f6d95ff36cfcad5e3d84223ecd2c4156e5df15b84369fa2ba4c0a";
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    let cases = [
        (
            None,
            SCRAM,
            "n,,n=,r=rOprNGfwEbeRWgbNEkqO",
            "MAuNPMCSV7LXTaHkJTqEgzFH",
            "c=biws,r=rOprNGfwEbeRWgbNEkqOMAuNPMCSV7LXTaHkJTqEgzFH,\
             p=Q7spLZHs614RKyP9vKMqrIatc3lKHu1QIjhtgNE/e/s=",
            "v=YWdu3mtpXdll/x12BxnTQ3cD1zOHoUQ6dEAUyqZfhtI=",
        ),
        (
            Some(TlsSession {
                certificate_hash: Some(cert_hash),
                client_certificate: None,
            }),
            SCRAM_PLUS,
            "p=tls-server-end-point,,n=,r=rOprNGfwEbeRWgbNEkqO",
            "EFnR3SuAm4LBoCNxNiVSc+Fn",
            "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsCbiavWM/bZX/Ns/K1ePYQiPs0sQVbl3xW4Q2n6K6TAo=,\
             r=rOprNGfwEbeRWgbNEkqOEFnR3SuAm4LBoCNxNiVSc+Fn,\
             p=oJ4jOiyKFwopCiU+0mXPNFkLphNVwJiQpQ1KNqPoOok=",
            "v=WXE6zLCIEzkZbYU+NEIMDWfoFu/vhC/QHvaMrNPAK+I=",
        ),
    ];
    for (channel, mechanism, first, server_nonce, last, server_final) in cases {
        let nonce: [u8; 18] = STANDARD.decode(server_nonce).unwrap().try_into().unwrap();
        let plus = channel.is_some();
        let mut s = connect_with_nonce(&p, remote(), channel, "golden", nonce);
        let mechanisms: &[&str] = if plus { &[SCRAM_PLUS, SCRAM] } else { &[SCRAM] };
        assert_eq!(out(&mut s), offer(mechanisms));
        send(&mut s, sasl_first(mechanism, first.as_bytes()));
        let server_first =
            format!("r=rOprNGfwEbeRWgbNEkqO{server_nonce},s=FDXm7AEsaL60D3Lnwyj5Og==,i=4096");
        assert_sent(
            &out(&mut s),
            &wire(&[auth(Authentication::SaslContinue(server_first.into()))]),
        );
        send(&mut s, raw(b'p', last.as_bytes()));
        assert_sent(
            &out(&mut s),
            &wire(&[auth(Authentication::SaslFinal(server_final.into()))]),
        );
        admitted(
            &mut s,
            "golden",
            &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
        );
    }
}

/// Answers the session's authentication requests with `client` until the session stops
/// asking.
fn answer_with(s: &mut DownstreamSession, client: &mut ClientAuth) {
    loop {
        let mut got = BytesMut::from(out(s).as_slice());
        let mut answered = false;
        while let Some(request) = split_frame(&mut got, usize::MAX).unwrap() {
            assert_eq!(request.tag, b'R', "{request:?}");
            let request = AuthRequest::parse(&request.body).unwrap();
            match client.handle(request).unwrap() {
                AuthAction::Send(response) => {
                    let mut buf = BytesMut::new();
                    response.encode(&mut buf).unwrap();
                    send(s, split_frame(&mut buf, usize::MAX).unwrap().unwrap());
                    assert!(buf.is_empty());
                    answered = true;
                }
                AuthAction::Wait => {}
                AuthAction::Authenticated => panic!("authenticated before the greeting"),
            }
        }
        if !answered {
            return;
        }
    }
}

#[test]
fn the_relays_own_client_logs_in_by_every_method() {
    let p = alice_and_bob(SCRAM_RULES);
    let md5 = alice_and_bob(MD5_RULES);
    let password = alice_and_bob(PASSWORD_RULES);
    let plain = || (None, Channel::Plain);
    let encrypted = || {
        let server_end_point = Some(HASH.to_vec());
        (tls(), Channel::Tls { server_end_point })
    };
    let cases = [
        (
            &p,
            "alice",
            plain(),
            ChannelBindingMode::Prefer,
            false,
            "scram-sha-256",
        ),
        (
            &p,
            "alice",
            encrypted(),
            ChannelBindingMode::Prefer,
            true,
            "scram-sha-256",
        ),
        (
            &p,
            "alice",
            encrypted(),
            ChannelBindingMode::Require,
            true,
            "scram-sha-256",
        ),
        (
            &p,
            "alice",
            encrypted(),
            ChannelBindingMode::Disable,
            false,
            "scram-sha-256",
        ),
        (
            &md5,
            "alice",
            plain(),
            ChannelBindingMode::Prefer,
            false,
            "md5",
        ),
        (
            &md5,
            "bob",
            plain(),
            ChannelBindingMode::Prefer,
            false,
            "md5",
        ),
        (
            &password,
            "bob",
            encrypted(),
            ChannelBindingMode::Prefer,
            false,
            "password",
        ),
    ];
    for (policy, user, (session_tls, channel), mode, bound, method) in cases {
        let mut s = connect(policy, remote(), session_tls, user);
        let mut client = ClientAuth::new(user, Some(Password::new(PASSWORD)), mode, channel);
        answer_with(&mut s, &mut client);
        assert_eq!(actions(&mut s), [Action::ClaimSender], "{method} {user}");
        s.claimed(
            Some(SenderClaim {
                pid: PID,
                cancel_key: CANCEL_KEY,
            }),
            &view(),
        );
        let mut got = BytesMut::from(out(&mut s).as_slice());
        assert_eq!(got, wire(&greeting(user, "d1")));
        let ok = split_frame(&mut got, usize::MAX).unwrap().unwrap();
        let ok = AuthRequest::parse(&ok.body).unwrap();
        assert_eq!(client.handle(ok), Ok(AuthAction::Authenticated));
        assert_eq!(client.channel_bound(), bound, "{method} {user}");
        assert_eq!(s.login().unwrap().how.method, method);
    }
}

// md5.

const MD5_RULES: &str = "host replication all 10.0.0.0/8 md5\n";

/// A session nonce whose first four bytes are the MD5 salt.
const COUNTING: [u8; 18] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
];

#[test]
fn md5_rule_challenges_an_md5_secret_with_the_nonce_as_salt() {
    let p = alice_and_bob(MD5_RULES);
    let mut s = connect_with_nonce(&p, remote(), None, "bob", COUNTING);
    let got = out(&mut s);
    assert_eq!(got, b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04");
    assert_eq!(
        got,
        wire(&[auth(Authentication::Md5Password { salt: [1, 2, 3, 4] })])
    );
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.expects(), Expect::Frame(PASSWORD_FRAME_LIMIT));
    let response = md5_hash(b"bob", PASSWORD.as_bytes(), [1, 2, 3, 4]);
    send(&mut s, password_message(response.as_bytes()));
    admitted(&mut s, "bob", &how("md5", rule_at(MD5_RULES, 1), None));
}

#[test]
fn md5_rule_refuses_a_wrong_or_empty_response() {
    let p = alice_and_bob(MD5_RULES);
    let salt = [1, 2, 3, 4];
    let attempts: [(Vec<u8>, ErrorFields); 4] = [
        (
            md5_hash(b"bob", b"pencil2", salt).into_bytes(),
            wrong_password("bob"),
        ),
        // The salt of another session.
        (
            md5_hash(b"bob", PASSWORD.as_bytes(), [9, 9, 9, 9]).into_bytes(),
            wrong_password("bob"),
        ),
        // The stored hash itself, or the cleartext password, is no answer.
        (
            Secret::md5_from_password(PASSWORD, "bob")
                .to_string()
                .into_bytes(),
            wrong_password("bob"),
        ),
        (
            Vec::new(),
            fatal_fields(
                SqlState::INVALID_PASSWORD,
                "empty password returned by client",
            ),
        ),
    ];
    for (response, error) in attempts {
        let mut s = connect_with_nonce(&p, remote(), None, "bob", COUNTING);
        out(&mut s);
        send(&mut s, password_message(&response));
        refused(&mut s, error);
    }
    let mut s = connect_with_nonce(&p, remote(), None, "bob", COUNTING);
    out(&mut s);
    send(&mut s, password_message(PASSWORD.as_bytes()));
    refused(&mut s, wrong_password("bob"));
}

#[test]
fn md5_rule_runs_scram_for_scram_secrets_and_unknown_users() {
    let p = alice_and_bob(MD5_RULES);
    // A SCRAM secret cannot answer an MD5 challenge: SCRAM runs, and succeeds.
    let mut s = connect(&p, remote(), None, "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM]));
    assert_eq!(s.expects(), Expect::Frame(SASL_FRAME_LIMIT));
    scram_login(&mut s, SCRAM, ChannelBinding::unsupported());
    admitted(&mut s, "alice", &how("md5", rule_at(MD5_RULES, 1), None));
    // Over TLS, with -PLUS.
    let mut s = connect(&p, remote(), tls(), "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM_PLUS, SCRAM]));
    let binding = ChannelBinding::tls_server_end_point(HASH.to_vec());
    scram_login(&mut s, SCRAM_PLUS, binding);
    admitted(&mut s, "alice", &how("md5", rule_at(MD5_RULES, 1), None));
    // An unknown user blends in with the SCRAM users: a mock exchange.
    let mut s = connect(&p, remote(), None, "mallory");
    assert_eq!(out(&mut s), offer(&[SCRAM]));
    send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
    let salt = mock_salt("mallory", &MOCK);
    assert_eq!(
        String::from_utf8(sasl_continue(&mut s)).unwrap(),
        server_first(CLIENT_FIRST, &salt, 4096)
    );
}

// password.

const PASSWORD_RULES: &str = "\
host  replication all 10.0.0.0/8 password
local replication all            password
";

#[test]
fn password_rule_without_tls_is_refused_without_asking() {
    let p = alice_and_bob(PASSWORD_RULES);
    let detail = "walrelay accepts password authentication only over SSL encryption.";
    for (peer, host) in [(remote(), "10.1.2.3"), (Peer::Local, "[local]")] {
        let mut s = connect(&p, peer, None, "alice");
        let got = out(&mut s);
        assert!(
            !got.windows(CLEARTEXT_REQUEST.len())
                .any(|w| w == CLEARTEXT_REQUEST)
        );
        assert_sent(
            &got,
            &refusal(rejected(host, "alice", "no encryption").with_detail(detail)),
        );
        closes(&mut s);
    }
}

#[test]
fn password_rule_over_tls_takes_the_password() {
    let p = alice_and_bob(PASSWORD_RULES);
    // Either kind of secret checks a cleartext password.
    for user in ["alice", "bob"] {
        let mut s = connect(&p, remote(), tls(), user);
        assert_eq!(out(&mut s), CLEARTEXT_REQUEST);
        assert_eq!(
            CLEARTEXT_REQUEST,
            wire(&[auth(Authentication::CleartextPassword)])
        );
        assert!(actions(&mut s).is_empty());
        assert_eq!(s.expects(), Expect::Frame(PASSWORD_FRAME_LIMIT));
        send(&mut s, password_message(PASSWORD.as_bytes()));
        admitted(
            &mut s,
            user,
            &how("password", rule_at(PASSWORD_RULES, 1), None),
        );
    }
    let stored_hash = Secret::md5_from_password(PASSWORD, "bob").to_string();
    let attempts = [
        ("alice", "pencil2".to_owned(), wrong_password("alice")),
        ("bob", "Pencil".to_owned(), wrong_password("bob")),
        // The stored hash is not the password.
        ("bob", stored_hash, wrong_password("bob")),
        ("mallory", PASSWORD.to_owned(), wrong_password("mallory")),
        (
            "alice",
            String::new(),
            fatal_fields(
                SqlState::INVALID_PASSWORD,
                "empty password returned by client",
            ),
        ),
    ];
    for (user, password, error) in attempts {
        let mut s = connect(&p, remote(), tls(), user);
        assert_eq!(out(&mut s), CLEARTEXT_REQUEST);
        send(&mut s, password_message(password.as_bytes()));
        refused(&mut s, error);
    }
}

#[test]
fn password_packets_must_hold_one_terminated_string() {
    let size = fatal_fields(SqlState::PROTOCOL_VIOLATION, "invalid password packet size");
    for rules in [PASSWORD_RULES, MD5_RULES] {
        let p = alice_and_bob(rules);
        for body in [&b"pen\0cil\0"[..], b"pencil", b"", b"pencil\0\0", b"\0\0"] {
            let mut s = connect(&p, remote(), tls(), "bob");
            let codes = request_codes(&out(&mut s));
            assert!(codes == [3] || codes == [5], "{codes:?}");
            send(&mut s, raw(b'p', body));
            refused(&mut s, size.clone());
        }
    }
}

// cert and clientcert.

const CERT_RULES: &str = "hostssl replication all 10.0.0.0/8 cert\n";

#[test]
fn client_certificates_need_a_ca_file() {
    let config_error = fatal_fields(
        SqlState::CONFIG_FILE_ERROR,
        "client certificates can only be checked if a root certificate store is available",
    );
    for rules in [
        CERT_RULES,
        "hostssl replication all 10.0.0.0/8 scram-sha-256 clientcert=verify-ca\n",
        "hostssl replication all 10.0.0.0/8 trust clientcert=verify-full\n",
    ] {
        let p = alice_and_bob(rules);
        let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
        refused(&mut s, config_error.clone());
    }
}

#[test]
fn cert_requires_a_client_certificate() {
    let p = with_ca(alice_and_bob(CERT_RULES));
    let mut s = connect(&p, remote(), tls(), "alice");
    refused(
        &mut s,
        fatal_fields(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection requires a valid client certificate",
        ),
    );
    // Without TLS a `hostssl` rule does not even match.
    let mut s = connect(&p, remote(), None, "alice");
    refused(&mut s, no_entry("10.1.2.3", "alice", "no encryption"));
}

#[test]
fn cert_maps_the_common_name_to_the_user() {
    let p = with_ca(alice_and_bob(CERT_RULES));
    // No password is asked: no authentication request before the place.
    let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
    admitted(
        &mut s,
        "alice",
        &how("cert", rule_at(CERT_RULES, 1), Some("alice")),
    );
    // Users without a secret may use certificates too.
    let mut s = connect(&p, remote(), tls_cert(Some("replicator")), "replicator");
    admitted(
        &mut s,
        "replicator",
        &how("cert", rule_at(CERT_RULES, 1), Some("replicator")),
    );
    let failed = fatal_fields(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "certificate authentication failed for user \"alice\"",
    );
    for cn in [Some("bob"), Some("Alice"), Some(""), None] {
        let mut s = connect(&p, remote(), tls_cert(cn), "alice");
        refused(&mut s, failed.clone());
    }
}

#[test]
fn cert_map_option_uses_the_ident_file() {
    let text = "hostssl replication all 10.0.0.0/8 cert map=certs\n";
    let ident = "\
# MAPNAME SYSTEM-USERNAME   PG-USERNAME
certs     alice.example.com alice
certs     ops.example.com   alice
certs     ops.example.com   bob
other     mallory           alice
";
    let p = AccessPolicy {
        ident: IdentFile::parse(ident, "pg_ident.conf", &mut |_| Err(String::new())).unwrap(),
        ..with_ca(alice_and_bob(text))
    };
    for (cn, user) in [
        ("alice.example.com", "alice"),
        ("ops.example.com", "alice"),
        ("ops.example.com", "bob"),
    ] {
        let mut s = connect(&p, remote(), tls_cert(Some(cn)), user);
        admitted(&mut s, user, &how("cert", rule_at(text, 1), Some(cn)));
    }
    // With a map, only the map counts: not the bare name, not another map's lines.
    for (cn, user) in [
        ("alice", "alice"),
        ("alice.example.com", "bob"),
        ("mallory", "alice"),
    ] {
        let mut s = connect(&p, remote(), tls_cert(Some(cn)), user);
        let text = format!("certificate authentication failed for user \"{user}\"");
        refused(
            &mut s,
            fatal_fields(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, &text),
        );
    }
}

#[test]
fn clientcert_verify_full_on_scram_checks_both() {
    let text = "hostssl replication all 10.0.0.0/8 scram-sha-256 clientcert=verify-full\n";
    let p = with_ca(alice_and_bob(text));
    // No certificate: refused before any SCRAM.
    let mut s = connect(&p, remote(), tls(), "alice");
    refused(
        &mut s,
        fatal_fields(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection requires a valid client certificate",
        ),
    );
    // Password and certificate right.
    let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
    assert_eq!(out(&mut s), offer(&[SCRAM_PLUS, SCRAM]));
    scram_login(
        &mut s,
        SCRAM_PLUS,
        ChannelBinding::tls_server_end_point(HASH.to_vec()),
    );
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(text, 1), Some("alice")),
    );
    // The right password, another name in the certificate: SASLFinal went out (as
    // PostgreSQL checks the certificate after the method), then the method's failure.
    let mut s = connect(&p, remote(), tls_cert(Some("bob")), "alice");
    out(&mut s);
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    scram_first(&mut s, &mut client, SCRAM, &SALT, ITERATIONS);
    send(&mut s, raw(b'p', client.message()));
    let got = out(&mut s);
    let all = messages(&got);
    let [
        BackendMessage::Authentication(Authentication::SaslFinal(data)),
        BackendMessage::ErrorResponse(e),
    ] = all.as_slice()
    else {
        panic!("expected SASLFinal and an error, got {all:?}");
    };
    client.finish(data).unwrap();
    assert_eq!(e, &wrong_password("alice"));
    assert_eq!(
        got,
        wire(&[
            auth(Authentication::SaslFinal(data.clone())),
            BackendMessage::ErrorResponse(wrong_password("alice")),
        ])
    );
    closes(&mut s);
    // The wrong password fails first, whatever the certificate.
    let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
    out(&mut s);
    let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
    scram_first(&mut s, &mut client, SCRAM, &SALT, ITERATIONS);
    send(&mut s, raw(b'p', client.message()));
    refused(&mut s, wrong_password("alice"));
}

#[test]
fn clientcert_verify_ca_needs_a_certificate_but_not_its_name() {
    let text = "hostssl replication all 10.0.0.0/8 scram-sha-256 clientcert=verify-ca\n";
    let p = with_ca(alice_and_bob(text));
    let mut s = connect(&p, remote(), tls(), "alice");
    refused(
        &mut s,
        fatal_fields(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection requires a valid client certificate",
        ),
    );
    for cn in [Some("somebody else"), None] {
        let mut s = connect(&p, remote(), tls_cert(cn), "alice");
        assert_eq!(out(&mut s), offer(&[SCRAM_PLUS, SCRAM]));
        scram_login(&mut s, SCRAM, ChannelBinding::unsupported());
        admitted(&mut s, "alice", &how("scram-sha-256", rule_at(text, 1), cn));
    }
}

#[test]
fn trust_with_clientcert_verify_full_checks_the_name() {
    let text = "hostssl replication all 10.0.0.0/8 trust clientcert=verify-full\n";
    let p = with_ca(alice_and_bob(text));
    let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
    admitted(
        &mut s,
        "alice",
        &how("trust", rule_at(text, 1), Some("alice")),
    );
    let failed = fatal_fields(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "\"trust\" authentication failed for user \"alice\"",
    );
    for cn in [Some("bob"), None] {
        let mut s = connect(&p, remote(), tls_cert(cn), "alice");
        refused(&mut s, failed.clone());
    }
}

#[test]
fn the_certificate_is_checked_before_the_method() {
    // As in `ClientAuthentication`: the clientcert checks come before even `reject`.
    let text = "hostssl replication all 10.0.0.0/8 reject clientcert=verify-ca\n";
    let p = alice_and_bob(text);
    let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
    refused(
        &mut s,
        fatal_fields(
            SqlState::CONFIG_FILE_ERROR,
            "client certificates can only be checked if a root certificate store is available",
        ),
    );
    let p = with_ca(p);
    let mut s = connect(&p, remote(), tls(), "alice");
    refused(
        &mut s,
        fatal_fields(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection requires a valid client certificate",
        ),
    );
    let mut s = connect(&p, remote(), tls_cert(Some("alice")), "alice");
    refused(&mut s, rejected("10.1.2.3", "alice", "SSL encryption"));
}

// H1: other messages where an authentication message is expected.

#[test]
fn h1_a_query_instead_of_the_sasl_response() {
    let p = alice_and_bob(SCRAM_RULES);
    let expected = fatal_fields(
        SqlState::PROTOCOL_VIOLATION,
        "expected SASL response, got message type 81",
    );
    // Pipelined right after the StartupMessage.
    let mut s = connect(&p, remote(), None, "alice");
    let mut got = out(&mut s);
    send(&mut s, query("IDENTIFY_SYSTEM"));
    got.extend(out(&mut s));
    assert_sent(
        &got,
        &wire(&[
            auth(Authentication::Sasl {
                mechanisms: vec![SCRAM.into()],
            }),
            BackendMessage::ErrorResponse(expected.clone()),
        ]),
    );
    // Nothing of a login: no AuthenticationOk, ParameterStatus, BackendKeyData.
    assert!(messages(&got).iter().all(|m| !matches!(
        m,
        BackendMessage::Authentication(Authentication::Ok)
            | BackendMessage::ParameterStatus { .. }
            | BackendMessage::BackendKeyData { .. }
            | BackendMessage::ReadyForQuery(_)
    )));
    closes(&mut s);
    // What follows is never read.
    send(&mut s, query("START_REPLICATION 0/3000000"));
    assert!(out(&mut s).is_empty());
    assert!(actions(&mut s).is_empty());

    // Between the server-first and the client-final.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
    sasl_continue(&mut s);
    send(&mut s, query("IDENTIFY_SYSTEM"));
    refused(&mut s, expected);

    // Any type but `p`: a Terminate is 88.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, raw(b'X', b""));
    refused(
        &mut s,
        fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "expected SASL response, got message type 88",
        ),
    );
}

#[test]
fn h1_a_query_instead_of_the_password() {
    let expected = fatal_fields(
        SqlState::PROTOCOL_VIOLATION,
        "expected password response, got message type 81",
    );
    for (rules, channel, code) in [(MD5_RULES, None, 5), (PASSWORD_RULES, tls(), 3)] {
        let p = alice_and_bob(rules);
        let mut s = connect(&p, remote(), channel, "bob");
        assert_eq!(request_codes(&out(&mut s)), [code]);
        send(&mut s, query("IDENTIFY_SYSTEM"));
        refused(&mut s, expected.clone());
    }
}

// §2.2: malformed SASL messages.

#[test]
fn invalid_sasl_mechanisms_are_refused() {
    let p = alice_and_bob(SCRAM_RULES);
    let invalid = fatal_fields(
        SqlState::PROTOCOL_VIOLATION,
        "client selected an invalid SASL authentication mechanism",
    );
    let cases: [(&str, Option<TlsSession>); 6] = [
        ("SCRAM-SHA-1", None),
        ("", None),
        ("scram-sha-256", None),
        ("SCRAM-SHA-256 ", tls()),
        (SCRAM_PLUS, None),
        ("SCRAM-SHA-256-PLUS-PLUS", tls()),
    ];
    for (mechanism, channel) in cases {
        let mut s = connect(&p, remote(), channel, "alice");
        out(&mut s);
        send(&mut s, sasl_first(mechanism, CLIENT_FIRST));
        refused(&mut s, invalid.clone());
    }
    // The mechanism is checked before the length is read.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, initial("SCRAM-SHA-1", i32::MAX, b""));
    refused(&mut s, invalid.clone());
    // An unknown user is refused alike.
    let mut s = connect(&p, remote(), None, "mallory");
    out(&mut s);
    send(&mut s, sasl_first("PLAIN", b"\0mallory\0secret"));
    refused(&mut s, invalid);
}

#[test]
fn an_initial_response_of_length_minus_one_gets_an_empty_challenge() {
    let p = alice_and_bob(SCRAM_RULES);
    for (channel, mechanism, binding) in [
        (None, SCRAM, ChannelBinding::unsupported()),
        (
            tls(),
            SCRAM_PLUS,
            ChannelBinding::tls_server_end_point(HASH.to_vec()),
        ),
    ] {
        let mut s = connect(&p, remote(), channel, "alice");
        out(&mut s);
        send(&mut s, initial(mechanism, -1, b""));
        // An empty SASLContinue: `R`, length 8, code 11.
        let got = out(&mut s);
        assert_eq!(got, b"R\0\0\0\x08\0\0\0\x0b");
        assert!(actions(&mut s).is_empty());
        assert_eq!(s.expects(), Expect::Frame(SASL_FRAME_LIMIT));
        // The client-first-message follows in a SASLResponse, under the chosen mechanism.
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), binding);
        let first = client.message().to_vec();
        send(&mut s, raw(b'p', &first));
        let data = sasl_continue(&mut s);
        assert_eq!(
            String::from_utf8(data.clone()).unwrap(),
            server_first(&first, &SALT, ITERATIONS)
        );
        client.update(&data).unwrap();
        scram_final_ok(&mut s, &mut client);
        admitted(
            &mut s,
            "alice",
            &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
        );
    }
    // After the empty challenge, an empty message is no client-first-message.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, initial(SCRAM, -1, b""));
    out(&mut s);
    send(&mut s, raw(b'p', b""));
    refused(&mut s, malformed("The message is empty."));
    // Trailing bytes after a length of -1.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, initial(SCRAM, -1, CLIENT_FIRST));
    refused(
        &mut s,
        fatal_fields(SqlState::PROTOCOL_VIOLATION, "invalid message format"),
    );
}

#[test]
fn initial_response_lengths_that_do_not_fit() {
    let p = alice_and_bob(SCRAM_RULES);
    let insufficient = fatal_fields(
        SqlState::PROTOCOL_VIOLATION,
        "insufficient data left in message",
    );
    let full = i32::try_from(CLIENT_FIRST.len()).unwrap();
    for len in [full + 1, i32::MAX, -2, i32::MIN] {
        let mut s = connect(&p, remote(), None, "alice");
        out(&mut s);
        send(&mut s, initial(SCRAM, len, CLIENT_FIRST));
        refused(&mut s, insufficient.clone());
    }
    // The length itself cut short, or missing.
    for body in [&b"SCRAM-SHA-256\0\0\0"[..], b"SCRAM-SHA-256\0"] {
        let mut s = connect(&p, remote(), None, "alice");
        out(&mut s);
        send(&mut s, raw(b'p', body));
        refused(&mut s, insufficient.clone());
    }
    // A length shorter than the data: trailing bytes.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, initial(SCRAM, full - 1, CLIENT_FIRST));
    refused(
        &mut s,
        fatal_fields(SqlState::PROTOCOL_VIOLATION, "invalid message format"),
    );
    // A length of 0: an empty client-first-message.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, initial(SCRAM, 0, b""));
    refused(&mut s, malformed("The message is empty."));
}

#[test]
fn a_mechanism_without_its_nul_is_an_invalid_string() {
    let p = alice_and_bob(SCRAM_RULES);
    let invalid = fatal_fields(SqlState::PROTOCOL_VIOLATION, "invalid string in message");
    // No NUL at all; an empty message; and a client-final-message sent first (a
    // SASLResponse before the SASLInitialResponse).
    for body in [
        &b"SCRAM-SHA-256"[..],
        b"",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    ] {
        let mut s = connect(&p, remote(), None, "alice");
        out(&mut s);
        send(&mut s, raw(b'p', body));
        refused(&mut s, invalid.clone());
    }
}

#[test]
fn a_frame_too_long_during_sasl_fails_the_login() {
    let p = alice_and_bob(SCRAM_RULES);
    let too_long = || {
        Err(WireError::FrameLength {
            tag: b'p',
            len: 1025,
            max: SASL_FRAME_LIMIT,
        })
    };
    // As the SASLInitialResponse, for a real and an unknown user.
    for user in ["alice", "mallory"] {
        let mut s = connect(&p, remote(), None, user);
        out(&mut s);
        s.frame(too_long(), at(0), &view());
        refused(&mut s, wrong_password(user));
    }
    // As the client-final-message.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
    sasl_continue(&mut s);
    s.frame(too_long(), at(0), &view());
    refused(&mut s, wrong_password("alice"));
    // A length below 4 is no better.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    let short = WireError::FrameLength {
        tag: b'p',
        len: 3,
        max: SASL_FRAME_LIMIT,
    };
    s.frame(Err(short), at(0), &view());
    refused(&mut s, wrong_password("alice"));
}

#[test]
fn a_frame_too_long_for_a_password_closes_silently() {
    // `recv_password_packet` returns no password, and `auth_failed` exits on STATUS_EOF.
    for (rules, channel) in [(MD5_RULES, None), (PASSWORD_RULES, tls())] {
        let p = alice_and_bob(rules);
        let mut s = connect(&p, remote(), channel, "bob");
        out(&mut s);
        let too_long = WireError::FrameLength {
            tag: b'p',
            len: 65_536,
            max: PASSWORD_FRAME_LIMIT,
        };
        s.frame(Err(too_long), at(0), &view());
        assert!(out(&mut s).is_empty());
        closes(&mut s);
    }
}

/// PostgreSQL reads the type byte first (`CheckSASLAuth`, `recv_password_packet`: `pq_getbyte`
/// before `pq_getmessage`), so the length of a message that is not `p` is never looked at:
/// the refusal names its type.
#[test]
fn a_sasl_frame_too_long_of_another_type_is_refused_by_its_type() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    let query = WireError::FrameLength {
        tag: b'Q',
        len: 5000,
        max: SASL_FRAME_LIMIT,
    };
    s.frame(Err(query), at(0), &view());
    refused(
        &mut s,
        fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "expected SASL response, got message type 81",
        ),
    );
}

/// As above, for the password methods.
#[test]
fn a_password_frame_too_long_of_another_type_is_refused_by_its_type() {
    let p = alice_and_bob(MD5_RULES);
    let mut s = connect(&p, remote(), None, "bob");
    out(&mut s);
    let query = WireError::FrameLength {
        tag: b'Q',
        len: 70_000,
        max: PASSWORD_FRAME_LIMIT,
    };
    s.frame(Err(query), at(0), &view());
    refused(
        &mut s,
        fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "expected password response, got message type 81",
        ),
    );
}

#[test]
fn the_client_final_sent_twice() {
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    scram_first(&mut s, &mut client, SCRAM, &SALT, ITERATIONS);
    let last = client.message().to_vec();
    scram_final_ok(&mut s, &mut client);
    admitted(
        &mut s,
        "alice",
        &how("scram-sha-256", rule_at(SCRAM_RULES, 1), None),
    );
    // After the login, a `p` is no message of command mode (`PostgresMain`).
    send(&mut s, raw(b'p', &last));
    assert_sent(
        &out(&mut s),
        &refusal(fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "invalid frontend message type 112",
        )),
    );
    assert_eq!(actions(&mut s), [Action::Close]);
    assert!(s.is_closed());
}

#[test]
fn a_cleartext_password_where_scram_is_expected() {
    let p = alice_and_bob(SCRAM_RULES);
    // As the SASLInitialResponse: the password reads as the mechanism's name.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, password_message(PASSWORD.as_bytes()));
    refused(
        &mut s,
        fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ),
    );
    // As the client-final-message, with its NUL and without.
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
    sasl_continue(&mut s);
    send(&mut s, password_message(PASSWORD.as_bytes()));
    refused(
        &mut s,
        malformed("Message length does not match input length."),
    );
    let mut s = connect(&p, remote(), None, "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
    sasl_continue(&mut s);
    send(&mut s, raw(b'p', PASSWORD.as_bytes()));
    refused(
        &mut s,
        malformed("Expected attribute \"c\" but found \"'p'\"."),
    );
    // An MD5 hash, too.
    let mut s = connect(&p, remote(), None, "bob");
    out(&mut s);
    let hash = md5_hash(b"bob", PASSWORD.as_bytes(), [9, 9, 9, 9]);
    send(&mut s, password_message(hash.as_bytes()));
    refused(
        &mut s,
        fatal_fields(
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ),
    );
}

// Shutdown, frame limits, and what is never asked.

#[test]
fn shutdown_during_authentication_closes_without_a_message() {
    let scram = alice_and_bob(SCRAM_RULES);
    let md5 = alice_and_bob(MD5_RULES);
    let password = alice_and_bob(PASSWORD_RULES);
    let cases: [(&AccessPolicy, Option<TlsSession>, &str); 3] = [
        (&scram, None, "alice"),
        (&md5, None, "bob"),
        (&password, tls(), "bob"),
    ];
    for (p, channel, user) in cases {
        let mut s = connect(p, remote(), channel, user);
        out(&mut s);
        s.shutdown(at(0));
        assert!(out(&mut s).is_empty());
        closes(&mut s);
    }
    // Halfway through SCRAM.
    let mut s = connect(&scram, remote(), None, "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM, CLIENT_FIRST));
    sasl_continue(&mut s);
    s.shutdown(at(0));
    assert!(out(&mut s).is_empty());
    closes(&mut s);
    // Authenticated, waiting for a place.
    let mut s = connect(&scram, remote(), None, "alice");
    out(&mut s);
    scram_login(&mut s, SCRAM, ChannelBinding::unsupported());
    assert_eq!(actions(&mut s), [Action::ClaimSender]);
    s.shutdown(at(0));
    assert!(out(&mut s).is_empty());
    closes(&mut s);
}

#[test]
fn frame_limits_follow_the_method() {
    // `PG_MAX_SASL_MESSAGE_LENGTH` and `PG_MAX_AUTH_TOKEN_LENGTH`.
    assert_eq!(SASL_FRAME_LIMIT, 1024);
    assert_eq!(PASSWORD_FRAME_LIMIT, 65_535);
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, "alice");
    assert_eq!(s.expects(), Expect::Frame(1024));
    send(&mut s, initial(SCRAM, -1, b""));
    assert_eq!(s.expects(), Expect::Frame(1024));
    send(&mut s, raw(b'p', CLIENT_FIRST));
    assert_eq!(s.expects(), Expect::Frame(1024));
    let p = alice_and_bob(MD5_RULES);
    let s = connect(&p, remote(), None, "bob");
    assert_eq!(s.expects(), Expect::Frame(65_535));
    let p = alice_and_bob(PASSWORD_RULES);
    let s = connect(&p, remote(), tls(), "bob");
    assert_eq!(s.expects(), Expect::Frame(65_535));
    // Trusted: nothing is read until the place is given.
    let s = connect(&AccessPolicy::default(), Peer::Local, None, "bob");
    assert_eq!(s.expects(), Expect::Nothing);
}

#[test]
fn h6_no_cleartext_or_md5_request_unless_configured() {
    let all_rules = [
        "host replication all 0.0.0.0/0 trust\n",
        "host replication all 0.0.0.0/0 reject\n",
        SCRAM_RULES,
        "hostssl replication all 10.0.0.0/8 scram-sha-256 clientcert=verify-full\n",
        MD5_RULES,
        PASSWORD_RULES,
        "hostssl replication all 10.0.0.0/8 cert\n",
        "hostnossl replication all 10.0.0.0/8 password\n",
    ];
    for rules in all_rules {
        let p = with_ca(alice_and_bob(rules));
        for user in ["alice", "bob", "mallory"] {
            for channel in [None, tls(), tls_cert(Some(user))] {
                let encrypted = channel.is_some();
                let mut s = connect(&p, remote(), channel, user);
                let got = out(&mut s);
                let codes = request_codes(&got);
                // Cleartext only when a `password` rule matched over TLS.
                let cleartext = rules == PASSWORD_RULES && encrypted;
                assert_eq!(codes.contains(&3), cleartext, "{rules} {user} {codes:?}");
                if !encrypted {
                    assert!(
                        !got.windows(CLEARTEXT_REQUEST.len())
                            .any(|w| w == CLEARTEXT_REQUEST)
                    );
                }
                // MD5 only for an MD5 secret under an `md5` rule.
                let md5 = rules == MD5_RULES && user == "bob";
                assert_eq!(codes.contains(&5), md5, "{rules} {user} {codes:?}");
            }
        }
    }
}

#[test]
fn refusals_are_fatal_errors_with_postgres_fields() {
    // The bytes of one refusal, spelled out: severity (localized and not), SQLSTATE, message.
    let text = "\
host replication all 10.0.0.0/8 reject
";
    let p = alice_and_bob(text);
    let mut s = connect(&p, remote(), None, "alice");
    let message = "pg_hba.conf rejects replication connection for host \"10.1.2.3\", user \"alice\", no encryption";
    let mut body = b"SFATAL\0VFATAL\0C28000\0M".to_vec();
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(b"\0\0");
    let mut expected = vec![b'E'];
    expected.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    expected.extend_from_slice(&body);
    assert_eq!(out(&mut s), expected);
    closes(&mut s);
    // And one with a detail.
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), tls(), "alice");
    out(&mut s);
    send(&mut s, sasl_first(SCRAM, b"y,,n=,r=abc"));
    let got = out(&mut s);
    let detail = b"DThe client supports SCRAM channel binding but thinks the server does not.  \
                   However, this server does support channel binding.\0";
    assert!(got.starts_with(b"E"));
    assert!(
        got.windows(b"SFATAL\0VFATAL\0C28000\0MSCRAM channel binding negotiation error\0".len())
            .any(|w| w == b"SFATAL\0VFATAL\0C28000\0MSCRAM channel binding negotiation error\0")
    );
    assert!(got.ends_with(&[&detail[..], b"\0"].concat()));
}

#[test]
fn user_names_are_reported_as_sent() {
    // `ClientAuthentication` (uaImplicitReject, uaReject) and `auth_failed` format
    // `port->user_name` unchanged.
    let user = "josé";
    let p = with_ca(alice_and_bob(
        "hostssl replication all 10.0.0.0/8 trust clientcert=verify-full\n\
         host replication all 10.1.0.0/16 reject\n",
    ));
    let mut s = connect(&p, remote(), tls_cert(Some("jose")), user);
    refused(
        &mut s,
        fatal_fields(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "\"trust\" authentication failed for user \"josé\"",
        ),
    );
    let mut s = connect(&p, remote(), None, user);
    refused(&mut s, rejected("10.1.2.3", user, "no encryption"));
    let mut s = connect(&p, Peer::Tcp("192.0.2.1".parse().unwrap()), None, user);
    refused(&mut s, no_entry("192.0.2.1", user, "no encryption"));
    // The password failure already does.
    let p = alice_and_bob(SCRAM_RULES);
    let mut s = connect(&p, remote(), None, user);
    out(&mut s);
    s.frame(
        Err(WireError::FrameLength {
            tag: b'p',
            len: 2000,
            max: SASL_FRAME_LIMIT,
        }),
        at(0),
        &view(),
    );
    refused(&mut s, wrong_password(user));
}
