//! What a reload changes (SIGHUP): the settings that take effect in the running relay, and
//! those that need a restart, which stay as they were, as PostgreSQL leaves a
//! `postmaster`-context parameter until the next start.

use super::Config;

/// The settings a new configuration changes, by their names in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChanges {
    /// Changed, and applied to the running relay.
    pub applied: Vec<&'static str>,
    /// Changed, but only a restart applies them; the running relay keeps the old values.
    pub need_restart: Vec<&'static str>,
}

impl ConfigChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.need_restart.is_empty()
    }
}

impl Config {
    /// What going from `self` to `new` changes.
    pub fn changes(&self, new: &Config) -> ConfigChanges {
        let mut c = ConfigChanges::default();
        let mut applied = |name, changed: bool| {
            if changed {
                c.applied.push(name);
            }
        };
        applied("upstream", self.upstream != new.upstream);
        applied("upstream_slot", self.upstream_slot != new.upstream_slot);
        applied(
            "application_name",
            self.application_name != new.application_name,
        );
        applied(
            "status_interval",
            self.status_interval != new.status_interval,
        );
        applied(
            "receive_timeout",
            self.receive_timeout != new.receive_timeout,
        );
        applied("reconnect_min", self.reconnect_min != new.reconnect_min);
        applied("reconnect_max", self.reconnect_max != new.reconnect_max);
        applied(
            "max_wal_senders",
            self.max_wal_senders != new.max_wal_senders,
        );
        applied(
            "max_base_backups",
            self.max_base_backups != new.max_base_backups,
        );
        applied(
            "base_backup_upstream",
            self.base_backup_upstream != new.base_backup_upstream,
        );
        applied("sender_timeout", self.sender_timeout != new.sender_timeout);
        applied(
            "authentication_timeout",
            self.authentication_timeout != new.authentication_timeout,
        );
        applied("wal_keep_size", self.wal_keep_size != new.wal_keep_size);
        applied(
            "synchronous_standby_names",
            self.synchronous_standby_names != new.synchronous_standby_names,
        );
        applied(
            "ready_upstream_window",
            self.ready_upstream_window != new.ready_upstream_window,
        );
        applied(
            "max_slot_wal_keep_size",
            self.max_slot_wal_keep_size != new.max_slot_wal_keep_size,
        );
        applied(
            "http_token_file",
            self.http_token_file != new.http_token_file,
        );
        applied("log_level", self.log_level != new.log_level);
        let (a, b) = (&self.access, &new.access);
        applied("ssl_cert_file", a.ssl_cert_file != b.ssl_cert_file);
        applied("ssl_key_file", a.ssl_key_file != b.ssl_key_file);
        applied("ssl_ca_file", a.ssl_ca_file != b.ssl_ca_file);
        applied(
            "ssl_min_protocol_version",
            a.ssl_min_protocol_version != b.ssl_min_protocol_version,
        );
        applied("hba_file", a.hba_file != b.hba_file);
        applied("auth_file", a.auth_file != b.auth_file);
        applied("ident_file", a.ident_file != b.ident_file);
        let mut restart = |name, changed: bool| {
            if changed {
                c.need_restart.push(name);
            }
        };
        restart("data_dir", self.data_dir != new.data_dir);
        restart("listen", self.listen != new.listen);
        restart(
            "unix_socket_dir",
            self.unix_socket_dir != new.unix_socket_dir,
        );
        restart("http_listen", self.http_listen != new.http_listen);
        restart(
            "max_replication_slots",
            self.max_replication_slots != new.max_replication_slots,
        );
        c
    }

    /// `new` with the settings a restart needs kept as `self` has them: what the running
    /// relay uses after a reload.
    pub fn reloaded(&self, new: &Config) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            listen: self.listen.clone(),
            unix_socket_dir: self.unix_socket_dir.clone(),
            http_listen: self.http_listen.clone(),
            max_replication_slots: self.max_replication_slots,
            ..new.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn names_what_changed_and_keeps_what_needs_a_restart() {
        let old = Config::new("host=a", "/data");
        assert!(old.changes(&old.clone()).is_empty());
        let mut new = Config::new("host=b", "/elsewhere");
        new.sender_timeout = Duration::from_secs(1);
        new.listen = Some("0.0.0.0:5433".into());
        new.max_slot_wal_keep_size = Some(1 << 30);
        new.access.hba_file = Some("/etc/hba".into());
        let c = old.changes(&new);
        assert_eq!(
            c.applied,
            [
                "upstream",
                "sender_timeout",
                "max_slot_wal_keep_size",
                "hba_file"
            ]
        );
        assert_eq!(c.need_restart, ["data_dir", "listen"]);
        let running = old.reloaded(&new);
        assert_eq!(running.upstream, "host=b");
        assert_eq!(running.data_dir, old.data_dir);
        assert_eq!(running.listen, None);
        assert!(old.changes(&running).need_restart.is_empty());
    }
}
