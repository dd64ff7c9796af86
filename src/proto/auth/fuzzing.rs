//! Fuzz entry point for the server side of authentication; `fuzz/fuzz_targets/scram_server.rs`
//! only calls it. Built for fuzzing and tests only.
//!
//! Runs `auth-scram.c`'s exchange ([`ScramServer`]) on client messages cut from the input,
//! and reads the input as a secret (`parse_scram_secret`, `get_password_type`), an auth
//! file, an MD5 response (`md5_crypt_verify`) and a cleartext password
//! (`plain_crypt_verify`).
//!
//! Properties: no panic on any input; the exchange succeeds only for the known user with a
//! SCRAM secret and a proof equal to ClientKey XOR ClientSignature computed independently of
//! the server's own check, and then returns that exchange's ServerSignature; a failed step
//! leaves every later one failing; a parsed secret prints back to text that parses to the
//! same secret, and its `Debug` shows no part of it; an auth file lists what `get` finds.

use std::path::Path;
use std::sync::OnceLock;

use super::common::{self, Key, b64, unb64};
use super::password::{check_cleartext_password, check_md5_response};
use super::secret::{AuthFile, Secret};
use super::server::{ScramServer, ServerChannel};

/// The known user and its password.
pub const USER: &str = "fuzz";
/// The known user's password.
pub const PASSWORD: &str = "fuzz-password";
/// The salt of the known user's secret.
pub const SALT: [u8; 16] = *b"fuzz-salt-16byte";
/// The iteration count of the known user's secret, low to keep runs fast.
pub const ITERATIONS: u32 = 16;
/// The mock-authentication nonce of every run.
pub const MOCK_NONCE: [u8; 32] = [0x42; 32];
/// The server nonce of every run (base64 `BwcHBwcHBwcHBwcHBwcHBwcH`).
pub const SERVER_NONCE: [u8; 18] = [0x07; 18];
/// The certificate hash of a TLS channel with one.
pub const CERTIFICATE_HASH: [u8; 32] = [0xab; 32];

/// The known user's SCRAM secret, its MD5 secret, and the ClientKey of its password.
fn known() -> &'static (Secret, Secret, Key) {
    static KNOWN: OnceLock<(Secret, Secret, Key)> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let salted = common::salted_password(PASSWORD.as_bytes(), &SALT, ITERATIONS);
        (
            Secret::scram_from_password(PASSWORD, SALT, ITERATIONS),
            Secret::md5_from_password(PASSWORD, USER),
            common::client_key(&salted),
        )
    })
}

/// `data[0]` is the length of the client-first-message, `data[1]` the choices: bits 0-1 the
/// channel (0 plain, 1 TLS without a certificate hash, 2 and 3 TLS with one), bit 2 an
/// unknown user, bit 3 the known user with its MD5 secret, bit 4 the mechanism
/// SCRAM-SHA-256-PLUS, bit 5 an invalid mechanism. The rest is the client-first-message,
/// then the client-final-message. The whole input is also read as text (secrets, an auth
/// file) and as password packets.
pub fn fuzz_scram_server(data: &[u8]) {
    check_texts(data);
    check_passwords(data);
    let [split, choices, rest @ ..] = data else {
        return;
    };
    let (first, last) = rest.split_at(usize::from(*split).min(rest.len()));
    let channel = match choices & 3 {
        0 => ServerChannel::Plain,
        1 => ServerChannel::Tls {
            certificate_hash: None,
        },
        _ => ServerChannel::Tls {
            certificate_hash: Some(CERTIFICATE_HASH.to_vec()),
        },
    };
    let mechanism = match (choices & 0x20 != 0, choices & 0x10 != 0) {
        (true, _) => "SCRAM-SHA-1",
        (false, true) => "SCRAM-SHA-256-PLUS",
        (false, false) => "SCRAM-SHA-256",
    };
    let (scram, md5, client_key) = known();
    let secret = match (choices & 4 != 0, choices & 8 != 0) {
        (true, _) => None,
        (false, true) => Some(md5),
        (false, false) => Some(scram),
    };
    let mut server = ScramServer::new(USER, secret, &MOCK_NONCE, channel, SERVER_NONCE);
    let server_first = match server.client_first(mechanism, first) {
        Ok(server_first) => server_first,
        Err(_) => {
            assert!(
                server.client_final(last).is_err(),
                "a failed exchange went on"
            );
            assert!(!server.is_authenticated());
            return;
        }
    };
    let nonce = b64(&SERVER_NONCE);
    assert!(
        server_first.starts_with(b"r="),
        "server-first without a nonce"
    );
    assert!(
        server_first
            .windows(nonce.len())
            .any(|w| w == nonce.as_bytes()),
        "server-first without the server nonce"
    );
    let outcome = server.client_final(last);
    assert_eq!(server.is_authenticated(), outcome.is_ok());
    assert!(
        server.client_first(mechanism, first).is_err(),
        "the exchange restarted"
    );
    let Ok(server_final) = outcome else {
        return;
    };
    assert!(secret == Some(scram), "success without a SCRAM secret");
    let keys = scram.scram();
    assert!(keys.is_some());
    let Some(keys) = keys else { return };
    let expected = expected_exchange(first, &server_first, last, client_key, keys.server_key());
    assert_eq!(
        expected,
        Some(server_final),
        "success without a valid proof"
    );
}

/// The proof check done here, from the messages alone: `Some(server-final-message)` if the
/// client-final-message's proof is ClientKey XOR HMAC(StoredKey, AuthMessage).
fn expected_exchange(
    first: &[u8],
    server_first: &[u8],
    last: &[u8],
    client_key: &Key,
    server_key: &Key,
) -> Option<Vec<u8>> {
    let bare_at = first.windows(2).position(|w| w == b",,")? + 2;
    let bare = first.get(bare_at..)?;
    let proof_at = last.windows(3).rposition(|w| w == b",p=")?;
    let without_proof = last.get(..proof_at)?;
    let proof = unb64(last.get(proof_at + 3..)?)?;
    let auth_message: [&[u8]; 5] = [bare, b",", server_first, b",", without_proof];
    let stored_key = common::sha256(client_key);
    let signature = common::hmac(&stored_key, &auth_message);
    let wanted: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    (proof == wanted)
        .then(|| format!("v={}", b64(&common::hmac(server_key, &auth_message))).into_bytes())
}

/// Secrets one per line, and the whole text as an auth file.
fn check_texts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines().take(16) {
        if let Ok(secret) = Secret::parse(line) {
            let printed = secret.to_string();
            assert_eq!(Secret::parse(&printed).as_ref(), Ok(&secret));
            let debug = format!("{secret:?}");
            if let Some(scram) = secret.scram() {
                assert!(!debug.contains(&b64(scram.stored_key())));
                assert!(!debug.contains(&b64(scram.server_key())));
            } else {
                assert!(!debug.contains(printed.get(3..).unwrap_or("?")));
            }
        }
    }
    match AuthFile::parse(text, Path::new("fuzz")) {
        Ok(file) => {
            assert_eq!(file.users().count(), file.len());
            for user in file.users() {
                assert!(file.get(user).is_some());
            }
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count()),
    }
}

/// The input as an answer to an MD5 challenge and as a cleartext password: only the known
/// password's own answers succeed.
fn check_passwords(data: &[u8]) {
    let (scram, md5, _) = known();
    let salt = [0x5a; 4];
    let right = md5
        .md5_text()
        .map(|text| common::md5_encrypt(text.get(3..).unwrap_or_default(), &salt));
    let is_right = right.is_some_and(|r| data == r.as_slice());
    for secret in [None, Some(scram), Some(md5)] {
        let ok = check_md5_response(secret, USER, salt, data).is_ok();
        assert_eq!(ok, secret == Some(md5) && is_right, "md5 response");
    }
    if data.len() <= PASSWORD.len() + 1 {
        for secret in [None, Some(scram), Some(md5)] {
            let ok = check_cleartext_password(secret, USER, data).is_ok();
            assert_eq!(ok, secret.is_some() && data == PASSWORD.as_bytes());
        }
    }
}
