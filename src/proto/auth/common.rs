//! The arithmetic both SCRAM sides and the password checks share, as PostgreSQL 15 does it.
//!
//! Mirrors `src/common/scram-common.c` (`scram_SaltedPassword`, `scram_H`, `scram_ClientKey`,
//! `scram_ServerKey`), the lenient use of `pg_saslprep` (`src/common/saslprep.c`) that
//! `auth-scram.c` makes, the decoder of `src/common/base64.c` (`pg_b64_decode`) and
//! `pg_md5_encrypt` (`src/common/md5_common.c`). Nothing here reads the clock or randomness.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The length of every SCRAM-SHA-256 key and proof (`SCRAM_KEY_LEN`).
pub(crate) const KEY_LEN: usize = 32;

/// A SCRAM key: SaltedPassword, ClientKey, StoredKey, ServerKey, a signature or a proof.
pub(crate) type Key = [u8; KEY_LEN];

/// Standard base64 as `pg_b64_encode` writes it and `pg_b64_decode` reads it: padding
/// required, non-zero bits in the last symbol tolerated (PostgreSQL does not check them).
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Base64 of `data`.
pub(crate) fn b64(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// Decodes base64; `None` for anything `pg_b64_decode` refuses (whitespace, a symbol outside
/// the alphabet, missing padding). PostgreSQL also reads padding in the middle of the data;
/// that is refused here.
pub(crate) fn unb64(text: &[u8]) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// A keyed HMAC-SHA-256. A key longer than the block is hashed first (RFC 2104), as the
/// `hmac` crate's own `new_from_slice` does; done here so that keying cannot fail.
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block.iter_mut().zip(digest).for_each(|(b, d)| *b = d);
    } else {
        block.iter_mut().zip(key).for_each(|(b, k)| *b = *k);
    }
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `scram_H`: SHA-256.
pub(crate) fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// `scram_SaltedPassword`: PBKDF2-HMAC-SHA-256 with one output block, `Hi()` of RFC 5802.
/// The password is the already prepared one ([`prepare_password`]).
pub(crate) fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mac = keyed(password);
    let mut first = mac.clone();
    first.update(salt);
    first.update(&1u32.to_be_bytes());
    let mut u: Key = first.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        let mut next = mac.clone();
        next.update(&u);
        u = next.finalize().into_bytes().into();
        result.iter_mut().zip(u).for_each(|(r, x)| *r ^= x);
    }
    result
}

/// `scram_ClientKey`.
pub(crate) fn client_key(salted: &Key) -> Key {
    hmac(salted, &[b"Client Key"])
}

/// `scram_ServerKey`.
pub(crate) fn server_key(salted: &Key) -> Key {
    hmac(salted, &[b"Server Key"])
}

/// The password as `auth-scram.c` hashes it: `pg_saslprep`'s result when it succeeds, else
/// the raw bytes (not UTF-8, a prohibited character, or nothing left after mapping).
///
/// Pure ASCII passes through unchanged, as `pg_saslprep`'s fast path does, control characters
/// included. For other text the `stringprep` crate does the RFC 4013 work; PostgreSQL checks
/// prohibited and unassigned code points before normalisation rather than after, so the two
/// can differ on exotic input (a compatibility character that normalises into a prohibited
/// one).
pub(crate) fn prepare_password(password: &[u8]) -> Vec<u8> {
    if password.is_ascii() {
        return password.to_vec();
    }
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(prepared)) if !prepared.is_empty() => prepared.into_owned().into_bytes(),
        _ => password.to_vec(),
    }
}

/// MD5 of the concatenation of `parts`.
pub(crate) fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// `"md5"` and the 32 lowercase hex digits of `digest`, the text `pg_md5_encrypt` writes.
pub(crate) fn md5_text(digest: &[u8; 16]) -> [u8; 35] {
    let hex = digest
        .iter()
        .flat_map(|b| [hex_digit(b >> 4), hex_digit(b & 0xf)]);
    let mut out = [0u8; 35];
    for (o, c) in out.iter_mut().zip(b"md5".iter().copied().chain(hex)) {
        *o = c;
    }
    out
}

/// `pg_md5_encrypt(passwd, salt)`: `"md5"` and the lowercase hex MD5 of `passwd ‖ salt`.
pub(crate) fn md5_encrypt(passwd: &[u8], salt: &[u8]) -> [u8; 35] {
    md5_text(&md5(&[passwd, salt]))
}

/// One lowercase hex digit.
pub(crate) fn hex_digit(nibble: u8) -> u8 {
    match nibble {
        0..=9 => b'0' + nibble,
        _ => b'a' + (nibble & 0xf) - 10,
    }
}

/// Equality in time that depends on the lengths only.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc_7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1, dkLen=64),
        // whose first block is Hi() with one iteration.
        let expected = "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc";
        let got: String = salted_password(b"passwd", b"salt", 1)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn hmac_keys_longer_than_a_block_are_hashed() {
        // RFC 4231 test case 6: a 131-byte key.
        let key = [0xaa; 131];
        let mac = hmac(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn md5_encrypt_is_pg_md5_encrypt() {
        // md5 of "passworduser", a value every PostgreSQL tutorial shows.
        assert_eq!(
            &md5_encrypt(b"password", b"user"),
            b"md54d45974e13472b5a0be3533de4666414"
        );
    }

    #[test]
    fn saslprep_falls_back_to_raw_bytes() {
        assert_eq!(prepare_password(b"pass\tword"), b"pass\tword");
        assert_eq!(prepare_password(b"\xff\xfe"), b"\xff\xfe");
        // U+00AD SOFT HYPHEN maps to nothing: an empty result is not used.
        assert_eq!(prepare_password("\u{ad}".as_bytes()), "\u{ad}".as_bytes());
        // U+2168 ROMAN NUMERAL NINE normalises (NFKC) to "IX"; U+00A0 maps to a space.
        assert_eq!(prepare_password("\u{2168}".as_bytes()), b"IX");
        assert_eq!(prepare_password("a\u{a0}b".as_bytes()), b"a b");
    }

    #[test]
    fn base64_is_pg_b64_decode() {
        assert_eq!(unb64(b"biws").as_deref(), Some(&b"n,,"[..]));
        assert_eq!(unb64(b"bg=="), Some(b"n".to_vec()));
        assert_eq!(
            unb64(b"bh=="),
            Some(b"n".to_vec()),
            "trailing bits tolerated"
        );
        assert_eq!(unb64(b"bg"), None, "padding is required");
        assert_eq!(unb64(b"bi ws"), None);
        assert_eq!(unb64(b"bi*s"), None);
    }
}
