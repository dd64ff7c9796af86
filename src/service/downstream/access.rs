//! What decides who may connect downstream and how: the port's certificate and the access
//! rules, read from the files [`AccessFiles`] names, at start and again on reload. A reload
//! that fails keeps what was there, as PostgreSQL keeps its old `pg_hba.conf`; one that
//! succeeds says what changed. Connections keep what they came with.

use tracing::{info, warn};

use crate::config::AccessFiles;
use crate::service::tls::server::{ServerTls, ServerTlsError};

/// Why the access files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The certificate, key or CA file.
    #[error(transparent)]
    Tls(#[from] ServerTlsError),
}

/// The certificate and rules, as one value: replaced whole on reload.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// The certificate and key, for SSLRequest and direct TLS.
    pub(crate) tls: Option<ServerTls>,
}

impl Access {
    /// Reads the files.
    ///
    /// # Errors
    /// The first file that cannot be read or parsed.
    pub(crate) fn load(files: &AccessFiles) -> Result<Access, AccessError> {
        let tls = match (&files.ssl_cert_file, &files.ssl_key_file) {
            (Some(cert), Some(key)) => Some(ServerTls::load(
                cert,
                key,
                files.ssl_ca_file.as_deref(),
                files.ssl_min_protocol_version,
            )?),
            _ => None,
        };
        Ok(Access { tls })
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
        changes
    }
}

/// Reads the access files again for the connections that come next.
#[derive(Debug, Clone)]
pub(crate) struct Reload {
    pub(crate) files: AccessFiles,
}

impl Reload {
    /// Reads the files again and logs what changed; on an error, logs it and keeps the old.
    pub(crate) fn apply(&self, ctx: &super::ServerContext) -> Result<(), AccessError> {
        match Access::load(&self.files) {
            Err(e) => {
                warn!(error = %e, "configuration file not reloaded: keeping the current access rules and certificate");
                Err(e)
            }
            Ok(new) => {
                let old = ctx.access();
                let changes = old.changes(&new);
                ctx.set_access(new);
                if changes.is_empty() {
                    info!("configuration reloaded: nothing changed");
                }
                for change in changes {
                    info!(%change, "configuration reloaded");
                }
                Ok(())
            }
        }
    }
}
