//! Who may connect to the relay's downstream port, and as whom: access rules in the format of
//! PostgreSQL's `pg_hba.conf`, and user-name maps in the format of `pg_ident.conf`.
//!
//! This mirrors PostgreSQL 15's `hba.c`: the tokenizer (`tokenize_auth_file`, `next_token`),
//! `parse_hba_line`, `check_hba` with `check_db`, `check_role`, `check_ip` and
//! `check_same_host_or_net`, `parse_ident_line` and `check_usermap`, with the same error
//! texts. The `include` and `include_if_exists` records come from PostgreSQL 16. What the
//! relay cannot do (host names, group roles, LDAP and the other outside authentication
//! services, regular expressions, `@file` lists) is refused with an error that says so, and
//! the relay refuses to start: no rule is silently dropped.
//!
//! - [`hba`]: [`HbaFile`], its rules and their matching against an [`HbaRequest`];
//! - [`ident`]: [`IdentFile`], the user-name maps of the `cert` method's `map=` option;
//! - `token`: lines, continuations, comments, quoting, comma lists and includes, for both;
//! - `address`: the address column and its matching.
//!
//! Nothing here reads a file, a network interface or the clock: the caller passes the text of
//! the file, a function that returns the text of an included file, and the addresses of the
//! machine's interfaces.

mod address;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod hba;
pub mod ident;
mod token;

pub use address::{HbaAddress, LocalNetwork};
pub use hba::{
    AuthMethod, ClientCertMode, ConnType, DatabaseSpec, HbaFile, HbaRequest, HbaRule, Transport,
    UserSpec,
};
pub use ident::{IdentFile, IdentLine};
pub use token::MAX_INCLUDE_DEPTH;

use std::fmt;

/// An error in `pg_hba.conf`, `pg_ident.conf` or a file either includes. The relay refuses to
/// start on any.
///
/// It displays as one line: PostgreSQL's message, then its context, e.g. `invalid
/// authentication method "foo" (line 3 of configuration file "/etc/pg_hba.conf")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaError {
    /// The file the error is in: the file given to the parser, or an included file's path as
    /// the include callback received it.
    pub file: String,
    /// The line, counted from 1; a line continued with a backslash counts as the first of its
    /// physical lines. 0 when the error concerns the whole file (a `pg_hba.conf` without
    /// rules).
    pub line: usize,
    /// What is wrong, in PostgreSQL's words where PostgreSQL refuses the same line.
    pub message: String,
}

impl HbaError {
    fn new(file: &str, line: usize, message: impl Into<String>) -> HbaError {
        HbaError {
            file: file.to_owned(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for HbaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(
                f,
                "{} (line {} of configuration file \"{}\")",
                self.message, self.line, self.file
            )
        }
    }
}

impl std::error::Error for HbaError {}
