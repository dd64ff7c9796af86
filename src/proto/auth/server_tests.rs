//! Tests of [`super::server`]: full exchanges against both SCRAM clients, golden exchanges
//! recorded from a PostgreSQL 15.18 server, mock exchanges, calls out of order; and the
//! helpers `messages_tests` and `password_tests` share.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::common::{self, b64};
use super::secret::Secret;
use super::server::{
    AuthFailure, MAX_CLIENT_MESSAGE, ScramServer, ServerChannel, check_mechanism, mechanisms,
    mock_salt,
};
use super::{AuthAction, AuthRequest, AuthResponse, Channel, ClientAuth};
use crate::proto::conninfo::{ChannelBindingMode, Password};
use crate::types::SqlState;

/// `CREATE ROLE golden PASSWORD 'pencil'` on PostgreSQL 15.18, from `pg_authid`.
pub(super) const GOLDEN: &str = "SCRAM-SHA-256$4096:FDXm7AEsaL60D3Lnwyj5Og==$\
                      Ke+LwZKS/0YYy1lBpuYejNkjsgii+7C+f638BqsDxP4=:\
                      YW5E2xgiB2hseh74++lD1w7JIwDDKUp6wwgA/EzOXBg=";
pub(super) const MOCK: [u8; 32] = [0x42; 32];
pub(super) const NONCE: [u8; 18] = [7; 18];
/// base64 of [`NONCE`].
pub(super) const NONCE_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcH";
pub(super) const HASH: [u8; 32] = [0xab; 32];

pub(super) fn secret(password: &str) -> Secret {
    Secret::scram_from_password(password, *b"0123456789abcdef", 64)
}

pub(super) fn tls(hash: Option<&[u8]>) -> ServerChannel {
    ServerChannel::Tls {
        certificate_hash: hash.map(<[u8]>::to_vec),
    }
}

pub(super) fn server(secret: Option<&Secret>, channel: ServerChannel) -> ScramServer {
    ScramServer::new("alice", secret, &MOCK, channel, NONCE)
}

/// The whole exchange with the `postgres-protocol` client; the server's result.
pub(super) fn login(
    password: &str,
    secret: Option<&Secret>,
    channel: ServerChannel,
    mechanism: &str,
    binding: ChannelBinding,
) -> Result<ScramServer, AuthFailure> {
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let mut server = server(secret, channel);
    let server_first = server.client_first(mechanism, client.message())?;
    client.update(&server_first).unwrap();
    let server_final = server.client_final(client.message())?;
    client
        .finish(&server_final)
        .expect("the server's signature");
    Ok(server)
}

pub(super) fn plain_login(
    password: &str,
    secret: Option<&Secret>,
) -> Result<ScramServer, AuthFailure> {
    let binding = ChannelBinding::unsupported();
    login(
        password,
        secret,
        ServerChannel::Plain,
        "SCRAM-SHA-256",
        binding,
    )
}

pub(super) fn failure(sqlstate: SqlState, message: &str, detail: Option<&str>) -> AuthFailure {
    AuthFailure {
        sqlstate,
        message: message.to_owned(),
        detail: detail.map(str::to_owned),
        log_detail: None,
    }
}

pub(super) fn malformed(detail: &str) -> AuthFailure {
    failure(
        SqlState::PROTOCOL_VIOLATION,
        "malformed SCRAM message",
        Some(detail),
    )
}

pub(super) fn wrong_password(user: &str) -> (SqlState, String, Option<String>) {
    let message = format!("password authentication failed for user \"{user}\"");
    (SqlState::INVALID_PASSWORD, message, None)
}

/// What the client is sent (the log detail aside).
pub(super) fn sent(e: AuthFailure) -> (SqlState, String, Option<String>) {
    (e.sqlstate, e.message, e.detail)
}

#[test]
fn full_exchange_with_the_postgres_protocol_client() {
    let secret = secret("pencil");
    let s = plain_login("pencil", Some(&secret)).unwrap();
    assert!(s.is_authenticated() && !s.channel_bound());
    // `y`: the client could bind but the server offers no -PLUS (TLS without a hash).
    let y = ChannelBinding::unrequested();
    let s = login("pencil", Some(&secret), tls(None), "SCRAM-SHA-256", y).unwrap();
    assert!(s.is_authenticated() && !s.channel_bound());
    let plus = ChannelBinding::tls_server_end_point(HASH.to_vec());
    let s = login(
        "pencil",
        Some(&secret),
        tls(Some(&HASH)),
        "SCRAM-SHA-256-PLUS",
        plus,
    )
    .unwrap();
    assert!(s.is_authenticated() && s.channel_bound());
}

#[test]
fn full_exchange_with_the_relays_own_client() {
    let secret = secret("pencil");
    for (channel, client_channel, bound) in [
        (ServerChannel::Plain, Channel::Plain, false),
        (
            tls(Some(&HASH)),
            Channel::Tls {
                server_end_point: Some(HASH.to_vec()),
            },
            true,
        ),
    ] {
        let mut server = server(Some(&secret), channel.clone());
        let mut client = ClientAuth::new(
            "alice",
            Some(Password::new("pencil")),
            ChannelBindingMode::Prefer,
            client_channel,
        );
        let offered = mechanisms(&channel);
        let AuthAction::Send(AuthResponse::SaslInitial { mechanism, data }) =
            client.handle(AuthRequest::Sasl(offered)).unwrap()
        else {
            panic!("no SASLInitialResponse")
        };
        let server_first = server.client_first(mechanism, &data).unwrap();
        let AuthAction::Send(AuthResponse::SaslResponse(last)) = client
            .handle(AuthRequest::SaslContinue(&server_first))
            .unwrap()
        else {
            panic!("no SASLResponse")
        };
        let server_final = server.client_final(&last).unwrap();
        let wait = client.handle(AuthRequest::SaslFinal(&server_final));
        assert_eq!(wait, Ok(AuthAction::Wait));
        assert_eq!(
            client.handle(AuthRequest::Ok),
            Ok(AuthAction::Authenticated)
        );
        assert_eq!(
            (client.channel_bound(), server.channel_bound()),
            (bound, bound)
        );
    }
}

/// Messages a PostgreSQL 15.18 server exchanged with a client that sent nonce
/// `rOprNGfwEbeRWgbNEkqO`; replayed with that server's nonce, the relay answers byte for byte
/// the same.
#[test]
fn golden_exchanges_recorded_from_postgresql() {
    let golden = Secret::parse(GOLDEN).unwrap();
    let cert_hash: Vec<u8> = (0..32)
        .map(|i| {
            let hex = "09b89abd633f6d95ff36cfcad5e3d84223ecd2c4156e5df15b84369fa2ba4c0a";
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    let cases = [
        (
            ServerChannel::Plain,
            "SCRAM-SHA-256",
            "n,,n=,r=rOprNGfwEbeRWgbNEkqO",
            "MAuNPMCSV7LXTaHkJTqEgzFH",
            "c=biws,r=rOprNGfwEbeRWgbNEkqOMAuNPMCSV7LXTaHkJTqEgzFH,\
             p=Q7spLZHs614RKyP9vKMqrIatc3lKHu1QIjhtgNE/e/s=",
            "v=YWdu3mtpXdll/x12BxnTQ3cD1zOHoUQ6dEAUyqZfhtI=",
        ),
        (
            tls(Some(&cert_hash)),
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,n=,r=rOprNGfwEbeRWgbNEkqO",
            "EFnR3SuAm4LBoCNxNiVSc+Fn",
            "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsCbiavWM/bZX/Ns/K1ePYQiPs0sQVbl3xW4Q2n6K6TAo=,\
             r=rOprNGfwEbeRWgbNEkqOEFnR3SuAm4LBoCNxNiVSc+Fn,\
             p=oJ4jOiyKFwopCiU+0mXPNFkLphNVwJiQpQ1KNqPoOok=",
            "v=WXE6zLCIEzkZbYU+NEIMDWfoFu/vhC/QHvaMrNPAK+I=",
        ),
    ];
    for (channel, mechanism, first, server_nonce, last, server_final) in cases {
        let nonce: [u8; 18] = common::unb64(server_nonce.as_bytes())
            .unwrap()
            .try_into()
            .unwrap();
        let mut s = ScramServer::new("golden", Some(&golden), &MOCK, channel, nonce);
        let server_first = s.client_first(mechanism, first.as_bytes()).unwrap();
        let expected =
            format!("r=rOprNGfwEbeRWgbNEkqO{server_nonce},s=FDXm7AEsaL60D3Lnwyj5Og==,i=4096");
        assert_eq!(String::from_utf8(server_first).unwrap(), expected);
        let got = s.client_final(last.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), server_final);
    }
}

#[test]
fn wrong_password_unknown_user_and_md5_secret_fail_alike() {
    let secret = secret("pencil");
    let wrong = plain_login("crayon", Some(&secret)).unwrap_err();
    assert_eq!(sent(wrong.clone()), wrong_password("alice"));
    assert_eq!(wrong.log_detail, None);
    let unknown = plain_login("pencil", None).unwrap_err();
    assert_eq!(sent(unknown.clone()), wrong_password("alice"));
    assert_eq!(
        unknown.log_detail.as_deref(),
        Some("Role \"alice\" does not exist.")
    );
    // Even the right password: an MD5 secret cannot do SCRAM (`scram_init`).
    let md5 = Secret::md5_from_password("pencil", "alice");
    let e = plain_login("pencil", Some(&md5)).unwrap_err();
    assert_eq!(sent(e.clone()), wrong_password("alice"));
    assert_eq!(
        e.log_detail.as_deref(),
        Some("User \"alice\" does not have a valid SCRAM secret.")
    );
}

#[test]
fn mock_salt_is_postgresqls_stable_and_per_user() {
    // Recorded from PostgreSQL 15.18: `pg_controldata` showed this mock authentication
    // nonce, and the server-first-message for role "nobody" carried this salt.
    let nonce: [u8; 32] = (0..32)
        .map(|i| {
            let hex = "a57aa4dbb739662a5d80e17a9abc52e94a104341c88cb33c3de0f6b163dcb058";
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    assert_eq!(
        b64(&mock_salt("nobody", &nonce)),
        "M9eqy5QacL7Q5/a+b9viVA=="
    );
    let first_of = |user: &str, secret: Option<&Secret>| {
        let mut s = ScramServer::new(user, secret, &MOCK, ServerChannel::Plain, NONCE);
        String::from_utf8(s.client_first("SCRAM-SHA-256", b"n,,n=,r=abc").unwrap()).unwrap()
    };
    let salt = b64(&mock_salt("bob", &MOCK));
    let expected = format!("r=abc{NONCE_B64},s={salt},i=4096");
    assert_eq!(first_of("bob", None), expected);
    assert_eq!(first_of("bob", None), expected, "stable across attempts");
    let md5 = Secret::md5_from_password("x", "bob");
    assert_eq!(
        first_of("bob", Some(&md5)),
        expected,
        "an MD5 secret is mocked too"
    );
    assert_ne!(first_of("carol", None), expected, "different per user");
    assert_ne!(mock_salt("bob", &[0; 32]), mock_salt("bob", &MOCK));
}

#[test]
fn mechanisms_follow_the_channel() {
    assert_eq!(mechanisms(&ServerChannel::Plain), ["SCRAM-SHA-256"]);
    assert_eq!(mechanisms(&tls(None)), ["SCRAM-SHA-256"]);
    assert_eq!(
        mechanisms(&tls(Some(&HASH))),
        ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    );
    let invalid = failure(
        SqlState::PROTOCOL_VIOLATION,
        "client selected an invalid SASL authentication mechanism",
        None,
    );
    for (channel, mechanism) in [
        (ServerChannel::Plain, "SCRAM-SHA-256-PLUS"),
        (tls(None), "SCRAM-SHA-256-PLUS"),
        (tls(Some(&HASH)), "SCRAM-SHA-1"),
        (tls(Some(&HASH)), ""),
    ] {
        assert_eq!(check_mechanism(&channel, mechanism), Err(invalid.clone()));
        let e = server(None, channel).client_first(mechanism, b"n,,n=,r=abc");
        assert_eq!(e, Err(invalid.clone()));
    }
    assert_eq!(
        check_mechanism(&tls(Some(&HASH)), "SCRAM-SHA-256-PLUS"),
        Ok(true)
    );
    assert_eq!(
        check_mechanism(&ServerChannel::Plain, "SCRAM-SHA-256"),
        Ok(false)
    );
}

#[test]
fn y_flag_depends_on_whether_the_server_could_bind() {
    let secret = secret("pencil");
    // TLS with a certificate hash: the client was wrong to think the server cannot bind.
    let mut s = server(Some(&secret), tls(Some(&HASH)));
    let e = s.client_first("SCRAM-SHA-256", b"y,,n=,r=abc").unwrap_err();
    let detail = "The client supports SCRAM channel binding but thinks the server does not.  \
                  However, this server does support channel binding.";
    assert_eq!(
        e,
        failure(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "SCRAM channel binding negotiation error",
            Some(detail),
        )
    );
    // Plain, or TLS without a hash: `y` is accepted, and c= must then be "eSws".
    for channel in [ServerChannel::Plain, tls(None)] {
        let y = ChannelBinding::unrequested();
        assert!(login("pencil", Some(&secret), channel, "SCRAM-SHA-256", y).is_ok());
    }
}

#[test]
fn calls_out_of_order_and_oversized_messages_fail_cleanly() {
    let secret = secret("pencil");
    let state = failure(
        SqlState::INTERNAL_ERROR,
        "invalid SCRAM exchange state",
        None,
    );
    let mut s = server(Some(&secret), ServerChannel::Plain);
    assert_eq!(s.client_final(b"c=biws,r=abc,p=x"), Err(state.clone()));
    assert_eq!(
        s.client_first("SCRAM-SHA-256", b"n,,n=,r=abc"),
        Err(state.clone())
    );
    let mut s = plain_login("pencil", Some(&secret)).unwrap();
    assert_eq!(s.client_final(b"c=biws"), Err(state.clone()));
    assert!(!s.is_authenticated(), "a failed call ends the exchange");
    // A 100 KB client-first-message is refused on its size alone.
    let mut big = b"n,,n=,r=".to_vec();
    big.resize(100 * 1024, b'a');
    let mut s = server(None, ServerChannel::Plain);
    let too_long = format!("The message is longer than {MAX_CLIENT_MESSAGE} bytes.");
    assert_eq!(
        s.client_first("SCRAM-SHA-256", &big),
        Err(malformed(&too_long))
    );
    let mut s = server(None, ServerChannel::Plain);
    let fits = &big[..MAX_CLIENT_MESSAGE];
    assert!(s.client_first("SCRAM-SHA-256", fits).is_ok());
    assert_eq!(s.client_final(&big), Err(malformed(&too_long)));
    // Debug shows no salt, key or nonce.
    let debug = format!("{s:?}");
    assert!(
        debug.contains("alice") && !debug.contains(NONCE_B64),
        "{debug}"
    );
}

#[test]
fn the_fuzz_body_runs_on_real_exchanges() {
    // The body itself checks that a success carries a valid proof; the seeds in
    // fuzz/seeds/scram_server are real exchanges for its constants.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/scram_server");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        super::fuzzing::fuzz_scram_server(&std::fs::read(entry.unwrap().path()).unwrap());
        seen += 1;
    }
    assert!(seen >= 5);
    for data in [&b""[..], b"\x00", b"\x05\x00n,,n=c=biws", b"\xff\xff\xff"] {
        super::fuzzing::fuzz_scram_server(data);
    }
}
