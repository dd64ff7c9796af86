//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`): matching logic only.
//!
//! This mirrors libpq's `passwordFromFile` and `pwdfMatchesString` (`fe-connect.c`). Each line
//! is `hostname:port:database:username:password`; a field that is exactly `*` matches
//! anything; `\:` and `\\` escape; a line starting with `#` is a comment; the first matching
//! line wins. libpq skips a file that is not a regular file or that the group or others can
//! access: [`check_mode`] is that rule on a `st_mode` value. Reading the file is the service's
//! job; everything here works on text.
//!
//! For a physical replication connection the database to match is the literal
//! `replication`, which is what the walreceiver's libpq sends.

use crate::proto::conninfo::Password;

/// Why libpq would ignore a password file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassfileRejected {
    /// A directory, socket or other non-regular file.
    #[error("is not a plain file")]
    NotPlainFile,
    /// Any permission bit for group or others is set.
    #[error("has group or world access; permissions should be u=rw (0600) or less")]
    GroupOrWorldAccess,
}

/// What one lookup matches against: the first line whose four fields all match wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassfileKey<'a> {
    /// `host` if given, else `hostaddr` ([`crate::proto::conninfo::Endpoint::pgpass_host`]);
    /// empty means `localhost`.
    pub host: &'a str,
    /// The port.
    pub port: u16,
    /// The database name; `replication` for physical replication connections.
    pub dbname: &'a str,
    /// The user name.
    pub user: &'a str,
}

/// Checks a password file's `st_mode` the way libpq does before reading it.
///
/// # Errors
/// [`PassfileRejected`] when libpq would skip the file with a warning.
pub fn check_mode(mode: u32) -> Result<(), PassfileRejected> {
    const S_IFMT: u32 = 0o170_000;
    const S_IFREG: u32 = 0o100_000;
    if mode & S_IFMT != S_IFREG {
        return Err(PassfileRejected::NotPlainFile);
    }
    if mode & 0o077 != 0 {
        return Err(PassfileRejected::GroupOrWorldAccess);
    }
    Ok(())
}

/// The password of the first line of `text` matching `key`, or `None`.
///
/// An empty password on the matching line counts as none, as it does in libpq. An empty
/// database or user name never matches anything.
pub fn lookup(text: &str, key: &PassfileKey<'_>) -> Option<Password> {
    if key.dbname.is_empty() || key.user.is_empty() {
        return None;
    }
    let host = if key.host.is_empty() {
        "localhost"
    } else {
        key.host
    };
    let port = key.port.to_string();
    let wanted = [host, port.as_str(), key.dbname, key.user];
    let password = text.lines().find_map(|line| {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.starts_with('#') {
            return None;
        }
        let mut rest = line;
        for token in wanted {
            rest = match_field(rest, token)?;
        }
        Some(unescape_password(rest))
    })?;
    (!password.is_empty()).then(|| Password::new(password))
}

/// `pwdfMatchesString`: if the field at the start of `line` matches `token`, the text after
/// its terminating `:`.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut field = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => field.push(chars.next()?.1),
            ':' => return (field == token).then(|| line.get(i + 1..).unwrap_or("")),
            _ => field.push(c),
        }
    }
    None
}

/// The password field: escapes removed, ending at the first unescaped `:`.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => out.push(chars.next().unwrap_or('\\')),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
        let key = PassfileKey {
            host,
            port,
            dbname,
            user,
        };
        lookup(text, &key).map(|p| p.expose().to_owned())
    }

    #[test]
    fn first_match_wins_with_wildcards() {
        let text = "\
# comment line
db1:5432:replication:repl:first
db1:5432:*:repl:second
*:*:*:repl:third
*:*:*:*:fallback
";
        assert_eq!(
            find(text, "db1", 5432, "replication", "repl").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(text, "db1", 5432, "postgres", "repl").as_deref(),
            Some("second")
        );
        assert_eq!(
            find(text, "db2", 6000, "replication", "repl").as_deref(),
            Some("third")
        );
        assert_eq!(
            find(text, "db2", 6000, "x", "other").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            find(
                "db1:5432:replication:repl:pw",
                "db1",
                5433,
                "replication",
                "repl"
            ),
            None
        );
        // libpq compares the port as text.
        assert_eq!(find("h:05432:*:*:pw", "h", 5432, "d", "u"), None);
    }

    #[test]
    fn escapes() {
        let text = r"h\:x:5432:d\\b:u\*:pa\:ss\\word:ignored";
        assert_eq!(
            find(text, "h:x", 5432, r"d\b", "u*").as_deref(),
            Some(r"pa:ss\word")
        );
        // `\*` is a literal star, not a wildcard.
        assert_eq!(find(r"\*:5432:d:u:pw", "h", 5432, "d", "u"), None);
        assert_eq!(
            find(r"\*:5432:d:u:pw", "*", 5432, "d", "u").as_deref(),
            Some("pw")
        );
        // `*` is a wildcard only as a whole field.
        assert_eq!(find("h*:5432:d:u:pw", "hx", 5432, "d", "u"), None);
        // A trailing lone backslash in the password stays.
        assert_eq!(
            find(r"h:5432:d:u:pw\", "h", 5432, "d", "u").as_deref(),
            Some(r"pw\")
        );
    }

    #[test]
    fn odd_lines() {
        let text = "h:5432:d:u\n\n  # not a comment:5432:d:u:x\r\nh:5432:d:u:\nh:5432:d:u:late\r\n";
        // The short first line never matches; the empty password on the third stops the
        // search, as in libpq.
        assert_eq!(find(text, "h", 5432, "d", "u"), None);
        assert_eq!(
            find(text, "  # not a comment", 5432, "d", "u").as_deref(),
            Some("x")
        );
        assert_eq!(
            find("h:5432:d:u:crlf\r\n", "h", 5432, "d", "u").as_deref(),
            Some("crlf")
        );
        assert_eq!(
            find("localhost:5432:d:u:pw", "", 5432, "d", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(find("*:*:*:*:pw", "h", 5432, "", "u"), None);
        assert_eq!(find("*:*:*:*:pw", "h", 5432, "d", ""), None);
        assert_eq!(
            find("höst:5432:d:ü:pw", "höst", 5432, "d", "ü").as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let key = PassfileKey {
            host: "h",
            port: 1,
            dbname: "d",
            user: "u",
        };
        let found = lookup("h:1:d:u:hunter2", &key).unwrap();
        assert!(!format!("{found:?}").contains("hunter2"));
    }

    #[test]
    fn mode_rule() {
        assert_eq!(check_mode(0o100_600), Ok(()));
        assert_eq!(check_mode(0o100_400), Ok(()));
        assert_eq!(
            check_mode(0o100_640),
            Err(PassfileRejected::GroupOrWorldAccess)
        );
        assert_eq!(
            check_mode(0o100_604),
            Err(PassfileRejected::GroupOrWorldAccess)
        );
        assert_eq!(check_mode(0o040_700), Err(PassfileRejected::NotPlainFile));
        assert_eq!(check_mode(0o120_777), Err(PassfileRejected::NotPlainFile));
        assert_eq!(
            PassfileRejected::GroupOrWorldAccess.to_string(),
            "has group or world access; permissions should be u=rw (0600) or less"
        );
    }
}
