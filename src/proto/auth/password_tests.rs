//! Tests of [`super::password`]: MD5 challenges and cleartext passwords, with the verdicts
//! and texts a PostgreSQL 15.18 server gave for the same logins.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use super::common;
use super::password::{
    check_cleartext_password, check_md5_response, md5_challenge_response_ok, md5_rule_uses_md5,
};
use super::secret::Secret;
use super::server_tests::{GOLDEN, secret, sent, wrong_password};
use crate::types::SqlState;

#[test]
fn md5_responses() {
    // `CREATE ROLE oldie PASSWORD 'secret'` with password_encryption=md5 on PostgreSQL 15.18.
    let oldie = Secret::parse("md5f6802980cb08d94ddf80f3a3a6d07ef9").unwrap();
    assert_eq!(oldie, Secret::md5_from_password("secret", "oldie"));
    let salt = [0x01, 0x02, 0xfe, 0xff];
    let inner = common::md5_encrypt(b"secret", b"oldie");
    let right = common::md5_encrypt(&inner[3..], &salt);
    // libpq's own computation of the answer.
    let libpq = postgres_protocol::authentication::md5_hash(b"oldie", b"secret", salt);
    assert_eq!(right.as_slice(), libpq.as_bytes());
    assert!(md5_challenge_response_ok(&oldie, "oldie", salt, &right));
    assert!(!md5_challenge_response_ok(&oldie, "oldie", [0; 4], &right));
    assert!(!md5_challenge_response_ok(
        &oldie,
        "oldie",
        salt,
        &right[..34]
    ));
    assert!(!md5_challenge_response_ok(&oldie, "oldie", salt, &inner));
    let upper = right.to_ascii_uppercase();
    assert!(!md5_challenge_response_ok(&oldie, "oldie", salt, &upper));
    let scram = secret("secret");
    assert!(!md5_challenge_response_ok(&scram, "oldie", salt, &right));

    assert_eq!(
        check_md5_response(Some(&oldie), "oldie", salt, &right),
        Ok(())
    );
    let empty = check_md5_response(Some(&oldie), "oldie", salt, b"").unwrap_err();
    let empty_text = "empty password returned by client";
    assert_eq!(
        sent(empty),
        (SqlState::INVALID_PASSWORD, empty_text.into(), None)
    );
    for (secret, why) in [
        (Some(&oldie), "Password does not match for user \"oldie\"."),
        (
            Some(&scram),
            "User \"oldie\" has a password that cannot be used with MD5 authentication.",
        ),
        (None, "Role \"oldie\" does not exist."),
    ] {
        let e = check_md5_response(secret, "oldie", salt, b"md5nope").unwrap_err();
        assert_eq!(e.log_detail.as_deref(), Some(why));
        assert_eq!(sent(e), wrong_password("oldie"));
    }
    // An md5 rule runs MD5 for an MD5 secret only (PostgreSQL offers SCRAM otherwise).
    assert!(md5_rule_uses_md5(Some(&oldie)));
    assert!(!md5_rule_uses_md5(Some(&scram)));
    assert!(!md5_rule_uses_md5(None));
}

#[test]
fn cleartext_passwords_against_both_kinds() {
    let golden = Secret::parse(GOLDEN).unwrap();
    let oldie = Secret::md5_from_password("secret", "oldie");
    assert_eq!(
        check_cleartext_password(Some(&golden), "golden", b"pencil"),
        Ok(())
    );
    assert_eq!(
        check_cleartext_password(Some(&oldie), "oldie", b"secret"),
        Ok(())
    );
    for (secret, user, password) in [
        (Some(&golden), "golden", &b"pencil "[..]),
        (Some(&oldie), "oldie", b"Secret"),
        // The MD5 hash is salted with the user name.
        (Some(&oldie), "golden", b"secret"),
        (None, "golden", b"pencil"),
        (Some(&golden), "golden", b"pencil\0"),
    ] {
        let e = check_cleartext_password(secret, user, password).unwrap_err();
        assert_eq!(sent(e), wrong_password(user));
    }
    let e = check_cleartext_password(Some(&golden), "golden", b"").unwrap_err();
    assert_eq!(e.message, "empty password returned by client");
    assert_eq!(e.sqlstate, SqlState::INVALID_PASSWORD);
}
