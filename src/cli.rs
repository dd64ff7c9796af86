//! The command line: `walrelay run` relays from an upstream server, `walrelay demo` shows the
//! relay at work against a throwaway local primary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, Settings};

/// Relay PostgreSQL physical streaming replication.
///
/// walrelay connects to a PostgreSQL server as a replication client, keeps the WAL it receives
/// in PostgreSQL's own segment format, validated and fsynced, and keeps its own physical slot
/// on that server. With --listen it serves that WAL to standbys, pg_receivewal and other
/// relays, on replication slots of its own.
#[derive(Debug, Parser)]
#[command(name = "walrelay", version, propagate_version = true)]
pub struct Cli {
    /// How log lines are written to standard error: text for people, or json (one object per
    /// line, with the fields of its spans) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text, one line per event, coloured on a terminal.
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields and spans.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream WAL from an upstream server into a data directory, until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Start a throwaway local primary, relay from it under a write load, and show progress.
    Demo(DemoArgs),
    /// Read a password (from the terminal with echo off, or one line of standard input) and
    /// print a line for the --auth-file: the user and a SCRAM-SHA-256 verifier, as
    /// PostgreSQL stores it in pg_authid.rolpassword.
    Passwd(PasswdArgs),
    /// Print a running relay's upstream, store and standbys, from its HTTP endpoint's
    /// /status (see run --http-listen).
    Status(StatusArgs),
}

/// Arguments of `walrelay status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The relay's HTTP endpoint: http://HOST:PORT (or HOST:PORT).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9188")]
    pub http: String,
    /// Send the bearer token in FILE (the relay's --http-token-file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print again every second, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `walrelay passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The user the line is for.
    #[arg(value_name = "USER")]
    pub user: String,
    /// PBKDF2 iterations of the verifier (PostgreSQL's scram_iterations) [default: 4096].
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub iterations: u32,
}

/// Flags of `walrelay run`. Each can also be set in the `--config` file under the same name
/// with `_` for `-`; flags win over the file.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Upstream connection string, libpq style: "host=db1 port=5432 user=replicator" or
    /// "postgresql://replicator@db1/". Prefer a passfile or PGPASSWORD over a password here.
    #[arg(long, value_name = "CONNINFO")]
    pub upstream: Option<String>,
    /// Directory for the stored WAL and the relay's state.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Name of the relay's physical replication slot on the upstream [default: walrelay].
    #[arg(long, value_name = "NAME")]
    pub upstream_slot: Option<String>,
    /// application_name the upstream sees, unless the connection string sets one [default: walrelay].
    #[arg(long, value_name = "NAME")]
    pub application_name: Option<String>,
    /// Send a status update upstream at least this often [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub status_interval: Option<String>,
    /// Reconnect when the upstream has been silent this long; 0 disables [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub receive_timeout: Option<String>,
    /// First delay before reconnecting; it doubles on each failure [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    pub reconnect_min: Option<String>,
    /// Longest delay before reconnecting [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub reconnect_max: Option<String>,
    /// Listen for downstream replication connections (standbys, pg_receivewal) on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Also listen on a Unix-domain socket in DIR, named .s.PGSQL.PORT after the port of
    /// --listen, as PostgreSQL's unix_socket_directories (clients connect with host=DIR).
    #[arg(long, value_name = "DIR")]
    pub unix_socket_dir: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /status (JSON), /healthz and /readyz over HTTP on
    /// HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Require the bearer token in FILE for /metrics and /status.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// What to log, as a tracing filter: "info", "info,walrelay=debug" [default: info;
    /// WALRELAY_LOG, when set, wins].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Most concurrent downstream replication connections [default: 64].
    #[arg(long, value_name = "N")]
    pub max_wal_senders: Option<usize>,
    /// Most BASE_BACKUPs relayed from the upstream at once; 0 refuses BASE_BACKUP
    /// [default: 2].
    #[arg(long, value_name = "N")]
    pub max_base_backups: Option<usize>,
    /// Relay BASE_BACKUP from the server this connection string names rather than from
    /// --upstream (libpq syntax; it must be the same cluster) [default: the upstream's].
    #[arg(long, value_name = "CONNINFO")]
    pub base_backup_upstream: Option<String>,
    /// Most replication slots the relay keeps for its downstreams [default: 64].
    #[arg(long, value_name = "N")]
    pub max_replication_slots: Option<usize>,
    /// Drop a streaming downstream that has been silent this long; 0 disables [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub sender_timeout: Option<String>,
    /// Close a connection that has not logged in after this long [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub authentication_timeout: Option<String>,
    /// Acknowledge WAL upstream only once these downstreams hold it, in PostgreSQL's
    /// synchronous_standby_names syntax ("FIRST 1 (s1, s2)", "ANY 2 (s1, s2, s3)") over their
    /// application names [default: none: the relay acknowledges what it made durable].
    #[arg(long, value_name = "NAMES")]
    pub synchronous_standby_names: Option<String>,
    /// /readyz wants the upstream reached within DURATION ("30s"); 0 means reached once since
    /// the relay started [default: 0].
    #[arg(long, value_name = "DURATION")]
    pub ready_upstream_window: Option<String>,
    /// WAL always kept behind the newest, for clients without a slot [default: 1GB].
    #[arg(long, value_name = "SIZE")]
    pub wal_keep_size: Option<String>,
    /// The most WAL a lagging slot may hold before it is invalidated; -1 for no limit
    /// [default: -1].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub max_slot_wal_keep_size: Option<String>,
    /// Certificate chain (PEM) of the downstream port; with it, clients may use TLS.
    #[arg(long, value_name = "FILE")]
    pub ssl_cert_file: Option<PathBuf>,
    /// Private key (PEM) of that certificate; refused when group or others may read it.
    #[arg(long, value_name = "FILE")]
    pub ssl_key_file: Option<PathBuf>,
    /// Certificate authorities (PEM) that client certificates are checked against.
    #[arg(long, value_name = "FILE")]
    pub ssl_ca_file: Option<PathBuf>,
    /// Lowest TLS version accepted: TLSv1.2 or TLSv1.3 [default: TLSv1.2].
    #[arg(long, value_name = "VERSION")]
    pub ssl_min_protocol_version: Option<String>,
    /// Access rules in pg_hba.conf format. Without it, loopback clients are trusted and all
    /// others refused.
    #[arg(long, value_name = "FILE")]
    pub hba_file: Option<PathBuf>,
    /// Users and their secrets, one "name secret" per line, each secret as PostgreSQL stores
    /// it in pg_authid.rolpassword (SCRAM-SHA-256$… or md5…); see `walrelay passwd`.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// User name maps in pg_ident.conf format, for map= options of the rules.
    #[arg(long, value_name = "FILE")]
    pub ident_file: Option<PathBuf>,
    /// TOML file with any of the settings above.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl RunArgs {
    /// The settings from the flags, falling back to the config file when one is given.
    ///
    /// # Errors
    /// The config file cannot be read or parsed.
    pub fn settings(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let flags = Settings {
            upstream: self.upstream,
            data_dir: self.data_dir,
            upstream_slot: self.upstream_slot,
            application_name: self.application_name,
            status_interval: self.status_interval,
            receive_timeout: self.receive_timeout,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            listen: self.listen,
            unix_socket_dir: self.unix_socket_dir,
            http_listen: self.http_listen,
            http_token_file: self.http_token_file,
            log_level: self.log_level,
            max_wal_senders: self.max_wal_senders,
            max_base_backups: self.max_base_backups,
            base_backup_upstream: self.base_backup_upstream,
            max_replication_slots: self.max_replication_slots,
            sender_timeout: self.sender_timeout,
            authentication_timeout: self.authentication_timeout,
            ready_upstream_window: self.ready_upstream_window,
            synchronous_standby_names: self.synchronous_standby_names,
            wal_keep_size: self.wal_keep_size,
            max_slot_wal_keep_size: self.max_slot_wal_keep_size,
            ssl_cert_file: self.ssl_cert_file,
            ssl_key_file: self.ssl_key_file,
            ssl_ca_file: self.ssl_ca_file,
            ssl_min_protocol_version: self.ssl_min_protocol_version,
            hba_file: self.hba_file,
            auth_file: self.auth_file,
            ident_file: self.ident_file,
        };
        Ok(flags.or(file))
    }
}

/// Flags of `walrelay demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// WAL segment size of the throwaway primary, in MB (a power of two from 1 to 1024).
    #[arg(long, default_value_t = 16, value_name = "MB")]
    pub segment_size_mb: u32,
    /// Directory for the demo's clusters and relay data [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub duration: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "walrelay",
            "run",
            "--upstream",
            "host=x",
            "--data-dir",
            "/d",
            "--upstream-slot",
            "s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let c = args.settings().unwrap().into_config().unwrap();
        assert_eq!(c.upstream_slot, "s");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
    }
}
