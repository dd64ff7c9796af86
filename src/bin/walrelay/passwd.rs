//! `walrelay passwd USER`: a line for the auth file, with a SCRAM-SHA-256 verifier made as
//! PostgreSQL makes one (`pg_be_scram_build_secret`), from a password read from the terminal
//! with echo off, or from one line of standard input when that is not a terminal.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use walrelay::proto::auth::Secret;
use walrelay::proto::auth::secret::SCRAM_DEFAULT_SALT_LEN;

/// Reads the password and prints the line.
///
/// # Errors
/// No password could be read, the two entries differ, or it is empty.
pub fn run(user: &str, iterations: u32) -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Enter password for user \"{user}\": "))
            .context("could not read the password")?;
        let again = rpassword::prompt_password("Enter it again: ")
            .context("could not read the password")?;
        if first != again {
            bail!("Passwords didn't match.");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("could not read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("empty password: a user without a password cannot log in with one");
    }
    let mut salt = [0u8; SCRAM_DEFAULT_SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("could not draw a salt: {e}"))?;
    let secret = Secret::scram_from_password(password.as_bytes(), salt, iterations);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} {secret}", quoted(user))?;
    Ok(())
}

/// The user name as the auth file reads it: bare when it has no blank, `#` or `"`, else in
/// double quotes with `"` doubled.
fn quoted(user: &str) -> String {
    let bare = !user.is_empty()
        && !user
            .chars()
            .any(|c| c.is_whitespace() || c == '#' || c == '"');
    if bare {
        user.to_owned()
    } else {
        format!("\"{}\"", user.replace('"', "\"\""))
    }
}
