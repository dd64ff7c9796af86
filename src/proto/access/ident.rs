//! `pg_ident.conf` user-name maps: which certificate name may log in as which user.
//!
//! This mirrors PostgreSQL 15's `parse_ident_line`, `check_ident_usermap` and
//! `check_usermap` (`hba.c`), error texts included. A line is `MAPNAME SYSTEM-USERNAME
//! PG-USERNAME`, with the same comments, quoting, continuations and includes as
//! `pg_hba.conf`; fields after the third are ignored, as PostgreSQL 15 ignores them. Names
//! are compared exactly and case-sensitively (`cert` authentication passes
//! `case_insensitive = false`), keywords included: as in PostgreSQL 15, `all` and `+role` in
//! the last column are plain names (PostgreSQL 16 gave them a meaning). A system user name
//! starting with `/` is a regular expression to PostgreSQL, and is refused.

use super::HbaError;
use super::token::{self, Line};

/// One map line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentLine {
    file: String,
    line: usize,
    map: String,
    system_user: String,
    database_user: String,
}

impl IdentLine {
    /// The file the line is in.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line number in its file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The map name (first column).
    pub fn map(&self) -> &str {
        &self.map
    }

    /// The system user name (second column): for `cert`, the certificate's CN.
    pub fn system_user(&self) -> &str {
        &self.system_user
    }

    /// The database user name it may log in as (third column).
    pub fn database_user(&self) -> &str {
        &self.database_user
    }
}

/// A parsed `pg_ident.conf`: its lines in order. An empty file is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentFile {
    lines: Vec<IdentLine>,
}

impl IdentFile {
    /// Parses the text of `pg_ident.conf`; `file` and `include` are as for
    /// [`super::HbaFile::parse`].
    ///
    /// # Errors
    /// The first line PostgreSQL 15 would refuse, or one with a regular expression.
    pub fn parse(
        text: &str,
        file: &str,
        include: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<IdentFile, HbaError> {
        let lines = token::tokenize(text, file, include)?;
        let lines = lines
            .iter()
            .map(parse_line)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IdentFile { lines })
    }

    /// The lines, in order.
    pub fn lines(&self) -> &[IdentLine] {
        &self.lines
    }

    /// Whether `system_user` may log in as `database_user` under `map` (`check_usermap`). An
    /// empty map name means no map: then the two names must be equal, as PostgreSQL requires
    /// without `map=`.
    pub fn maps(&self, map: &str, system_user: &str, database_user: &str) -> bool {
        if map.is_empty() {
            return system_user == database_user;
        }
        self.matching(map, system_user, database_user).is_some()
    }

    /// The first line of `map` that lets `system_user` log in as `database_user`, for logs.
    pub fn matching(
        &self,
        map: &str,
        system_user: &str,
        database_user: &str,
    ) -> Option<&IdentLine> {
        self.lines.iter().find(|line| {
            line.map == map
                && line.system_user == system_user
                && line.database_user == database_user
        })
    }
}

/// `parse_ident_line`.
fn parse_line(line: &Line) -> Result<IdentLine, HbaError> {
    const MULTIPLE: &str = "multiple values in ident field";
    const MISSING: &str = "missing entry at end of line";
    let mut columns = [String::new(), String::new(), String::new()];
    for (i, column) in columns.iter_mut().enumerate() {
        let Some(tokens) = line.fields.get(i) else {
            return Err(line.error(MISSING));
        };
        column.clone_from(&line.single(tokens, MULTIPLE)?.text);
    }
    let [map, system_user, database_user] = columns;
    if system_user.starts_with('/') {
        return Err(line.error(format!(
            "regular expression \"{system_user}\" is not supported by walrelay"
        )));
    }
    Ok(IdentLine {
        file: line.file.clone(),
        line: line.number,
        map,
        system_user,
        database_user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_files(_: &str) -> Result<String, String> {
        Err(String::new())
    }

    fn parse(text: &str) -> IdentFile {
        IdentFile::parse(text, "pg_ident.conf", &mut no_files).unwrap()
    }

    fn err(text: &str) -> String {
        IdentFile::parse(text, "pg_ident.conf", &mut no_files)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn maps_exactly_and_case_sensitively() {
        let ident = parse(
            "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n\
             certs  standby-a.example.com  replicator\n\
             certs  standby-b.example.com  replicator   # trailing comment\n\
             certs  \"Alice Smith\"  alice\n\
             other  standby-a.example.com  postgres\n",
        );
        assert_eq!(ident.lines().len(), 4);
        assert!(ident.maps("certs", "standby-a.example.com", "replicator"));
        assert!(ident.maps("certs", "standby-b.example.com", "replicator"));
        assert!(ident.maps("certs", "Alice Smith", "alice"));
        assert!(ident.maps("other", "standby-a.example.com", "postgres"));
        assert!(!ident.maps("certs", "standby-a.example.com", "postgres"));
        assert!(!ident.maps("certs", "STANDBY-A.example.com", "replicator"));
        assert!(!ident.maps("certs", "standby-a.example.com", "Replicator"));
        assert!(!ident.maps("Certs", "standby-a.example.com", "replicator"));
        assert!(!ident.maps("missing", "standby-a.example.com", "replicator"));
        let line = ident
            .matching("certs", "standby-b.example.com", "replicator")
            .unwrap();
        assert_eq!((line.file(), line.line()), ("pg_ident.conf", 3));
        assert_eq!(
            (line.map(), line.system_user(), line.database_user()),
            ("certs", "standby-b.example.com", "replicator")
        );
    }

    #[test]
    fn no_map_means_equal_names() {
        let ident = IdentFile::default();
        assert!(ident.maps("", "replicator", "replicator"));
        assert!(!ident.maps("", "replicator", "postgres"));
        assert!(!ident.maps("m", "replicator", "replicator"));
    }

    #[test]
    fn keywords_are_plain_names_as_in_postgresql_15() {
        let ident = parse("m alice all\nm bob +admins\nm \"all\" carol");
        assert!(ident.maps("m", "alice", "all"));
        assert!(!ident.maps("m", "alice", "bob"));
        assert!(ident.maps("m", "bob", "+admins"));
        assert!(ident.maps("m", "all", "carol"));
        assert!(!ident.maps("m", "dave", "carol"));
        // Fields after the third are ignored.
        assert!(parse("m a b c d").maps("m", "a", "b"));
    }

    #[test]
    fn refused_lines() {
        assert_eq!(
            err("m a b\nm a"),
            "missing entry at end of line (line 2 of configuration file \"pg_ident.conf\")"
        );
        assert_eq!(
            err("m"),
            "missing entry at end of line (line 1 of configuration file \"pg_ident.conf\")"
        );
        assert_eq!(
            err("\n\nm a,b c"),
            "multiple values in ident field (line 3 of configuration file \"pg_ident.conf\")"
        );
        assert_eq!(
            err("m,n a c"),
            "multiple values in ident field (line 1 of configuration file \"pg_ident.conf\")"
        );
        assert_eq!(
            err("m a b,c"),
            "multiple values in ident field (line 1 of configuration file \"pg_ident.conf\")"
        );
        assert_eq!(
            err("m /^(.*)@example\\.com$ \\1"),
            "regular expression \"/^(.*)@example\\.com$\" is not supported by walrelay \
             (line 1 of configuration file \"pg_ident.conf\")"
        );
        assert_eq!(
            err("m @users x"),
            "file inclusion \"@users\" is not supported by walrelay; list the names on the line \
             (line 1 of configuration file \"pg_ident.conf\")"
        );
    }

    #[test]
    fn includes_and_empty_files() {
        assert_eq!(parse(""), IdentFile::default());
        assert_eq!(parse("# nothing\n\n"), IdentFile::default());
        let mut files = |path: &str| match path {
            "/etc/pg/maps.conf" => Ok("m cn1 u1\nm /re u2".to_owned()),
            "/etc/pg/ok.conf" => Ok("m cn2 u2".to_owned()),
            _ => Err(String::new()),
        };
        let ident = IdentFile::parse(
            "include ok.conf\ninclude_if_exists gone.conf\nm cn3 u3",
            "/etc/pg/pg_ident.conf",
            &mut files,
        )
        .unwrap();
        assert!(ident.maps("m", "cn2", "u2"));
        assert!(ident.maps("m", "cn3", "u3"));
        let e =
            IdentFile::parse("include maps.conf", "/etc/pg/pg_ident.conf", &mut files).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("/etc/pg/maps.conf", 2));
    }
}
