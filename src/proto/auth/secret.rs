//! Stored password secrets, as PostgreSQL 15 keeps them in `pg_authid.rolpassword`, and the
//! relay's auth file that lists them per user.
//!
//! Mirrors `crypt.c` (`get_password_type`, `plain_crypt_verify`), `auth-scram.c`
//! (`parse_scram_secret`, `scram_verify_plain_password`, `pg_be_scram_build_secret`) and
//! `scram-common.c` (`scram_build_secret`). Only the two hashed forms are accepted, never a
//! plaintext password (PostgreSQL's `PASSWORD_TYPE_PLAINTEXT`).
//!
//! No error text and no `Debug` output contains a secret, a key or a password; `Display`
//! prints the verifier itself, for writing an auth file and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::common::{self, Key, b64, ct_eq, prepare_password, unb64};

/// `SCRAM_DEFAULT_ITERATIONS`: the iteration count PostgreSQL 15 gives every new secret.
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;

/// `SCRAM_DEFAULT_SALT_LEN`: the salt length of a new secret, in bytes.
pub const SCRAM_DEFAULT_SALT_LEN: usize = 16;

/// The largest iteration count a secret may have: PostgreSQL keeps it in an `int`.
pub const MAX_SECRET_ITERATIONS: u32 = i32::MAX as u32;

/// A stored password secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    Scram(ScramSecret),
    /// `md5` and the hex MD5 of the password followed by the user name; the 16 digest bytes.
    Md5([u8; 16]),
}

/// The parts of a SCRAM-SHA-256 secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

/// The two kinds of secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// A SCRAM-SHA-256 secret: usable by `scram-sha-256`, `md5` (which then runs SCRAM, as
    /// `auth.c:CheckPWChallengeAuth` does) and `password`.
    Scram,
    /// An MD5 hash: usable by `md5` and `password`; a SCRAM exchange with it always fails.
    Md5,
}

/// Why a text is not a secret. Never holds any part of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Neither form: PostgreSQL would take it for a plaintext password, which is never stored.
    #[error("not a SCRAM-SHA-256 secret or an MD5 hash (a plaintext password is never accepted)")]
    Unrecognized,
    /// `SCRAM-SHA-256$` followed by something else than PostgreSQL's form.
    #[error("malformed SCRAM-SHA-256 secret: {0}")]
    Scram(&'static str),
    /// `md5` followed by something else than 32 lowercase hexadecimal digits.
    #[error("malformed MD5 hash: \"md5\" must be followed by 32 lowercase hexadecimal digits")]
    Md5,
}

impl ScramSecret {
    /// The PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt (its raw bytes; sent in base64 in the server-first-message).
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub(crate) fn stored_key(&self) -> &Key {
        &self.stored_key
    }

    pub(crate) fn server_key(&self) -> &Key {
        &self.server_key
    }

    /// `scram_build_secret`: the keys derived from a password already prepared.
    fn derive(prepared: &[u8], salt: Vec<u8>, iterations: u32) -> ScramSecret {
        let salted = common::salted_password(prepared, &salt, iterations);
        ScramSecret {
            iterations,
            stored_key: common::sha256(&common::client_key(&salted)),
            server_key: common::server_key(&salted),
            salt,
        }
    }
}

impl Secret {
    /// Parses a secret exactly as PostgreSQL writes one: `SCRAM-SHA-256$<iterations>:<base64
    /// salt>$<base64 StoredKey>:<base64 ServerKey>` (an iteration count of 1 to 2^31-1 in
    /// plain decimal, a non-empty salt, 32-byte keys), or `md5` and 32 lowercase hex digits.
    ///
    /// Stricter than `parse_scram_secret`, which reads its fields with `strtok` and `strtol`:
    /// empty fields, a sign or spaces before the count, and base64 with padding inside are
    /// refused, none of which PostgreSQL ever writes.
    ///
    /// # Errors
    /// [`SecretError`] for anything else, a plaintext password above all.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        if let Some(rest) = text.strip_prefix("SCRAM-SHA-256$") {
            return parse_scram(rest).map(Secret::Scram);
        }
        if let Some(hex) = text.strip_prefix("md5") {
            return parse_md5_hex(hex.as_bytes())
                .map(Secret::Md5)
                .ok_or(SecretError::Md5);
        }
        Err(SecretError::Unrecognized)
    }

    /// A SCRAM-SHA-256 secret for `password`, as `pg_be_scram_build_secret` makes one: the
    /// password prepared with SASLprep where that succeeds, the caller's random salt, and
    /// `iterations` (0 means [`SCRAM_DEFAULT_ITERATIONS`]; at most [`MAX_SECRET_ITERATIONS`]).
    pub fn scram_from_password(
        password: impl AsRef<[u8]>,
        salt: [u8; SCRAM_DEFAULT_SALT_LEN],
        iterations: u32,
    ) -> Secret {
        let iterations = match iterations {
            0 => SCRAM_DEFAULT_ITERATIONS,
            n => n.min(MAX_SECRET_ITERATIONS),
        };
        let prepared = prepare_password(password.as_ref());
        Secret::Scram(ScramSecret::derive(&prepared, salt.to_vec(), iterations))
    }

    /// An MD5 secret for `password` and `user`, as `encrypt_password` makes one
    /// (`pg_md5_encrypt(password, role)`). MD5 is deprecated; prefer SCRAM.
    pub fn md5_from_password(password: impl AsRef<[u8]>, user: &str) -> Secret {
        Secret::Md5(common::md5(&[password.as_ref(), user.as_bytes()]))
    }

    /// Which kind of secret this is.
    pub fn kind(&self) -> SecretKind {
        match self {
            Secret::Scram(_) => SecretKind::Scram,
            Secret::Md5(_) => SecretKind::Md5,
        }
    }

    /// The SCRAM parts, if this is a SCRAM secret.
    pub fn scram(&self) -> Option<&ScramSecret> {
        match self {
            Secret::Scram(s) => Some(s),
            Secret::Md5(_) => None,
        }
    }

    /// Checks a cleartext password (the `password` method), as `plain_crypt_verify` does: for
    /// SCRAM, `scram_verify_plain_password` derives the ServerKey from the prepared password
    /// and compares it; for MD5, `pg_md5_encrypt(password, user)` is compared with the hash.
    /// Both comparisons take constant time. A password holding a NUL byte never matches (a
    /// PostgreSQL password packet cannot carry one). The SCRAM check costs the secret's
    /// iteration count in PBKDF2 work.
    pub fn verify_password(&self, user: &str, password: &[u8]) -> bool {
        if password.contains(&0) {
            return false;
        }
        match self {
            Secret::Scram(s) => {
                let prepared = prepare_password(password);
                let salted = common::salted_password(&prepared, &s.salt, s.iterations);
                ct_eq(&common::server_key(&salted), &s.server_key)
            }
            Secret::Md5(digest) => ct_eq(&common::md5(&[password, user.as_bytes()]), digest),
        }
    }

    /// The `md5…` text of an MD5 secret (35 bytes), which the MD5 challenge is computed from.
    pub(crate) fn md5_text(&self) -> Option<[u8; 35]> {
        match self {
            Secret::Md5(digest) => Some(common::md5_text(digest)),
            Secret::Scram(_) => None,
        }
    }
}

fn parse_scram(rest: &str) -> Result<ScramSecret, SecretError> {
    let err = SecretError::Scram;
    let (iterations, rest) = rest
        .split_once(':')
        .ok_or(err("expected \"<iterations>:<salt>\""))?;
    let iterations = Some(iterations)
        .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|i| i.parse::<u32>().ok())
        .filter(|i| (1..=MAX_SECRET_ITERATIONS).contains(i))
        .ok_or(err("invalid iteration count"))?;
    let (salt, keys) = rest
        .split_once('$')
        .ok_or(err("expected \"$\" after the salt"))?;
    let (stored, server) = keys
        .split_once(':')
        .ok_or(err("expected \"<StoredKey>:<ServerKey>\""))?;
    let salt = unb64(salt.as_bytes())
        .filter(|s| !s.is_empty())
        .ok_or(err("invalid salt"))?;
    let key = |text: &str, what| {
        unb64(text.as_bytes())
            .and_then(|k| Key::try_from(k).ok())
            .ok_or(err(what))
    };
    Ok(ScramSecret {
        iterations,
        salt,
        stored_key: key(stored, "invalid StoredKey")?,
        server_key: key(server, "invalid ServerKey")?,
    })
}

/// 32 lowercase hex digits (`MD5_PASSWD_CHARSET`) to 16 bytes.
fn parse_md5_hex(hex: &[u8]) -> Option<[u8; 16]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = nibble(*hi)? << 4 | nibble(*lo)?;
    }
    Some(out)
}

impl fmt::Display for Secret {
    /// The verifier as PostgreSQL stores it. This is secret material: write it to an auth
    /// file, never to a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Scram(s) => write!(
                f,
                "SCRAM-SHA-256${}:{}${}:{}",
                s.iterations,
                b64(&s.salt),
                b64(&s.stored_key),
                b64(&s.server_key)
            ),
            Secret::Md5(digest) => {
                let text = common::md5_text(digest);
                f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
            }
        }
    }
}

impl fmt::Debug for Secret {
    /// The kind (and iteration count) only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Scram(s) => write!(f, "Secret::Scram({s:?})"),
            Secret::Md5(_) => f.write_str("Secret::Md5(<hidden>)"),
        }
    }
}

impl fmt::Debug for ScramSecret {
    /// The iteration count only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} iterations>", self.iterations)
    }
}

/// The relay's auth file: one `USERNAME SECRET` line per user.
///
/// The user name is a run of characters other than blanks and `#`, or a double-quoted string
/// (`""` inside it stands for one `"`); the secret may be double-quoted too, as in a PgBouncer
/// `userlist.txt`.
/// Blank lines and lines starting with `#` are skipped, and a `#` comment may follow the
/// secret. A line that does not parse, a secret that is not a SCRAM-SHA-256 verifier or an
/// MD5 hash, and a user listed twice are errors naming the line; no error shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthFile {
    users: BTreeMap<String, Secret>,
}

/// Why an auth file was refused: the file, the line (from 1) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct AuthFileError {
    /// The file, as the caller named it.
    pub file: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong; never contains the secret.
    pub message: String,
}

impl AuthFile {
    /// Parses the text of an auth file; `file` only names it in errors.
    ///
    /// # Errors
    /// [`AuthFileError`] at the first line that is wrong.
    pub fn parse(text: &str, file: &Path) -> Result<AuthFile, AuthFileError> {
        let mut users = BTreeMap::new();
        let mut first_line = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |message: String| AuthFileError {
                file: file.to_path_buf(),
                line,
                message,
            };
            let Some((user, secret)) = parse_line(raw).map_err(|m| error(m.to_owned()))? else {
                continue;
            };
            let secret = Secret::parse(&secret)
                .map_err(|e| error(format!("the secret of user {user:?} is refused: {e}")))?;
            if let Some(first) = first_line.insert(user.clone(), line) {
                return Err(error(format!(
                    "user {user:?} is listed twice (first on line {first})"
                )));
            }
            users.insert(user, secret);
        }
        Ok(AuthFile { users })
    }

    /// The secret of `user`, if the file lists it.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// The user names, in order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl fmt::Debug for AuthFile {
    /// The user names and the kinds of their secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.users.iter()).finish()
    }
}

/// One line: `None` if blank or a comment, else the user name and the secret's text.
fn parse_line(line: &str) -> Result<Option<(String, String)>, &'static str> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = field(
        rest,
        "unterminated quoted user name",
        "unexpected text right after the quoted user name",
    )?;
    if user.is_empty() {
        return Err("empty user name");
    }
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        return Err("no secret after the user name");
    }
    let (secret, rest) = field(
        rest,
        "unterminated quoted secret",
        "unexpected text right after the quoted secret",
    )?;
    let rest = rest.trim_start();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return Err("unexpected text after the secret");
    }
    Ok(Some((user, secret)))
}

/// A double-quoted string or a run of characters other than blanks and `#`, and what follows
/// it.
fn field<'a>(
    text: &'a str,
    unterminated: &'static str,
    trailing: &'static str,
) -> Result<(String, &'a str), &'static str> {
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text
            .find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(text.len());
        let (value, rest) = text.split_at(end);
        return Ok((value.to_owned(), rest));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            value.push(c);
            continue;
        }
        let after = quoted.get(i + 1..).unwrap_or("");
        if after.starts_with('"') {
            value.push('"');
            chars.next();
        } else if after.is_empty() || after.starts_with(|c: char| c.is_whitespace() || c == '#') {
            return Ok((value, after));
        } else {
            return Err(trailing);
        }
    }
    Err(unterminated)
}
