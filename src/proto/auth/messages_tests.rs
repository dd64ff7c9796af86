//! Tests of [`super::messages`]: every refusal of a client-first-message and of a
//! client-final-message, with the text and SQLSTATE a PostgreSQL 15.18 server sent for the
//! same message (each case was checked against a live server).
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use super::common::{self, b64};
use super::server::{AuthFailure, ServerChannel};
use super::server_tests::{
    HASH, NONCE_B64, failure, malformed, secret, sent, server, tls, wrong_password,
};
use crate::types::SqlState;

/// Each client-first-message and what PostgreSQL 15.18 answered it with (checked against a
/// live server); `plus` selects SCRAM-SHA-256-PLUS on a TLS channel with a certificate hash.
#[test]
fn malformed_client_first_messages_get_postgresqls_errors() {
    let plus_no_data = "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does \
                        not include channel binding data.";
    let cases: Vec<(bool, &[u8], AuthFailure)> = vec![
        (false, b"", malformed("The message is empty.")),
        (
            false,
            b"n,,n=\0,r=abc",
            malformed("Message length does not match input length."),
        ),
        (
            false,
            b"nx,n=,r=abc",
            malformed("Comma expected, but found character \"'x'\"."),
        ),
        (
            false,
            b"n",
            malformed("Comma expected, but found character \"0x00\"."),
        ),
        (
            false,
            b"y",
            malformed("Comma expected, but found character \"0x00\"."),
        ),
        (
            false,
            b"p=tls-server-end-point,,n=,r=abc",
            malformed(
                "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                 message includes channel binding data.",
            ),
        ),
        (
            false,
            b"x,,n=,r=abc",
            malformed("Unexpected channel-binding flag \"'x'\"."),
        ),
        (
            false,
            b" ,,n=,r=abc",
            malformed("Unexpected channel-binding flag \"0x20\"."),
        ),
        (
            false,
            b"\xc3\xa9,,n=,r=abc",
            malformed("Unexpected channel-binding flag \"0xc3\"."),
        ),
        (
            false,
            b"n,a=bob,n=,r=abc",
            failure(
                SqlState::FEATURE_NOT_SUPPORTED,
                "client uses authorization identity, but it is not supported",
                None,
            ),
        ),
        (
            false,
            b"n,x,n=,r=abc",
            malformed("Unexpected attribute \"'x'\" in client-first-message."),
        ),
        (
            false,
            b"n,,m=foo,n=,r=abc",
            failure(
                SqlState::FEATURE_NOT_SUPPORTED,
                "client requires an unsupported SCRAM extension",
                None,
            ),
        ),
        (
            false,
            b"n,,r=abc",
            malformed("Expected attribute \"n\" but found \"'r'\"."),
        ),
        (
            false,
            b"n,,n,r=abc",
            malformed("Expected character \"=\" for attribute \"n\"."),
        ),
        (
            false,
            b"n,,n=bob",
            malformed("Expected attribute \"r\" but found \"0x00\"."),
        ),
        (
            false,
            b"n,,n=,r=a\x7fc",
            failure(
                SqlState::PROTOCOL_VIOLATION,
                "non-printable characters in SCRAM nonce",
                None,
            ),
        ),
        (
            false,
            b"n,,n=,r=a\xc3\xa9",
            failure(
                SqlState::PROTOCOL_VIOLATION,
                "non-printable characters in SCRAM nonce",
                None,
            ),
        ),
        (
            false,
            b"n,,n=,r=abc,1=x",
            malformed("Attribute expected, but found invalid character \"'1'\"."),
        ),
        (
            false,
            b"n,,n=,r=abc,x",
            malformed("Expected character \"=\" for attribute \"x\"."),
        ),
        (true, b"n,,n=,r=abc", malformed(plus_no_data)),
        (true, b"y,,n=,r=abc", malformed(plus_no_data)),
        (
            true,
            b"p=tls-unique,,n=,r=abc",
            failure(
                SqlState::PROTOCOL_VIOLATION,
                "unsupported SCRAM channel-binding type \"tls-unique\"",
                None,
            ),
        ),
        (
            true,
            "p=tls-unique-\u{e9}-0123456789012345678901234567890123,,n=,r=abc".as_bytes(),
            failure(
                SqlState::PROTOCOL_VIOLATION,
                "unsupported SCRAM channel-binding type \"tls-unique-??-0123456789012345\"",
                None,
            ),
        ),
        (
            true,
            b"px,,n=,r=abc",
            malformed("Expected character \"=\" for attribute \"p\"."),
        ),
        (
            true,
            b"p=tls-server-end-point",
            malformed("Unexpected attribute \"0x00\" in client-first-message."),
        ),
        (
            true,
            b"p=tls-server-end-point,a=x,n=,r=abc",
            failure(
                SqlState::FEATURE_NOT_SUPPORTED,
                "client uses authorization identity, but it is not supported",
                None,
            ),
        ),
    ];
    for (plus, message, expected) in cases {
        let (channel, mechanism) = match plus {
            true => (tls(Some(&HASH)), "SCRAM-SHA-256-PLUS"),
            false => (ServerChannel::Plain, "SCRAM-SHA-256"),
        };
        let mut s = server(None, channel);
        let shown = String::from_utf8_lossy(message);
        assert_eq!(s.client_first(mechanism, message), Err(expected), "{shown}");
        assert!(s.client_final(b"c=biws").is_err(), "{shown}: went on");
    }
}

/// A valid proof for `client_final_without_proof` after `server_first`, for `secret`'s
/// password "pencil".
fn proof(first_bare: &str, server_first: &[u8], without_proof: &str) -> String {
    let salted = common::salted_password(b"pencil", b"0123456789abcdef", 64);
    let client_key = common::client_key(&salted);
    let auth: [&[u8]; 5] = [
        first_bare.as_bytes(),
        b",",
        server_first,
        b",",
        without_proof.as_bytes(),
    ];
    let signature = common::hmac(&common::sha256(&client_key), &auth);
    let p: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    b64(&p)
}

/// Runs the client-first-message `n,,n=,r=abc` (or its -PLUS form), then `last`, in which
/// `{nonce}` stands for the combined nonce and `{proof}` for a valid proof.
fn final_with(plus: bool, last: &str) -> Result<Vec<u8>, AuthFailure> {
    let secret = secret("pencil");
    let (channel, mechanism, gs2) = match plus {
        true => (
            tls(Some(&HASH)),
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,",
        ),
        false => (ServerChannel::Plain, "SCRAM-SHA-256", "n,,"),
    };
    let mut s = server(Some(&secret), channel);
    let first = format!("{gs2}n=,r=abc");
    let server_first = s.client_first(mechanism, first.as_bytes()).unwrap();
    let last = last.replace("{nonce}", &format!("abc{NONCE_B64}"));
    let without_proof = last.split(",p=").next().unwrap();
    let last = last.replace("{proof}", &proof("n=,r=abc", &server_first, without_proof));
    let outcome = s.client_final(last.as_bytes());
    assert_eq!(s.is_authenticated(), outcome.is_ok());
    assert!(s.client_final(last.as_bytes()).is_err(), "a second final");
    outcome
}

#[test]
fn client_final_messages_get_postgresqls_errors() {
    let cbind_data = b64(&[&b"p=tls-server-end-point,,"[..], &HASH].concat());
    // Accepted, as PostgreSQL accepts them.
    for last in [
        "c=biws,r={nonce},p={proof}",
        "c=biws,r={nonce},x=1,p={proof}",
        "c=biws,r={nonce},p={proof},",
    ] {
        assert!(final_with(false, last).is_ok(), "{last}");
    }
    assert!(final_with(true, &format!("c={cbind_data},r={{nonce}},p={{proof}}")).is_ok());
    let unexpected_cbind = failure(
        SqlState::PROTOCOL_VIOLATION,
        "unexpected SCRAM channel-binding attribute in client-final-message",
        None,
    );
    let check_failed = failure(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "SCRAM channel binding check failed",
        None,
    );
    let wrong_hash = b64(&[&b"p=tls-server-end-point,,"[..], &[0xac; 32]].concat());
    let malformed_proof = malformed("Malformed proof in client-final-message.");
    let proof_31 = b64(&[0; 31]);
    let proof_33 = b64(&[0; 33]);
    let cases: Vec<(bool, String, AuthFailure)> = vec![
        (false, "".into(), malformed("The message is empty.")),
        (
            false,
            "c=biws,r={nonce},\0p={proof}".into(),
            malformed("Message length does not match input length."),
        ),
        (
            false,
            "c=eSws,r={nonce},p={proof}".into(),
            unexpected_cbind.clone(),
        ),
        (
            false,
            format!("c={cbind_data},r={{nonce}},p={{proof}}"),
            unexpected_cbind,
        ),
        (
            true,
            "c=biws,r={nonce},p={proof}".into(),
            check_failed.clone(),
        ),
        (
            true,
            format!("c={wrong_hash},r={{nonce}},p={{proof}}"),
            check_failed,
        ),
        (
            false,
            "r={nonce},p={proof}".into(),
            malformed("Expected attribute \"c\" but found \"'r'\"."),
        ),
        (
            false,
            "c=biws,r={nonce}x,p={proof}".into(),
            failure(
                SqlState::PROTOCOL_VIOLATION,
                "invalid SCRAM response",
                Some("Nonce does not match."),
            ),
        ),
        (
            false,
            "c=biws,r=abc,p={proof}".into(),
            failure(
                SqlState::PROTOCOL_VIOLATION,
                "invalid SCRAM response",
                Some("Nonce does not match."),
            ),
        ),
        (
            false,
            "c=biws,r={nonce}".into(),
            malformed("Attribute expected, but found end of string."),
        ),
        (
            false,
            "c=biws,r={nonce},x=1".into(),
            malformed("Attribute expected, but found end of string."),
        ),
        (
            false,
            "c=biws,r={nonce},1=1,p={proof}".into(),
            malformed("Attribute expected, but found invalid character \"'1'\"."),
        ),
        (
            false,
            "c=biws,r={nonce},p={proof},x=1".into(),
            malformed("Garbage found at the end of client-final-message."),
        ),
        (
            false,
            format!("c=biws,r={{nonce}},p={proof_31}"),
            malformed_proof.clone(),
        ),
        (
            false,
            format!("c=biws,r={{nonce}},p={proof_33}"),
            malformed_proof.clone(),
        ),
        (
            false,
            "c=biws,r={nonce},p=!!!!".into(),
            malformed_proof.clone(),
        ),
        (false, "c=biws,r={nonce},p=".into(), malformed_proof.clone()),
        (false, "c=biws,r={nonce},p={proof} ".into(), malformed_proof),
    ];
    for (plus, last, expected) in cases {
        assert_eq!(final_with(plus, &last), Err(expected), "{last}");
    }
    // A well-formed proof of the wrong value.
    let zero = format!("c=biws,r={{nonce}},p={}", b64(&[0; 32]));
    assert_eq!(
        final_with(false, &zero).map_err(sent),
        Err(wrong_password("alice"))
    );
}
