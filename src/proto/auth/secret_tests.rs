//! Tests of [`super::secret`]: real verifiers from PostgreSQL 15 and `postgres-protocol`,
//! every refused form, the auth file, and that no `Debug` or error text shows a secret.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use std::path::Path;

use super::common::b64;
use super::secret::{AuthFile, AuthFileError, Secret, SecretError, SecretKind};

/// `CREATE ROLE golden PASSWORD 'pencil'` on PostgreSQL 15.18, from `pg_authid`.
const GOLDEN: &str = "SCRAM-SHA-256$4096:FDXm7AEsaL60D3Lnwyj5Og==$\
                      Ke+LwZKS/0YYy1lBpuYejNkjsgii+7C+f638BqsDxP4=:\
                      YW5E2xgiB2hseh74++lD1w7JIwDDKUp6wwgA/EzOXBg=";
/// `ALTER ROLE uni PASSWORD U&'p\00e4ss\2168w'` on PostgreSQL 15.18: SASLprep maps U+2168
/// (ROMAN NUMERAL NINE) to "IX" before hashing.
const UNI: &str = "SCRAM-SHA-256$4096:4BCWx8QyvOcdx9USLzKVRw==$\
                   xtcPddPERETmmeumMbrHpcIfhZuyZ98e4KUpujMk8A0=:\
                   4/ZfZ8zJ69Qjw3vTYXyL6IaBs8h/cxOWwfcWRp07ZGo=";
/// md5 of "password" followed by "user".
const MD5_PASSWORD_USER: &str = "md54d45974e13472b5a0be3533de4666414";

#[test]
fn parses_real_verifiers_and_prints_them_back() {
    let golden = Secret::parse(GOLDEN).unwrap();
    assert_eq!(golden.kind(), SecretKind::Scram);
    let scram = golden.scram().unwrap();
    assert_eq!(scram.iterations(), 4096);
    assert_eq!(b64(scram.salt()), "FDXm7AEsaL60D3Lnwyj5Og==");
    assert_eq!(golden.to_string(), GOLDEN);
    assert!(golden.verify_password("golden", b"pencil"));
    assert!(
        golden.verify_password("anyone", b"pencil"),
        "SCRAM is not salted by user"
    );
    assert!(!golden.verify_password("golden", b"Pencil"));

    let generated = postgres_protocol::password::scram_sha_256(b"hunter2");
    let parsed = Secret::parse(&generated).unwrap();
    assert_eq!(parsed.to_string(), generated);
    assert!(parsed.verify_password("u", b"hunter2"));
    assert!(!parsed.verify_password("u", b"hunter3"));

    let md5 = Secret::parse(MD5_PASSWORD_USER).unwrap();
    assert_eq!(md5.kind(), SecretKind::Md5);
    assert!(md5.scram().is_none());
    assert_eq!(md5.to_string(), MD5_PASSWORD_USER);
    assert_eq!(md5, Secret::md5_from_password("password", "user"));
    assert_eq!(
        postgres_protocol::password::md5(b"password", "user"),
        MD5_PASSWORD_USER
    );
    assert!(md5.verify_password("user", b"password"));
    assert!(!md5.verify_password("other", b"password"));
}

#[test]
fn saslprep_as_postgresql_applies_it() {
    let uni = Secret::parse(UNI).unwrap();
    assert!(uni.verify_password("uni", "p\u{e4}ss\u{2168}w".as_bytes()));
    assert!(uni.verify_password("uni", "p\u{e4}ssIXw".as_bytes()));
    // Decomposed a-umlaut normalises (NFKC) to the same.
    assert!(uni.verify_password("uni", "pa\u{308}ss\u{2168}w".as_bytes()));
    assert!(!uni.verify_password("uni", b"passIXw"));
}

#[test]
fn scram_from_password_matches_postgres_protocol_and_postgresql() {
    let salt = *b"\x14\x35\xe6\xec\x01\x2c\x68\xbe\xb4\x0f\x72\xe7\xc3\x28\xf9\x3a";
    let made = Secret::scram_from_password("pencil", salt, 4096);
    assert_eq!(
        made.to_string(),
        GOLDEN,
        "the golden verifier's salt, re-derived"
    );
    assert_eq!(
        Secret::scram_from_password("pencil", salt, 0),
        made,
        "0 is the default"
    );
    let uni = Secret::scram_from_password("p\u{e4}ss\u{2168}w", [0; 16], 8);
    assert!(uni.verify_password("", "p\u{e4}ssIXw".as_bytes()));
    assert_eq!(uni.scram().unwrap().iterations(), 8);
}

#[test]
fn refuses_everything_else() {
    let scram = |what| Err(SecretError::Scram(what));
    let (salt, key) = (
        "FDXm7AEsaL60D3Lnwyj5Og==",
        "Ke+LwZKS/0YYy1lBpuYejNkjsgii+7C+f638BqsDxP4=",
    );
    let cases = [
        ("pencil".to_owned(), Err(SecretError::Unrecognized)),
        ("".to_owned(), Err(SecretError::Unrecognized)),
        (
            "scram-sha-256:FDXm7AEsaL60D3Lnwyj5Og==:4096:00:00".to_owned(),
            Err(SecretError::Unrecognized),
        ),
        (
            format!("SCRAM-SHA-1$4096:{salt}${key}:{key}"),
            Err(SecretError::Unrecognized),
        ),
        (
            "md54d45974e13472b5a0be3533de466641".to_owned(),
            Err(SecretError::Md5),
        ),
        (
            "md54d45974e13472b5a0be3533de4666414a".to_owned(),
            Err(SecretError::Md5),
        ),
        (
            "md54D45974E13472B5A0BE3533DE4666414".to_owned(),
            Err(SecretError::Md5),
        ),
        (
            "md54d45974e13472b5a0be3533de466641g".to_owned(),
            Err(SecretError::Md5),
        ),
        ("md5password".to_owned(), Err(SecretError::Md5)),
        (
            format!("SCRAM-SHA-256$4096${salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            "SCRAM-SHA-256$4096".to_owned(),
            scram("expected \"<iterations>:<salt>\""),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}:{key}:{key}"),
            scram("expected \"$\" after the salt"),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}${key}${key}"),
            scram("expected \"<StoredKey>:<ServerKey>\""),
        ),
        (
            format!("SCRAM-SHA-256$:{salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            format!("SCRAM-SHA-256$0:{salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            format!("SCRAM-SHA-256$-1:{salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            format!("SCRAM-SHA-256$+4096:{salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            format!("SCRAM-SHA-256$ 4096:{salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            format!("SCRAM-SHA-256$2147483648:{salt}${key}:{key}"),
            scram("invalid iteration count"),
        ),
        (
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            scram("invalid salt"),
        ),
        (
            format!("SCRAM-SHA-256$4096:FDXm7AEsaL60D3Lnwyj5Og${key}:{key}"),
            scram("invalid salt"),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}$:{key}"),
            scram("invalid StoredKey"),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}${salt}:{key}"),
            scram("invalid StoredKey"),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}${key}:{salt}"),
            scram("invalid ServerKey"),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}:"),
            scram("invalid ServerKey"),
        ),
        (
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}\n"),
            scram("invalid ServerKey"),
        ),
        (
            format!(" SCRAM-SHA-256$4096:{salt}${key}:{key}"),
            Err(SecretError::Unrecognized),
        ),
    ];
    for (text, expected) in cases {
        let got = Secret::parse(&text);
        assert_eq!(got, expected, "{text:?}");
        if let Err(e) = got {
            // No error text echoes the input.
            let shown = e.to_string();
            assert!(!shown.contains(key) && !shown.contains("pencil"), "{shown}");
        }
    }
    let max = format!("SCRAM-SHA-256$2147483647:{salt}${key}:{key}");
    assert_eq!(
        Secret::parse(&max).unwrap().scram().unwrap().iterations(),
        i32::MAX as u32
    );
}

#[test]
fn debug_never_shows_secret_material() {
    let golden = Secret::parse(GOLDEN).unwrap();
    assert_eq!(format!("{golden:?}"), "Secret::Scram(<4096 iterations>)");
    let md5 = Secret::parse(MD5_PASSWORD_USER).unwrap();
    assert_eq!(format!("{md5:?}"), "Secret::Md5(<hidden>)");
    let file = AuthFile::parse(
        &format!("golden {GOLDEN}\nuser {MD5_PASSWORD_USER}\n"),
        Path::new("auth"),
    )
    .unwrap();
    let debug = format!("{file:?} {:#?}", file.get("golden"));
    assert!(
        debug.contains("golden") && debug.contains("4096 iterations"),
        "{debug}"
    );
    for part in ["FDXm7", "Ke+Lw", "YW5E2", "4d4597"] {
        assert!(!debug.contains(part), "{debug}");
    }
}

fn parse(text: &str) -> Result<AuthFile, AuthFileError> {
    AuthFile::parse(text, Path::new("/etc/walrelay/users"))
}

#[test]
fn auth_file_lines() {
    let text = format!(
        "# users of the relay\n\
         \n\
         golden {GOLDEN}\n\
         \t\"user\"   \"{MD5_PASSWORD_USER}\"   # an old one\r\n\
         \"with space \"\"quoted\"\"\" {MD5_PASSWORD_USER}\n\
         #\"nobody\" {GOLDEN}\n\
         caf\u{e9} {GOLDEN}#trailing comment\n"
    );
    let file = parse(&text).unwrap();
    assert_eq!(
        file.users().collect::<Vec<_>>(),
        ["caf\u{e9}", "golden", "user", "with space \"quoted\""]
    );
    assert_eq!(file.len(), 4);
    assert_eq!(file.get("golden").unwrap().to_string(), GOLDEN);
    assert_eq!(file.get("user").unwrap().to_string(), MD5_PASSWORD_USER);
    assert!(file.get("with space \"quoted\"").is_some());
    assert!(file.get("Golden").is_none(), "names are case-sensitive");
    assert!(file.get("nobody").is_none());
    assert!(parse("").unwrap().is_empty());
    assert!(parse("# nothing\n\n   \n").unwrap().is_empty());
}

#[test]
fn auth_file_errors_name_the_line_and_hide_the_secret() {
    let cases = [
        (
            format!("a {GOLDEN}\nb\n"),
            2,
            "no secret after the user name",
        ),
        (
            format!("a {GOLDEN}\nb # x\n"),
            2,
            "no secret after the user name",
        ),
        ("\"\" md5x\n".to_owned(), 1, "empty user name"),
        (
            "\"a b pencil\n".to_owned(),
            1,
            "unterminated quoted user name",
        ),
        (
            "\"a\"b pencil\n".to_owned(),
            1,
            "unexpected text right after the quoted user name",
        ),
        ("a \"pencil\n".to_owned(), 1, "unterminated quoted secret"),
        (
            "a \"pencil\"x\n".to_owned(),
            1,
            "unexpected text right after the quoted secret",
        ),
        (
            "a my secret pencil\n".to_owned(),
            1,
            "unexpected text after the secret",
        ),
        (
            "\n\nalice pencil\n".to_owned(),
            3,
            "the secret of user \"alice\" is refused: not a SCRAM-SHA-256 secret or an MD5 \
             hash (a plaintext password is never accepted)",
        ),
        (
            format!("alice {}\n", GOLDEN.replace("4096", "x")),
            1,
            "the secret of user \"alice\" is refused: malformed SCRAM-SHA-256 secret: invalid \
             iteration count",
        ),
        (
            format!("a {GOLDEN}\nb {GOLDEN}\n\"a\" {MD5_PASSWORD_USER}\n"),
            3,
            "user \"a\" is listed twice (first on line 1)",
        ),
    ];
    for (text, line, message) in cases {
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e,
            AuthFileError {
                file: "/etc/walrelay/users".into(),
                line,
                message: message.to_owned(),
            },
            "{text:?}"
        );
        let shown = e.to_string();
        assert_eq!(shown, format!("/etc/walrelay/users:{line}: {message}"));
        for part in ["pencil", "Ke+Lw", "4d4597"] {
            assert!(!shown.contains(part), "{shown}");
        }
    }
}
