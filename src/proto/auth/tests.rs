//! Tests of the parent module.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use super::*;
use sha2::{Digest, Sha256};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            let c = B64[(n >> (18 - 6 * i) & 63) as usize];
            out.push(if i <= chunk.len() { c as char } else { '=' });
        }
    }
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize();
    outer.into()
}

/// A SCRAM server as PostgreSQL's `auth-scram.c` runs it, for one exchange.
struct FakeServer {
    password: &'static str,
    iterations: u32,
    cbind: Vec<u8>,
    bare: String,
    gs2: String,
    first: String,
}

impl FakeServer {
    fn new(password: &'static str, cbind: &[u8]) -> Self {
        let (bare, gs2, first) = Default::default();
        FakeServer {
            password,
            iterations: 64,
            cbind: cbind.to_vec(),
            bare,
            gs2,
            first,
        }
    }

    fn salted(&self) -> [u8; 32] {
        let mut u = hmac(self.password.as_bytes(), b"salt-salt-salt!\x00\x00\x00\x01");
        let mut out = u;
        for _ in 1..self.iterations {
            u = hmac(self.password.as_bytes(), &u);
            out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
        }
        out
    }

    fn server_first(&mut self, client_first: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(client_first).unwrap();
        let (flag, rest) = text.split_once(',').unwrap();
        let (authzid, bare) = rest.split_once(',').unwrap();
        self.gs2 = format!("{flag},{authzid},");
        self.bare = bare.to_owned();
        let nonce = bare.strip_prefix("n=,r=").unwrap();
        self.first = format!(
            "r={nonce}SRVNONCE,s={},i={}",
            b64(b"salt-salt-salt!"),
            self.iterations
        );
        self.first.clone().into_bytes()
    }

    fn server_final(&self, client_final: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(client_final).unwrap();
        let (without_proof, proof) = text.rsplit_once(",p=").unwrap();
        let binding = [self.gs2.as_bytes(), &self.cbind].concat();
        if !without_proof.starts_with(&format!("c={},r=", b64(&binding))) {
            return b"e=channel-bindings-dont-match".to_vec();
        }
        let auth = format!("{},{},{without_proof}", self.bare, self.first);
        let salted = self.salted();
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored, auth.as_bytes());
        let expected: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        if proof != b64(&expected) {
            return b"e=invalid-proof".to_vec();
        }
        format!(
            "v={}",
            b64(&hmac(&hmac(&salted, b"Server Key"), auth.as_bytes()))
        )
        .into_bytes()
    }
}

fn tls(hash: &[u8]) -> Channel {
    Channel::Tls {
        server_end_point: Some(hash.to_vec()),
    }
}

fn client(password: Option<&str>, cb: ChannelBindingMode, channel: Channel) -> ClientAuth {
    ClientAuth::new("repl", password.map(Password::new), cb, channel)
}

fn sent(action: AuthAction) -> AuthResponse {
    match action {
        AuthAction::Send(response) => response,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Runs SASL up to the client-first-message; returns (mechanism, client-first).
fn scram_start(
    auth: &mut ClientAuth,
    offered: &[&str],
) -> Result<(&'static str, Vec<u8>), AuthError> {
    match sent(auth.handle(AuthRequest::Sasl(offered.to_vec()))?) {
        AuthResponse::SaslInitial { mechanism, data } => Ok((mechanism, data)),
        other => panic!("{other:?}"),
    }
}

/// A full SCRAM exchange against the fake server; returns the gs2 header used.
fn scram_login(
    auth: &mut ClientAuth,
    offered: &[&str],
    server: &mut FakeServer,
) -> Result<String, AuthError> {
    let (_, first) = scram_start(auth, offered)?;
    let reply = server.server_first(&first);
    let AuthResponse::SaslResponse(last) = sent(auth.handle(AuthRequest::SaslContinue(&reply))?)
    else {
        panic!("expected SASLResponse")
    };
    assert_eq!(
        auth.handle(AuthRequest::SaslFinal(&server.server_final(&last)))?,
        AuthAction::Wait
    );
    assert_eq!(auth.handle(AuthRequest::Ok)?, AuthAction::Authenticated);
    Ok(server.gs2.clone())
}

const BOTH: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
const PLAIN: &[&str] = &[SCRAM_SHA_256];
use ChannelBindingMode::{Disable, Prefer, Require};

#[test]
fn parse_requests() {
    let body = |code: i32, data: &[u8]| [&code.to_be_bytes()[..], data].concat();
    assert_eq!(AuthRequest::parse(&body(0, b"")), Ok(AuthRequest::Ok));
    assert_eq!(
        AuthRequest::parse(&body(3, b"")),
        Ok(AuthRequest::CleartextPassword)
    );
    let md5 = body(5, &[1, 2, 3, 4]);
    assert_eq!(
        AuthRequest::parse(&md5),
        Ok(AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
    );
    let list = body(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    assert_eq!(
        AuthRequest::parse(&list),
        Ok(AuthRequest::Sasl(BOTH.to_vec()))
    );
    assert_eq!(
        AuthRequest::parse(&body(10, b"\0")),
        Ok(AuthRequest::Sasl(vec![]))
    );
    assert_eq!(
        AuthRequest::parse(&body(11, b"r=x")),
        Ok(AuthRequest::SaslContinue(b"r=x"))
    );
    assert_eq!(
        AuthRequest::parse(&body(12, b"v=x")),
        Ok(AuthRequest::SaslFinal(b"v=x"))
    );
    for code in [2, 6, 7, 8, 9, 99, -1] {
        assert_eq!(
            AuthRequest::parse(&body(code, b"")),
            Err(AuthError::UnsupportedMethod(code))
        );
    }
    assert_eq!(
        AuthError::UnsupportedMethod(99).to_string(),
        "authentication method 99 not supported"
    );
    for bad in [
        &b"\0\0"[..],
        &body(5, &[1, 2, 3]),
        &body(10, b"A\0"),
        &body(10, b""),
        &body(10, b"A\0\0x"),
        &body(10, b"\xff\0\0"),
    ] {
        assert!(
            matches!(AuthRequest::parse(bad), Err(AuthError::Malformed(_))),
            "{bad:?}"
        );
    }
    let long = body(10, &[b'A'; 5000]);
    assert_eq!(
        AuthRequest::parse(&long),
        Err(AuthError::ScramTooLong(5000))
    );
}

#[test]
fn trust() {
    let mut auth = client(None, Prefer, Channel::Plain);
    assert_eq!(auth.handle(AuthRequest::Ok), Ok(AuthAction::Authenticated));
    assert!(!auth.channel_bound());
    let unexpected = auth.handle(AuthRequest::Ok).unwrap_err();
    assert_eq!(
        unexpected.to_string(),
        "unexpected AuthenticationOk while already authenticated"
    );
    let mut auth = client(Some("pw"), Require, tls(b"h"));
    assert_eq!(
        auth.handle(AuthRequest::Ok),
        Err(AuthError::ChannelBindingNotUsed)
    );
}

#[test]
fn cleartext_only_over_tls() {
    let mut auth = client(Some("hunter2"), Prefer, tls(b"h"));
    let response = sent(auth.handle(AuthRequest::CleartextPassword).unwrap());
    assert_eq!(response, AuthResponse::Password(b"hunter2".to_vec()));
    assert_eq!(format!("{response:?}"), "Password(<7 bytes>)");
    let mut buf = BytesMut::new();
    response.encode(&mut buf).unwrap();
    assert_eq!(&buf[..], b"p\0\0\0\x0chunter2\0");
    assert_eq!(auth.handle(AuthRequest::Ok), Ok(AuthAction::Authenticated));
    let mut auth = client(Some("hunter2"), Prefer, Channel::Plain);
    assert_eq!(
        auth.handle(AuthRequest::CleartextPassword),
        Err(AuthError::CleartextWithoutTls)
    );
    let mut auth = client(Some("hunter2"), Require, tls(b"h"));
    assert_eq!(
        auth.handle(AuthRequest::CleartextPassword),
        Err(AuthError::ChannelBindingUnsupportedRequest)
    );
    let nul = AuthResponse::Password(b"a\0b".to_vec());
    assert!(matches!(nul.encode(&mut buf), Err(AuthError::Encode(_))));
}

#[test]
fn md5() {
    let mut auth = ClientAuth::new(
        "md5_user",
        Some(Password::new("password")),
        Prefer,
        Channel::Plain,
    );
    let salt = [0x2a, 0x3d, 0x8f, 0xe0];
    let response = sent(auth.handle(AuthRequest::Md5Password { salt }).unwrap());
    assert_eq!(
        response,
        AuthResponse::Password(b"md562af4dd09bbb41884907a838a3233294".to_vec())
    );
    assert_eq!(auth.handle(AuthRequest::Ok), Ok(AuthAction::Authenticated));
    let mut auth = client(Some("pw"), Require, tls(b"h"));
    assert_eq!(
        auth.handle(AuthRequest::Md5Password { salt }),
        Err(AuthError::ChannelBindingUnsupportedRequest)
    );
}

#[test]
fn missing_password() {
    for password in [None, Some("")] {
        let requests = [
            AuthRequest::CleartextPassword,
            AuthRequest::Md5Password { salt: [0; 4] },
            AuthRequest::Sasl(PLAIN.to_vec()),
        ];
        for request in requests {
            let mut auth = client(password, Prefer, tls(b"h"));
            let e = auth.handle(request).unwrap_err();
            assert_eq!(e.to_string(), "fe_sendauth: no password supplied");
        }
    }
}

#[test]
fn scram_over_plain_tcp() {
    let mut auth = client(Some("pencil"), Prefer, Channel::Plain);
    let mut server = FakeServer::new("pencil", b"");
    assert_eq!(scram_login(&mut auth, PLAIN, &mut server).unwrap(), "n,,");
    assert!(!auth.channel_bound());
    // libpq fails the same way: -PLUS without TLS means TLS was stripped.
    let mut auth = client(Some("pencil"), Prefer, Channel::Plain);
    assert_eq!(scram_start(&mut auth, BOTH), Err(AuthError::PlusWithoutTls));
    let mut auth = client(Some("pencil"), Require, Channel::Plain);
    assert_eq!(
        scram_start(&mut auth, PLAIN),
        Err(AuthError::ChannelBindingNotOffered)
    );
}

#[test]
fn scram_plus_over_tls() {
    for cb in [Prefer, Require] {
        let mut auth = client(Some("pencil"), cb, tls(b"cert-hash"));
        let mut server = FakeServer::new("pencil", b"cert-hash");
        assert_eq!(
            scram_login(&mut auth, BOTH, &mut server).unwrap(),
            "p=tls-server-end-point,,"
        );
        assert!(auth.channel_bound());
    }
    let mut auth = client(Some("pencil"), Prefer, tls(b"h"));
    assert_eq!(scram_start(&mut auth, BOTH).unwrap().0, SCRAM_SHA_256_PLUS);
    // A binding hash that differs from the server's own is refused.
    let mut auth = client(Some("pencil"), Prefer, tls(b"forged"));
    let mut server = FakeServer::new("pencil", b"real");
    let e = scram_login(&mut auth, BOTH, &mut server).unwrap_err();
    assert_eq!(
        e,
        AuthError::ServerError("channel-bindings-dont-match".into())
    );
}

#[test]
fn scram_channel_binding_choices() {
    // TLS without -PLUS offered: `y` under prefer (downgrade detectable), error under require.
    let mut auth = client(Some("pencil"), Prefer, tls(b"h"));
    let mut server = FakeServer::new("pencil", b"");
    assert_eq!(scram_login(&mut auth, PLAIN, &mut server).unwrap(), "y,,");
    let mut auth = client(Some("pencil"), Require, tls(b"h"));
    assert_eq!(
        scram_start(&mut auth, PLAIN),
        Err(AuthError::ChannelBindingNotOffered)
    );
    // TLS but no certificate hash: honest `n` under prefer, error under require.
    let no_hash = || Channel::Tls {
        server_end_point: None,
    };
    let mut auth = client(Some("pencil"), Prefer, no_hash());
    let mut server = FakeServer::new("pencil", b"");
    assert_eq!(scram_login(&mut auth, BOTH, &mut server).unwrap(), "n,,");
    let mut auth = client(Some("pencil"), Require, no_hash());
    assert_eq!(
        scram_start(&mut auth, BOTH),
        Err(AuthError::ChannelBindingNotOffered)
    );
    // Disabled: plain SCRAM with `n`, even when -PLUS is offered.
    let mut auth = client(Some("pencil"), Disable, tls(b"h"));
    let mut server = FakeServer::new("pencil", b"");
    assert_eq!(scram_login(&mut auth, BOTH, &mut server).unwrap(), "n,,");
    let mut auth = client(Some("pencil"), Disable, tls(b"h"));
    assert_eq!(
        scram_start(&mut auth, &[SCRAM_SHA_256_PLUS]),
        Err(AuthError::NoSupportedMechanism)
    );
    for offered in [&[][..], &["SCRAM-SHA-1"], &["scram-sha-256"]] {
        let mut auth = client(Some("pencil"), Prefer, Channel::Plain);
        assert_eq!(
            scram_start(&mut auth, offered),
            Err(AuthError::NoSupportedMechanism)
        );
    }
}

/// Starts an exchange and feeds `server_first` (with `{n}` replaced by the client nonce).
fn hostile_first(server_first: &str) -> AuthError {
    let mut auth = client(Some("hunter2"), Prefer, Channel::Plain);
    let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
    let nonce = std::str::from_utf8(&first)
        .unwrap()
        .rsplit_once(",r=")
        .unwrap()
        .1
        .to_owned();
    let message = server_first.replace("{n}", &nonce);
    let e = auth
        .handle(AuthRequest::SaslContinue(message.as_bytes()))
        .unwrap_err();
    let again = auth
        .handle(AuthRequest::SaslContinue(message.as_bytes()))
        .unwrap_err();
    assert!(
        matches!(again, AuthError::Unexpected { .. }),
        "a failed exchange stays failed"
    );
    e
}

#[test]
fn hostile_server_first() {
    let malformed = |m: &str| {
        AuthError::ScramMalformed(match m {
            "m" => "mandatory extension not supported",
            "nonce" => "nonce mismatch",
            "salt" => "invalid salt",
            _ => "garbage at end of server-first-message",
        })
    };
    assert_eq!(
        hostile_first("r={n}S,s=c2FsdA==,i=0"),
        AuthError::IterationCount("0".into())
    );
    assert_eq!(
        hostile_first("r={n}S,s=c2FsdA==,i=100001"),
        AuthError::IterationCount("100001".into())
    );
    assert_eq!(
        hostile_first("r={n}S,s=c2FsdA==,i=4294967296"),
        AuthError::IterationCount("4294967296".into())
    );
    assert_eq!(
        hostile_first("r={n}S,s=c2FsdA==,i=+5"),
        AuthError::IterationCount("+5".into())
    );
    assert_eq!(
        hostile_first("r={n}S,s=c2FsdA==,i="),
        AuthError::IterationCount("".into())
    );
    assert_eq!(
        hostile_first("m=x,r={n}S,s=c2FsdA==,i=4096"),
        malformed("m")
    );
    assert_eq!(
        hostile_first("r=someoneelse,s=c2FsdA==,i=4096"),
        malformed("nonce")
    );
    assert_eq!(hostile_first("r={n},s=c2FsdA==,i=4096"), malformed("nonce"));
    for salt in ["", "c2FsdA", "c2F=dA==", "c2FsdA===", "!!!!"] {
        assert_eq!(
            hostile_first(&format!("r={{n}}S,s={salt},i=4096")),
            malformed("salt"),
            "{salt}"
        );
    }
    assert_eq!(
        hostile_first("r={n}S,s=c2FsdA==,i=4096,x=1"),
        malformed("trailing")
    );
    assert!(matches!(
        hostile_first("s=c2FsdA==,r={n}S,i=4096"),
        AuthError::ScramMalformed(_)
    ));
    assert!(matches!(
        hostile_first("r={n}S,s=c2FsdA=="),
        AuthError::ScramMalformed(_)
    ));
    assert!(matches!(
        hostile_first("r={n}S\u{e9},s=c2FsdA==,i=1"),
        AuthError::ScramMalformed(_)
    ));
    let huge = format!("r={{n}}{},s=c2FsdA==,i=4096", "x".repeat(5000));
    assert!(matches!(hostile_first(&huge), AuthError::ScramTooLong(_)));
    let long_count = format!("r={{n}}S,s=c2FsdA==,i={}", "9".repeat(100));
    assert_eq!(
        hostile_first(&long_count),
        AuthError::IterationCount("9".repeat(20))
    );
}

/// Runs up to the client-final-message, then feeds `server_final`.
fn hostile_final(server_final: &[u8]) -> AuthError {
    let mut auth = client(Some("hunter2"), Prefer, Channel::Plain);
    let mut server = FakeServer::new("hunter2", b"");
    let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
    sent(
        auth.handle(AuthRequest::SaslContinue(&server.server_first(&first)))
            .unwrap(),
    );
    auth.handle(AuthRequest::SaslFinal(server_final))
        .unwrap_err()
}

#[test]
fn hostile_server_final() {
    let e = hostile_final(b"e=invalid-proof");
    assert_eq!(
        e.to_string(),
        "error received from server in SCRAM exchange: invalid-proof"
    );
    assert_eq!(
        hostile_final(b"e=bell\x07"),
        AuthError::ScramMalformed("not printable ASCII")
    );
    let forged = format!("v={}", b64(&[7; 32]));
    assert_eq!(hostile_final(forged.as_bytes()), AuthError::ServerSignature);
    assert_eq!(
        hostile_final(b"v=short"),
        AuthError::ScramMalformed("expected the server signature v=")
    );
    assert!(matches!(
        hostile_final(b"x=1"),
        AuthError::ScramMalformed(_)
    ));
    assert!(matches!(
        hostile_final(&[b'v'; 4097]),
        AuthError::ScramTooLong(4097)
    ));
    // The wrong password on the client gives the server's e=, as PostgreSQL would.
    let mut auth = client(Some("wrong"), Prefer, Channel::Plain);
    let mut server = FakeServer::new("right", b"");
    let e = scram_login(&mut auth, PLAIN, &mut server).unwrap_err();
    assert_eq!(e, AuthError::ServerError("invalid-proof".into()));
}

#[test]
fn out_of_order() {
    let mut auth = client(Some("pw"), Prefer, Channel::Plain);
    let e = auth.handle(AuthRequest::SaslContinue(b"r=x")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unexpected AuthenticationSASLContinue while waiting for the first authentication request"
    );
    // SASLFinal before SASLContinue.
    let mut auth = client(Some("pw"), Prefer, Channel::Plain);
    scram_start(&mut auth, PLAIN).unwrap();
    let e = auth.handle(AuthRequest::SaslFinal(b"v=AAAA")).unwrap_err();
    assert!(matches!(
        e,
        AuthError::Unexpected {
            request: "AuthenticationSASLFinal",
            ..
        }
    ));
    // AuthenticationOk before the server proved itself, at either step.
    for steps in [1, 2] {
        let mut auth = client(Some("pw"), Prefer, Channel::Plain);
        let mut server = FakeServer::new("pw", b"");
        let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
        if steps == 2 {
            sent(
                auth.handle(AuthRequest::SaslContinue(&server.server_first(&first)))
                    .unwrap(),
            );
        }
        let e = auth.handle(AuthRequest::Ok).unwrap_err();
        assert!(
            matches!(
                e,
                AuthError::Unexpected {
                    request: "AuthenticationOk",
                    ..
                }
            ),
            "{e}"
        );
        assert!(auth.handle(AuthRequest::Ok).is_err());
    }
    // A second AuthenticationSASL, and md5 in the middle of SCRAM.
    let mut auth = client(Some("pw"), Prefer, Channel::Plain);
    scram_start(&mut auth, PLAIN).unwrap();
    assert!(matches!(
        scram_start(&mut auth, PLAIN),
        Err(AuthError::Unexpected { .. })
    ));
    let mut auth = client(Some("pw"), Prefer, Channel::Plain);
    scram_start(&mut auth, PLAIN).unwrap();
    let e = auth.handle(AuthRequest::Md5Password { salt: [0; 4] });
    assert!(matches!(e, Err(AuthError::Unexpected { .. })));
}

#[test]
fn errors_and_messages_never_contain_the_password() {
    let plain = || client(Some("hunter2"), Prefer, Channel::Plain);
    let mut errors = vec![
        plain().handle(AuthRequest::CleartextPassword).unwrap_err(),
        hostile_final(format!("v={}", b64(&[7; 32])).as_bytes()),
        hostile_first("r={n}S,s=c2FsdA==,i=0"),
    ];
    let mut auth = plain();
    let (_, first) = scram_start(&mut auth, PLAIN).unwrap();
    assert!(!String::from_utf8_lossy(&first).contains("hunter2"));
    let mut server = FakeServer::new("hunter2", b"");
    let reply = server.server_first(&first);
    let last = sent(auth.handle(AuthRequest::SaslContinue(&reply)).unwrap());
    assert!(!format!("{last:?}").contains("hunter2"));
    errors.push(auth.handle(AuthRequest::Ok).unwrap_err());
    for e in errors {
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
    }
}
