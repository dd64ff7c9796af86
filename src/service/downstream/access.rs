//! What decides who may connect downstream and how: the port's certificate, the access rules,
//! the users' secrets and the name maps, read from the files [`AccessFiles`] names at start and
//! again on reload. A reload that fails keeps what was there, as PostgreSQL keeps its old
//! `pg_hba.conf`; one that succeeds logs what changed. Connections keep what they came with.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::config::AccessFiles;
use crate::proto::access::{HbaError, HbaFile, IdentFile, LocalNetwork};
use crate::proto::auth::server::MOCK_NONCE_LEN;
use crate::proto::auth::{AuthFile, AuthFileError};
use crate::proto::downstream::AccessPolicy;
use crate::service::tls::server::{ServerTls, ServerTlsError};

/// The file in the data directory that holds the secret mock SCRAM salts are derived from.
pub const MOCK_NONCE_FILE: &str = "mock_auth_nonce";

/// Why the access files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The certificate, key or CA file.
    #[error(transparent)]
    Tls(#[from] ServerTlsError),
    /// A file cannot be read.
    #[error("could not read \"{}\": {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The hba or ident file (or one they include) has a line that does not parse.
    #[error("{0}")]
    Rules(#[from] HbaError),
    /// The auth file has a line that does not parse.
    #[error("invalid auth file {0}")]
    Users(#[from] AuthFileError),
    /// The auth file may be read by others.
    #[error(
        "auth file \"{}\" has group or world access; it must have permissions u=rw (0600) or less",
        .0.display()
    )]
    UsersAccess(PathBuf),
    /// The mock-authentication secret cannot be read or made.
    #[error("could not prepare \"{}\": {source}", path.display())]
    MockNonce {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The certificate and rules, as one value: replaced whole on reload.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// The certificate and key, for SSLRequest and direct TLS.
    pub(crate) tls: Option<ServerTls>,
    /// The rules, secrets and maps sessions decide with.
    pub(crate) policy: Arc<AccessPolicy>,
}

impl Access {
    /// Reads the files; `mock_nonce` is the relay's stable secret for mock salts.
    ///
    /// # Errors
    /// The first file that cannot be read or parsed.
    pub(crate) fn load(
        files: &AccessFiles,
        mock_nonce: [u8; MOCK_NONCE_LEN],
    ) -> Result<Access, AccessError> {
        let tls = match (&files.ssl_cert_file, &files.ssl_key_file) {
            (Some(cert), Some(key)) => Some(ServerTls::load(
                cert,
                key,
                files.ssl_ca_file.as_deref(),
                files.ssl_min_protocol_version,
            )?),
            _ => None,
        };
        let hba = match &files.hba_file {
            None => None,
            Some(path) => {
                let text = read(path)?;
                Some(HbaFile::parse(
                    &text,
                    &path.display().to_string(),
                    &mut include,
                )?)
            }
        };
        let ident = match &files.ident_file {
            None => IdentFile::default(),
            Some(path) => {
                IdentFile::parse(&read(path)?, &path.display().to_string(), &mut include)?
            }
        };
        let users = match &files.auth_file {
            None => AuthFile::default(),
            Some(path) => {
                let meta = fs::metadata(path).map_err(|source| AccessError::Read {
                    path: path.clone(),
                    source,
                })?;
                if meta.mode() & 0o077 != 0 {
                    return Err(AccessError::UsersAccess(path.clone()));
                }
                AuthFile::parse(&read(path)?, path)?
            }
        };
        let policy = AccessPolicy {
            hba,
            users,
            ident,
            local_networks: local_networks(),
            client_ca: files.ssl_ca_file.is_some() && tls.is_some(),
            mock_nonce,
        };
        Ok(Access {
            tls,
            policy: Arc::new(policy),
        })
    }

    /// What a reload from `self` to `new` changes, one line each.
    pub(crate) fn changes(&self, new: &Access) -> Vec<String> {
        let mut changes = Vec::new();
        let describe = |tls: &Option<ServerTls>| {
            tls.as_ref()
                .map_or_else(|| "none".to_owned(), |t| t.description().to_owned())
        };
        let (old_tls, new_tls) = (describe(&self.tls), describe(&new.tls));
        if old_tls != new_tls {
            changes.push(format!("certificate: {old_tls} -> {new_tls}"));
        }
        let rules = |p: &AccessPolicy| -> Vec<String> {
            p.hba
                .as_ref()
                .map(|h| h.rules().iter().map(|r| r.describe()).collect())
                .unwrap_or_default()
        };
        let (old_rules, new_rules) = (rules(&self.policy), rules(&new.policy));
        for gone in old_rules.iter().filter(|r| !new_rules.contains(r)) {
            changes.push(format!("rule removed: {gone}"));
        }
        for added in new_rules.iter().filter(|r| !old_rules.contains(r)) {
            changes.push(format!("rule added: {added}"));
        }
        let users =
            |p: &AccessPolicy| -> Vec<String> { p.users.users().map(String::from).collect() };
        let (old_users, new_users) = (users(&self.policy), users(&new.policy));
        for gone in old_users.iter().filter(|u| !new_users.contains(u)) {
            changes.push(format!("user removed: {gone}"));
        }
        for added in new_users.iter().filter(|u| !old_users.contains(u)) {
            changes.push(format!("user added: {added}"));
        }
        let changed_secrets = new_users
            .iter()
            .filter(|u| {
                old_users.contains(u) && self.policy.users.get(u) != new.policy.users.get(u)
            })
            .count();
        if changed_secrets > 0 {
            changes.push(format!("secrets changed: {changed_secrets} user(s)"));
        }
        let maps = |p: &AccessPolicy| -> Vec<(String, String, String)> {
            p.ident
                .lines()
                .iter()
                .map(|l| {
                    (
                        l.map().to_owned(),
                        l.system_user().to_owned(),
                        l.database_user().to_owned(),
                    )
                })
                .collect()
        };
        if maps(&self.policy) != maps(&new.policy) {
            changes.push(format!(
                "user name maps: {} lines",
                new.policy.ident.lines().len()
            ));
        }
        changes
    }
}

/// What the access files are read from, again on reload ([`super::ServerContext::reload`]).
#[derive(Debug, Clone)]
pub(crate) struct Reload {
    pub(crate) files: AccessFiles,
    pub(crate) mock_nonce: [u8; MOCK_NONCE_LEN],
}

fn read(path: &Path) -> Result<String, AccessError> {
    fs::read_to_string(path).map_err(|source| AccessError::Read {
        path: path.to_owned(),
        source,
    })
}

/// An included file's text; an empty error for a missing one (`include_if_exists` skips it).
fn include(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => String::new(),
        _ => e.to_string(),
    })
}

/// The machine's networks, for `samehost` and `samenet`; none when they cannot be listed.
fn local_networks() -> Vec<LocalNetwork> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .map(|i| match i.addr {
                if_addrs::IfAddr::V4(a) => LocalNetwork {
                    addr: a.ip.into(),
                    prefix_len: a.prefixlen,
                },
                if_addrs::IfAddr::V6(a) => LocalNetwork {
                    addr: a.ip.into(),
                    prefix_len: a.prefixlen,
                },
            })
            .collect(),
        Err(e) => {
            warn!(error = %e, "could not list the network interfaces: samehost and samenet match nothing");
            Vec::new()
        }
    }
}

/// The relay's secret for mock SCRAM salts, made once and kept in the data directory, so that
/// an unknown user's salt stays the same across restarts.
///
/// # Errors
/// The file cannot be read or written, or holds something else.
pub(crate) fn mock_nonce(data_dir: &Path) -> Result<[u8; MOCK_NONCE_LEN], AccessError> {
    let path = data_dir.join(MOCK_NONCE_FILE);
    let err = |source| AccessError::MockNonce {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            return <[u8; MOCK_NONCE_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("expected {MOCK_NONCE_LEN} bytes, found {}", bytes.len()),
                ))
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut nonce = [0u8; MOCK_NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| err(io::Error::other(e.to_string())))?;
    let tmp = data_dir.join(format!("{MOCK_NONCE_FILE}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    io::Write::write_all(&mut file, &nonce).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    Ok(nonce)
}

/// Fresh random bytes for one connection's authentication exchange; `None` when the system
/// has none to give, and the connection is then closed rather than served with a guessable
/// nonce.
pub(crate) fn connection_nonce<const N: usize>() -> Option<[u8; N]> {
    let mut nonce = [0u8; N];
    match getrandom::fill(&mut nonce) {
        Ok(()) => Some(nonce),
        Err(e) => {
            warn!(error = %e, "could not draw random bytes: closing the connection");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(rules: &str, users: &str) -> Access {
        let hba = HbaFile::parse(rules, "hba.conf", &mut |_| Err(String::new())).unwrap();
        let policy = AccessPolicy {
            hba: Some(hba),
            users: AuthFile::parse(users, Path::new("users")).unwrap(),
            ..AccessPolicy::default()
        };
        Access {
            tls: None,
            policy: Arc::new(policy),
        }
    }

    #[test]
    fn a_reload_names_what_changed_and_no_secret() {
        let a = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$OuTqPhNEm2pgBOKlg5fOUOnKqdqLe3GPctgjAI5hDTI=:1Dbr5U7lT7vvpkS/4ttVWcbfZDOxQxRfKDWDn30QpyU=";
        let b = "md5a3556571e93b0d20722ba62be61e8c2d";
        let old = access(
            "host replication alice 10.0.0.0/8 scram-sha-256\nhost replication all 127.0.0.1/32 trust\n",
            &format!("alice {a}\nbob {b}\n"),
        );
        let new = access(
            "host replication alice 10.0.0.0/8 scram-sha-256\nhostssl replication carol 10.0.0.0/8 cert\n",
            &format!("alice {b}\ncarol {a}\n"),
        );
        let changes = old.changes(&new);
        assert_eq!(changes.len(), 5, "{changes:#?}");
        assert!(changes[0].starts_with("rule removed: ") && changes[0].contains("127.0.0.1/32"));
        assert!(changes[1].starts_with("rule added: ") && changes[1].contains("carol"));
        assert_eq!(changes[2], "user removed: bob");
        assert_eq!(changes[3], "user added: carol");
        assert_eq!(changes[4], "secrets changed: 1 user(s)");
        assert!(
            changes
                .iter()
                .all(|c| !c.contains("SCRAM") && !c.contains("md5a"))
        );
        assert!(old.changes(&old).is_empty());
    }
}
