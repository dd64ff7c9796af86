//! The server side of the `md5` and `password` methods, as PostgreSQL 15 checks them.
//!
//! Mirrors `auth.c` (`CheckPWChallengeAuth`, `CheckMD5Auth`, `CheckPasswordAuth`,
//! `recv_password_packet`) and `crypt.c` (`md5_crypt_verify`, `plain_crypt_verify`). The
//! session sends the requests and reads the password packets (a packet whose length does not
//! match its string is its to refuse); these functions say whether the login succeeds, and
//! with which error it fails. Comparisons take constant time.

use super::common::{self, ct_eq};
use super::failure::AuthFailure;
use super::secret::{Secret, SecretKind};

/// `CheckPWChallengeAuth` for an `md5` rule: whether to send an MD5 challenge (`true`) or
/// run SCRAM instead (`false`). MD5 only for a user whose secret is an MD5 hash; a SCRAM
/// secret cannot answer an MD5 challenge, and an unknown user gets the mock SCRAM exchange
/// (PostgreSQL picks `password_encryption`, `scram-sha-256` by default, so that the user
/// "blends in").
pub fn md5_rule_uses_md5(secret: Option<&Secret>) -> bool {
    secret.map(Secret::kind) == Some(SecretKind::Md5)
}

/// `md5_crypt_verify`: whether `response` (the password packet without its NUL) is
/// `"md5"` followed by hex(MD5(hex(MD5(password ‖ user)) ‖ salt)) for this secret. Always
/// `false` for a SCRAM secret, which has no MD5 hash to compute it from. `user` is the
/// startup packet's user name: the stored hash was salted with it when it was made, so the
/// check itself does not need it again (`md5_crypt_verify` uses it in its log detail).
pub fn md5_challenge_response_ok(
    secret: &Secret,
    user: &str,
    salt: [u8; 4],
    response: &[u8],
) -> bool {
    let _ = user;
    match secret.md5_text() {
        Some(stored) => {
            let stored_hex = stored.get(3..).unwrap_or_default();
            ct_eq(&common::md5_encrypt(stored_hex, &salt), response)
        }
        None => false,
    }
}

/// `CheckMD5Auth` after the password packet: the answer to an MD5 challenge with `salt`.
///
/// # Errors
/// 28P01 `empty password returned by client` for an empty packet; else 28P01 `password
/// authentication failed for user "…"` unless the response is right (an unknown user and a
/// SCRAM secret included, with a [`AuthFailure::log_detail`] saying why).
pub fn check_md5_response(
    secret: Option<&Secret>,
    user: &str,
    salt: [u8; 4],
    response: &[u8],
) -> Result<(), AuthFailure> {
    if response.is_empty() {
        return Err(AuthFailure::empty_password());
    }
    let why = match secret {
        None => format!("Role \"{user}\" does not exist."),
        Some(Secret::Scram(_)) => {
            format!("User \"{user}\" has a password that cannot be used with MD5 authentication.")
        }
        Some(secret) if md5_challenge_response_ok(secret, user, salt, response) => {
            return Ok(());
        }
        Some(Secret::Md5(_)) => format!("Password does not match for user \"{user}\"."),
    };
    Err(AuthFailure::password_failed(user, Some(why)))
}

/// `CheckPasswordAuth` after the password packet: a cleartext password (the `password`
/// method, which the relay allows over TLS only) checked against either kind of secret with
/// [`Secret::verify_password`].
///
/// # Errors
/// 28P01 `empty password returned by client` for an empty password; else 28P01 `password
/// authentication failed for user "…"` unless it matches (an unknown user included). As in
/// PostgreSQL, an unknown user costs no hashing.
pub fn check_cleartext_password(
    secret: Option<&Secret>,
    user: &str,
    password: &[u8],
) -> Result<(), AuthFailure> {
    if password.is_empty() {
        return Err(AuthFailure::empty_password());
    }
    let why = match secret {
        None => format!("Role \"{user}\" does not exist."),
        Some(secret) if secret.verify_password(user, password) => return Ok(()),
        Some(_) => format!("Password does not match for user \"{user}\"."),
    };
    Err(AuthFailure::password_failed(user, Some(why)))
}
