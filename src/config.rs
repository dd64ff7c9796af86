//! Runtime configuration: the command-line flags and the TOML file they can also be written in.
//!
//! Every flag of `walrelay run` has a key of the same name (with `_` for `-`) in the file given
//! by `--config`; a flag on the command line wins over the file. Durations are written the way
//! PostgreSQL writes them in `postgresql.conf`: a number with `ms`, `s`, `min`, `h` or `d`,
//! and a bare number means seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::types::SlotName;

mod changes;

pub use changes::ConfigChanges;

/// The settings of a running relay.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The upstream connection string (libpq syntax). May hold a password: never log it.
    pub upstream: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The relay's physical slot on the upstream.
    pub upstream_slot: SlotName,
    /// The `application_name` the relay gives the upstream unless the conninfo sets one.
    pub application_name: String,
    /// How often a status update goes upstream at the least.
    pub status_interval: Duration,
    /// How long the upstream may stay silent before the relay reconnects (0 disables).
    pub receive_timeout: Duration,
    /// The first reconnect delay; it doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// The longest reconnect delay.
    pub reconnect_max: Duration,
    /// Where to listen for downstream replication connections (`HOST:PORT`); none when absent.
    pub listen: Option<String>,
    /// A directory for a Unix-domain socket `.s.PGSQL.PORT` (the port of `listen`), as
    /// `unix_socket_directories`; none when absent.
    pub unix_socket_dir: Option<PathBuf>,
    /// Where to serve `/metrics`, `/status`, `/healthz` and `/readyz` over HTTP
    /// (`HOST:PORT`); none when absent.
    pub http_listen: Option<String>,
    /// A file holding the bearer token `/metrics` and `/status` require; none when absent.
    pub http_token_file: Option<PathBuf>,
    /// Most concurrent downstream replication connections.
    pub max_wal_senders: usize,
    /// Most BASE_BACKUPs relayed from the upstream at once; 0 refuses BASE_BACKUP.
    pub max_base_backups: usize,
    /// The connection string of the server BASE_BACKUP is relayed from (libpq syntax);
    /// `None`: the upstream's. May hold a password: never log it.
    pub base_backup_upstream: Option<String>,
    /// Most relay-owned replication slots.
    pub max_replication_slots: usize,
    /// Drop a streaming downstream silent this long; zero disables.
    pub sender_timeout: Duration,
    /// Close a connection that has not logged in after this long.
    pub authentication_timeout: Duration,
    /// `/readyz` wants the upstream reached within this long; zero: reached once since the
    /// relay started is enough.
    pub ready_upstream_window: Duration,
    /// The downstreams that must hold WAL before the relay acknowledges it upstream, in
    /// PostgreSQL's `synchronous_standby_names` syntax; `None` (or empty): the relay
    /// acknowledges what it made durable itself.
    pub synchronous_standby_names: Option<String>,
    /// WAL always kept behind the durable end, in bytes.
    pub wal_keep_size: u64,
    /// The most WAL slots may hold, in bytes; `None` for no limit.
    pub max_slot_wal_keep_size: Option<u64>,
    /// Who may connect downstream and how: TLS files and access rules.
    pub access: AccessFiles,
    /// What to log, as a tracing filter (`info`, `info,walrelay=debug`); `WALRELAY_LOG`,
    /// when set, wins.
    pub log_level: Option<String>,
}

/// The files that decide who may connect downstream and how, read at start and again on
/// SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFiles {
    /// The certificate chain of the downstream port (PEM); with it, TLS is offered.
    pub ssl_cert_file: Option<PathBuf>,
    /// Its private key (PEM), readable by its owner only.
    pub ssl_key_file: Option<PathBuf>,
    /// Certificate authorities client certificates are checked against (PEM).
    pub ssl_ca_file: Option<PathBuf>,
    /// The lowest TLS version accepted.
    pub ssl_min_protocol_version: TlsVersion,
    /// Access rules in `pg_hba.conf` format; without, loopback is trusted and all else refused.
    pub hba_file: Option<PathBuf>,
    /// One line per user: `name secret`, the secret as `pg_authid.rolpassword` holds it.
    pub auth_file: Option<PathBuf>,
    /// User name maps in `pg_ident.conf` format, for `map=` options.
    pub ident_file: Option<PathBuf>,
}

/// A TLS protocol version, as `ssl_min_protocol_version` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// `TLSv1.2`, PostgreSQL's default.
    #[default]
    Tls12,
    /// `TLSv1.3`.
    Tls13,
}

impl TlsVersion {
    /// Reads PostgreSQL's spelling; versions below 1.2 are refused, as the relay does not
    /// speak them.
    pub fn parse(text: &str) -> Option<TlsVersion> {
        match text {
            "TLSv1.2" => Some(TlsVersion::Tls12),
            "TLSv1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("upstream", &"<conninfo>")
            .field("data_dir", &self.data_dir)
            .field("upstream_slot", &self.upstream_slot)
            .field("application_name", &self.application_name)
            .field("status_interval", &self.status_interval)
            .field("receive_timeout", &self.receive_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("listen", &self.listen)
            .field("unix_socket_dir", &self.unix_socket_dir)
            .field("http_listen", &self.http_listen)
            .field("http_token_file", &self.http_token_file)
            .field("log_level", &self.log_level)
            .field("max_wal_senders", &self.max_wal_senders)
            .field("max_base_backups", &self.max_base_backups)
            .field(
                "base_backup_upstream",
                &self.base_backup_upstream.as_ref().map(|_| "<conninfo>"),
            )
            .field("max_replication_slots", &self.max_replication_slots)
            .field("sender_timeout", &self.sender_timeout)
            .field("authentication_timeout", &self.authentication_timeout)
            .field("ready_upstream_window", &self.ready_upstream_window)
            .field("synchronous_standby_names", &self.synchronous_standby_names)
            .field("wal_keep_size", &self.wal_keep_size)
            .field("max_slot_wal_keep_size", &self.max_slot_wal_keep_size)
            .field("access", &self.access)
            .finish()
    }
}

/// Settings as given, on the command line or in the file: each may be missing.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// See [`Config::upstream`].
    pub upstream: Option<String>,
    /// See [`Config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Config::upstream_slot`].
    pub upstream_slot: Option<String>,
    /// See [`Config::application_name`].
    pub application_name: Option<String>,
    /// See [`Config::status_interval`].
    pub status_interval: Option<String>,
    /// See [`Config::receive_timeout`].
    pub receive_timeout: Option<String>,
    /// See [`Config::reconnect_min`].
    pub reconnect_min: Option<String>,
    /// See [`Config::reconnect_max`].
    pub reconnect_max: Option<String>,
    /// See [`Config::listen`].
    pub listen: Option<String>,
    /// See [`Config::unix_socket_dir`].
    pub unix_socket_dir: Option<PathBuf>,
    /// See [`Config::http_listen`].
    pub http_listen: Option<String>,
    /// See [`Config::http_token_file`].
    pub http_token_file: Option<PathBuf>,
    /// See [`Config::log_level`].
    pub log_level: Option<String>,
    /// See [`Config::max_wal_senders`].
    pub max_wal_senders: Option<usize>,
    /// See [`Config::max_base_backups`].
    pub max_base_backups: Option<usize>,
    /// See [`Config::base_backup_upstream`].
    pub base_backup_upstream: Option<String>,
    /// See [`Config::max_replication_slots`].
    pub max_replication_slots: Option<usize>,
    /// See [`Config::sender_timeout`].
    pub sender_timeout: Option<String>,
    /// See [`Config::authentication_timeout`].
    pub authentication_timeout: Option<String>,
    /// See [`Config::ready_upstream_window`].
    pub ready_upstream_window: Option<String>,
    /// See [`Config::synchronous_standby_names`].
    pub synchronous_standby_names: Option<String>,
    /// See [`Config::wal_keep_size`].
    pub wal_keep_size: Option<String>,
    /// See [`Config::max_slot_wal_keep_size`].
    pub max_slot_wal_keep_size: Option<String>,
    /// See [`AccessFiles::ssl_cert_file`].
    pub ssl_cert_file: Option<PathBuf>,
    /// See [`AccessFiles::ssl_key_file`].
    pub ssl_key_file: Option<PathBuf>,
    /// See [`AccessFiles::ssl_ca_file`].
    pub ssl_ca_file: Option<PathBuf>,
    /// See [`AccessFiles::ssl_min_protocol_version`].
    pub ssl_min_protocol_version: Option<String>,
    /// See [`AccessFiles::hba_file`].
    pub hba_file: Option<PathBuf>,
    /// See [`AccessFiles::auth_file`].
    pub auth_file: Option<PathBuf>,
    /// See [`AccessFiles::ident_file`].
    pub ident_file: Option<PathBuf>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("could not read configuration file \"{path}\": {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid configuration file \"{path}\": {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A required setting is missing.
    #[error("missing required setting \"{0}\" (give --{1} or set it in the configuration file)")]
    Missing(&'static str, &'static str),
    /// A value is invalid.
    #[error("invalid value for setting \"{name}\": \"{value}\": {why}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// The value, shortened.
        value: String,
        /// Why.
        why: &'static str,
    },
}

impl Settings {
    /// Reads settings from a TOML file.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or has unknown keys.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses settings from TOML text.
    ///
    /// # Errors
    /// The parser's message.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// These settings, with `fallback` filling the ones missing here.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            upstream: self.upstream.or(fallback.upstream),
            data_dir: self.data_dir.or(fallback.data_dir),
            upstream_slot: self.upstream_slot.or(fallback.upstream_slot),
            application_name: self.application_name.or(fallback.application_name),
            status_interval: self.status_interval.or(fallback.status_interval),
            receive_timeout: self.receive_timeout.or(fallback.receive_timeout),
            reconnect_min: self.reconnect_min.or(fallback.reconnect_min),
            reconnect_max: self.reconnect_max.or(fallback.reconnect_max),
            listen: self.listen.or(fallback.listen),
            unix_socket_dir: self.unix_socket_dir.or(fallback.unix_socket_dir),
            http_listen: self.http_listen.or(fallback.http_listen),
            http_token_file: self.http_token_file.or(fallback.http_token_file),
            log_level: self.log_level.or(fallback.log_level),
            max_wal_senders: self.max_wal_senders.or(fallback.max_wal_senders),
            max_base_backups: self.max_base_backups.or(fallback.max_base_backups),
            base_backup_upstream: self.base_backup_upstream.or(fallback.base_backup_upstream),
            max_replication_slots: self
                .max_replication_slots
                .or(fallback.max_replication_slots),
            sender_timeout: self.sender_timeout.or(fallback.sender_timeout),
            authentication_timeout: self
                .authentication_timeout
                .or(fallback.authentication_timeout),
            ready_upstream_window: self
                .ready_upstream_window
                .or(fallback.ready_upstream_window),
            synchronous_standby_names: self
                .synchronous_standby_names
                .or(fallback.synchronous_standby_names),
            wal_keep_size: self.wal_keep_size.or(fallback.wal_keep_size),
            max_slot_wal_keep_size: self
                .max_slot_wal_keep_size
                .or(fallback.max_slot_wal_keep_size),
            ssl_cert_file: self.ssl_cert_file.or(fallback.ssl_cert_file),
            ssl_key_file: self.ssl_key_file.or(fallback.ssl_key_file),
            ssl_ca_file: self.ssl_ca_file.or(fallback.ssl_ca_file),
            ssl_min_protocol_version: self
                .ssl_min_protocol_version
                .or(fallback.ssl_min_protocol_version),
            hba_file: self.hba_file.or(fallback.hba_file),
            auth_file: self.auth_file.or(fallback.auth_file),
            ident_file: self.ident_file.or(fallback.ident_file),
        }
    }

    /// The configuration these settings give, with defaults for what is missing.
    ///
    /// # Errors
    /// A required setting is missing or a value is invalid.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let upstream = self
            .upstream
            .ok_or(ConfigError::Missing("upstream", "upstream"))?;
        let data_dir = self
            .data_dir
            .ok_or(ConfigError::Missing("data_dir", "data-dir"))?;
        let d = Config::new(upstream, data_dir);
        let duration = |name, value: Option<String>, default| match value {
            None => Ok(default),
            Some(v) => parse_duration(&v).ok_or(ConfigError::Invalid {
                name,
                value: v.chars().take(64).collect(),
                why: "expected a duration such as 500ms, 10s, 5min",
            }),
        };
        let size = |name, value: Option<String>, default: Option<u64>| match value {
            None => Ok(default),
            Some(v) if v.trim() == "-1" => Ok(None),
            Some(v) => parse_size(&v).map(Some).ok_or(ConfigError::Invalid {
                name,
                value: v.chars().take(64).collect(),
                why: "expected a size such as 512MB or 1GB, or -1 for no limit",
            }),
        };
        let upstream_slot = match self.upstream_slot {
            None => d.upstream_slot.clone(),
            Some(slot) => SlotName::new(&slot).map_err(|_| ConfigError::Invalid {
                name: "upstream_slot",
                value: slot.chars().take(64).collect(),
                why: "replication slot names may only contain lower case letters, numbers, and the underscore character, and have at most 63 characters",
            })?,
        };
        let access = AccessFiles {
            ssl_min_protocol_version: match self.ssl_min_protocol_version {
                None => TlsVersion::default(),
                Some(v) => TlsVersion::parse(&v).ok_or(ConfigError::Invalid {
                    name: "ssl_min_protocol_version",
                    value: v.chars().take(64).collect(),
                    why: "expected TLSv1.2 or TLSv1.3",
                })?,
            },
            ssl_cert_file: self.ssl_cert_file,
            ssl_key_file: self.ssl_key_file,
            ssl_ca_file: self.ssl_ca_file,
            hba_file: self.hba_file,
            auth_file: self.auth_file,
            ident_file: self.ident_file,
        };
        access.check()?;
        let config = Config {
            access,
            upstream_slot,
            application_name: self
                .application_name
                .unwrap_or_else(|| d.application_name.clone()),
            status_interval: duration("status_interval", self.status_interval, d.status_interval)?,
            receive_timeout: duration("receive_timeout", self.receive_timeout, d.receive_timeout)?,
            reconnect_min: duration("reconnect_min", self.reconnect_min, d.reconnect_min)?,
            reconnect_max: duration("reconnect_max", self.reconnect_max, d.reconnect_max)?,
            listen: self.listen,
            unix_socket_dir: self.unix_socket_dir,
            http_listen: self.http_listen,
            http_token_file: self.http_token_file,
            log_level: self.log_level,
            max_wal_senders: self.max_wal_senders.unwrap_or(d.max_wal_senders),
            max_base_backups: self.max_base_backups.unwrap_or(d.max_base_backups),
            base_backup_upstream: self.base_backup_upstream.filter(|s| !s.trim().is_empty()),
            max_replication_slots: self
                .max_replication_slots
                .unwrap_or(d.max_replication_slots),
            sender_timeout: duration("sender_timeout", self.sender_timeout, d.sender_timeout)?,
            authentication_timeout: duration(
                "authentication_timeout",
                self.authentication_timeout,
                d.authentication_timeout,
            )?,
            ready_upstream_window: duration(
                "ready_upstream_window",
                self.ready_upstream_window,
                d.ready_upstream_window,
            )?,
            synchronous_standby_names: self
                .synchronous_standby_names
                .filter(|s| !s.trim().is_empty()),
            wal_keep_size: size("wal_keep_size", self.wal_keep_size, Some(d.wal_keep_size))?
                .unwrap_or(d.wal_keep_size),
            max_slot_wal_keep_size: size(
                "max_slot_wal_keep_size",
                self.max_slot_wal_keep_size,
                d.max_slot_wal_keep_size,
            )?,
            ..d
        };
        if config.listen.is_none()
            && let Some(dir) = &config.unix_socket_dir
        {
            return Err(ConfigError::Invalid {
                name: "unix_socket_dir",
                value: dir.display().to_string().chars().take(64).collect(),
                why: "needs listen: the socket is named after its port",
            });
        }
        if config.listen.is_none() && config.synchronous_standby_names.is_some() {
            return Err(ConfigError::Invalid {
                name: "synchronous_standby_names",
                value: config
                    .synchronous_standby_names
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .collect(),
                why: "needs listen: the synchronous standbys are downstreams of the relay",
            });
        }
        if config.status_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "status_interval",
                value: "0".into(),
                why: "must be positive",
            });
        }
        Ok(config)
    }
}

impl Config {
    /// The configuration of a relay streaming from `upstream` into `data_dir`, with every
    /// other setting at its default, and no listener.
    pub fn new(upstream: impl Into<String>, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            upstream: upstream.into(),
            data_dir: data_dir.into(),
            upstream_slot: SlotName::WALRELAY,
            application_name: "walrelay".into(),
            status_interval: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(60),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            listen: None,
            unix_socket_dir: None,
            http_listen: None,
            http_token_file: None,
            log_level: None,
            max_wal_senders: 64,
            max_base_backups: 2,
            base_backup_upstream: None,
            max_replication_slots: 64,
            sender_timeout: Duration::from_secs(60),
            authentication_timeout: Duration::from_secs(60),
            ready_upstream_window: Duration::ZERO,
            synchronous_standby_names: None,
            wal_keep_size: DEFAULT_WAL_KEEP_SIZE,
            max_slot_wal_keep_size: None,
            access: AccessFiles::default(),
        }
    }
}

impl AccessFiles {
    /// A certificate needs its key, and client certificates need a certificate of the port's.
    fn check(&self) -> Result<(), ConfigError> {
        let pair = |name, value: &Option<PathBuf>, why| {
            value.as_ref().map_or(Ok(()), |v| {
                Err(ConfigError::Invalid {
                    name,
                    value: v.display().to_string().chars().take(64).collect(),
                    why,
                })
            })
        };
        match (&self.ssl_cert_file, &self.ssl_key_file) {
            (Some(_), None) => pair(
                "ssl_cert_file",
                &self.ssl_cert_file,
                "ssl_key_file must be given with it",
            )?,
            (None, Some(_)) => pair(
                "ssl_key_file",
                &self.ssl_key_file,
                "ssl_cert_file must be given with it",
            )?,
            _ => {}
        }
        if self.ssl_cert_file.is_none() {
            pair(
                "ssl_ca_file",
                &self.ssl_ca_file,
                "client certificates need ssl_cert_file and ssl_key_file",
            )?;
        }
        Ok(())
    }
}

/// The WAL kept behind the durable end when `wal_keep_size` is not set: 1 GB.
pub const DEFAULT_WAL_KEEP_SIZE: u64 = 1 << 30;

/// Parses a size the way `postgresql.conf` writes one for WAL settings: a number with `kB`,
/// `MB`, `GB` or `TB`, and a bare number means megabytes. Returns bytes, or `None`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let unit: u64 = match unit.trim() {
        "kB" => 1 << 10,
        "" | "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Parses a duration the way `postgresql.conf` writes one: `250ms`, `10s`, `5min`, `1h`,
/// `1d`, or a bare number of seconds. Returns `None` for anything else.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "-1s", "1.5s", "10 parsecs", "99999999999999999999"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("64"), Some(64 << 20));
        assert_eq!(parse_size("512kB"), Some(512 << 10));
        for bad in ["", "1.5GB", "-1", "1PB", "x"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        let base = Settings {
            upstream: Some("x".into()),
            data_dir: Some("/d".into()),
            ..Settings::default()
        };
        let c = base.clone().into_config().unwrap();
        assert_eq!(
            (c.wal_keep_size, c.max_slot_wal_keep_size),
            (DEFAULT_WAL_KEEP_SIZE, None)
        );
        let s = Settings {
            wal_keep_size: Some("0".into()),
            max_slot_wal_keep_size: Some("4MB".into()),
            ..base
        };
        let c = s.into_config().unwrap();
        assert_eq!(
            (c.wal_keep_size, c.max_slot_wal_keep_size),
            (0, Some(4 << 20))
        );
    }

    #[test]
    fn flags_win_over_file() {
        let file = Settings::from_toml(
            "upstream = \"host=a\"\ndata_dir = \"/x\"\nupstream_slot = \"fromfile\"\nstatus_interval = \"2s\"\n",
        )
        .unwrap();
        let flags = Settings {
            upstream_slot: Some("fromflag".into()),
            ..Settings::default()
        };
        let c = flags.or(file).into_config().unwrap();
        assert_eq!(c.upstream, "host=a");
        assert_eq!(c.upstream_slot, "fromflag");
        assert_eq!(c.status_interval, Duration::from_secs(2));
        assert_eq!(c.receive_timeout, Duration::from_secs(60));
        assert!(!format!("{c:?}").contains("host=a"));
    }

    #[test]
    fn the_base_backup_upstream_is_optional_and_never_printed() {
        let file = Settings::from_toml(
            "upstream = \"host=a\"\ndata_dir = \"/x\"\nbase_backup_upstream = \"host=b password=secret\"\n",
        )
        .unwrap();
        let c = file.clone().into_config().unwrap();
        assert_eq!(
            c.base_backup_upstream.as_deref(),
            Some("host=b password=secret")
        );
        assert!(!format!("{c:?}").contains("secret"));
        let blank = Settings {
            base_backup_upstream: Some(" ".into()),
            ..file
        };
        assert_eq!(blank.into_config().unwrap().base_backup_upstream, None);
        let old = Config::new("host=a", "/x");
        assert_eq!(old.changes(&c).applied, ["base_backup_upstream"]);
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(Settings::from_toml("nonsense = 1").is_err());
        let base = || Settings {
            upstream: Some("x".into()),
            data_dir: Some("/d".into()),
            ..Settings::default()
        };
        assert!(matches!(
            Settings::default().into_config(),
            Err(ConfigError::Missing(..))
        ));
        for slot in ["Bad", "a/b", "", &"x".repeat(64)] {
            let s = Settings {
                upstream_slot: Some(slot.to_string()),
                ..base()
            };
            assert!(s.into_config().is_err(), "{slot}");
        }
        let s = Settings {
            receive_timeout: Some("soon".into()),
            ..base()
        };
        assert!(s.into_config().is_err());
    }

    #[test]
    fn access_files_come_in_working_sets() {
        let base = || Settings {
            upstream: Some("x".into()),
            data_dir: Some("/d".into()),
            ..Settings::default()
        };
        let c = base().into_config().unwrap();
        assert_eq!(c.access, AccessFiles::default());
        let file = Settings::from_toml(
            "upstream = \"x\"\ndata_dir = \"/d\"\nssl_cert_file = \"c.pem\"\nssl_key_file = \"k.pem\"\nssl_ca_file = \"ca.pem\"\nssl_min_protocol_version = \"TLSv1.3\"\nhba_file = \"hba.conf\"\nauth_file = \"users\"\nident_file = \"ident.conf\"\n",
        )
        .unwrap();
        let a = file.into_config().unwrap().access;
        assert_eq!(a.ssl_cert_file, Some(PathBuf::from("c.pem")));
        assert_eq!(a.ssl_min_protocol_version, TlsVersion::Tls13);
        assert_eq!(a.hba_file, Some(PathBuf::from("hba.conf")));
        assert_eq!(a.ident_file, Some(PathBuf::from("ident.conf")));
        for (cert, key, ca, version) in [
            (Some("c"), None, None, None),
            (None, Some("k"), None, None),
            (None, None, Some("ca"), None),
            (Some("c"), Some("k"), None, Some("TLSv1.1")),
            (Some("c"), Some("k"), None, Some("tls1.3")),
        ] {
            let s = Settings {
                ssl_cert_file: cert.map(PathBuf::from),
                ssl_key_file: key.map(PathBuf::from),
                ssl_ca_file: ca.map(PathBuf::from),
                ssl_min_protocol_version: version.map(String::from),
                ..base()
            };
            let e = s.into_config().unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
        }
    }
}
