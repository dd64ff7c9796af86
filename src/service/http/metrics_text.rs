//! `/metrics`: a [`Snapshot`] as Prometheus text. Names follow postgres_exporter and
//! `pg_stat_replication`: positions are `*_lsn` in bytes, lags `*_lag_seconds`, per
//! downstream labels `application_name`, `slot_name`, `client_addr`, `state` (and `pid`,
//! which tells apart two standbys with the same name). Downstreams are the connected ones
//! only, so the label sets are bounded by `max_wal_senders`: a gone client leaves nothing
//! behind.

use super::snapshot::Snapshot;
use crate::metrics::exposition::{Exposition, Format, Kind};
use crate::metrics::{BackupOutcome, EndReason, Refusal};
use crate::proto::syncrep::SyncAck;
use crate::types::Lsn;

fn lsn(l: Lsn) -> f64 {
    l.0 as f64
}

/// The text of `snapshot` in `format`.
pub(crate) fn render(snapshot: &Snapshot<'_>, format: Format) -> String {
    let mut e = Exposition::new(format);
    upstream(&mut e, snapshot);
    store(&mut e, snapshot);
    downstreams(&mut e, snapshot);
    slots(&mut e, snapshot);
    connections(&mut e, snapshot);
    synchronous(&mut e, snapshot);
    process(&mut e, snapshot);
    e.finish()
}

/// With `--synchronous-standby-names`: how many more synchronous standbys must stream before
/// the relay acknowledges anything more upstream (0 when enough do).
fn synchronous(e: &mut Exposition, s: &Snapshot<'_>) {
    let missing = match s.status.synchronous {
        SyncAck::Off => return,
        SyncAck::Held(_) => 0,
        SyncAck::Short {
            required,
            available,
        } => required.saturating_sub(available),
    };
    gauge(
        e,
        "walrelay_synchronous_standbys_missing",
        "Synchronous standbys still needed before the relay acknowledges more WAL upstream; above 0, commits waiting for the relay wait.",
        missing as f64,
    );
}

fn gauge(e: &mut Exposition, name: &str, help: &str, value: f64) {
    e.family(name, Kind::Gauge, help).sample(&[], value);
}

fn counter(e: &mut Exposition, name: &str, help: &str, value: u64) {
    e.family(name, Kind::Counter, help)
        .sample(&[], value as f64);
}

fn upstream(e: &mut Exposition, s: &Snapshot<'_>) {
    let up = &s.counters.upstream;
    gauge(
        e,
        "walrelay_upstream_connected",
        "Whether the relay streams from its upstream now (1) or not (0).",
        f64::from(u8::from(up.connected())),
    );
    if let Some(info) = &s.status.upstream {
        let system_id = info.system_id.0.to_string();
        e.family(
            "walrelay_upstream_info",
            Kind::Gauge,
            "The upstream's server_version and system identifier, as labels.",
        )
        .sample(
            &[
                ("server_version", info.server_version.as_str()),
                ("system_identifier", system_id.as_str()),
            ],
            1.0,
        );
    }
    gauge(
        e,
        "walrelay_upstream_written_lsn",
        "End of the WAL received and written, not necessarily synced (bytes).",
        lsn(s.status.written),
    );
    gauge(
        e,
        "walrelay_upstream_flush_lsn",
        "End of the WAL received, synced and checked: reported upstream as flushed and served downstream (bytes).",
        lsn(s.status.durable),
    );
    if let Some(end) = s.upstream_end() {
        gauge(
            e,
            "walrelay_upstream_end_lsn",
            "End of the WAL on the upstream server, as its last message said (bytes).",
            lsn(end),
        );
    }
    gauge(
        e,
        "walrelay_upstream_lag_bytes",
        "How far the relay's durable end trails the upstream's end (bytes).",
        s.upstream_lag_bytes() as f64,
    );
    gauge(
        e,
        "walrelay_upstream_lag_seconds",
        "How long the relay's durable end has trailed the upstream's end (0 when it does not).",
        s.upstream_lag_seconds(),
    );
    counter(
        e,
        "walrelay_upstream_received_bytes",
        "WAL bytes received from the upstream.",
        up.bytes_received(),
    );
    counter(
        e,
        "walrelay_upstream_connections",
        "Upstream connections that reached streaming.",
        up.connections(),
    );
    let mut ends = e.family(
        "walrelay_upstream_disconnects",
        Kind::Counter,
        "Upstream connections (or attempts) that ended, by reason.",
    );
    for reason in EndReason::ALL {
        ends.sample(&[("reason", reason.label())], up.ends(reason) as f64);
    }
}

fn store(e: &mut Exposition, s: &Snapshot<'_>) {
    gauge(
        e,
        "walrelay_store_segments",
        "WAL segment files in the relay's store.",
        s.store.segments as f64,
    );
    gauge(
        e,
        "walrelay_store_bytes",
        "Bytes of the WAL segment files in the relay's store.",
        s.store.bytes as f64,
    );
    if let Some(oldest) = s.status.oldest {
        gauge(
            e,
            "walrelay_store_oldest_lsn",
            "Where the stored WAL begins (bytes).",
            lsn(oldest),
        );
    }
    gauge(
        e,
        "walrelay_store_failed",
        "Whether the store has failed and waits to be opened again (1) or not (0).",
        f64::from(u8::from(s.status.store_failure.is_some())),
    );
    let (buckets, sum, count) = s.counters.store.fsync_histogram();
    e.family(
        "walrelay_store_fsync_duration_seconds",
        Kind::Histogram,
        "Time each sync of written WAL took.",
    )
    .histogram(&[], &buckets, sum, count);
    counter(
        e,
        "walrelay_store_write_errors",
        "Writes and syncs of the store that failed.",
        s.counters.store.write_errors(),
    );
}

fn downstreams(e: &mut Exposition, s: &Snapshot<'_>) {
    type Field = fn(&crate::service::StreamStatus) -> Option<f64>;
    let fields: [(&str, &str, Field); 9] = [
        (
            "walrelay_replication_sent_bytes",
            "WAL bytes sent to the downstream since its stream started.",
            |r| Some(r.sent.0.saturating_sub(r.start.0) as f64),
        ),
        (
            "walrelay_replication_sent_lsn",
            "Last WAL position sent to the downstream (bytes).",
            |r| Some(lsn(r.sent)),
        ),
        (
            "walrelay_replication_write_lsn",
            "Last WAL position the downstream reported written (bytes).",
            |r| Some(lsn(r.client.write)),
        ),
        (
            "walrelay_replication_flush_lsn",
            "Last WAL position the downstream reported flushed (bytes).",
            |r| Some(lsn(r.client.flush)),
        ),
        (
            "walrelay_replication_replay_lsn",
            "Last WAL position the downstream reported replayed (bytes).",
            |r| Some(lsn(r.client.apply)),
        ),
        (
            "walrelay_replication_write_lag_seconds",
            "write_lag as pg_stat_replication computes it.",
            |r| r.lags.write_lag().map(|d| d.as_secs_f64()),
        ),
        (
            "walrelay_replication_flush_lag_seconds",
            "flush_lag as pg_stat_replication computes it.",
            |r| r.lags.flush_lag().map(|d| d.as_secs_f64()),
        ),
        (
            "walrelay_replication_replay_lag_seconds",
            "replay_lag as pg_stat_replication computes it.",
            |r| r.lags.replay_lag().map(|d| d.as_secs_f64()),
        ),
        (
            "walrelay_replication_reply_time_seconds",
            "When the downstream sent its last reply, by its clock (seconds since the Unix epoch).",
            |r| {
                (r.client.reply_time.0 != 0)
                    .then(|| super::snapshot::unix_seconds(r.client.reply_time.to_system_time()))
            },
        ),
    ];
    let labels: Vec<[String; 5]> = s
        .status
        .streams
        .iter()
        .map(|r| {
            [
                r.application_name.clone(),
                r.slot.as_ref().map(ToString::to_string).unwrap_or_default(),
                r.client_addr.map(|a| a.to_string()).unwrap_or_default(),
                r.state().to_owned(),
                r.pid.0.to_string(),
            ]
        })
        .collect();
    for (name, help, value) in fields {
        let mut family = e.family(name, Kind::Gauge, help);
        for (r, l) in s.status.streams.iter().zip(&labels) {
            if let Some(v) = value(r) {
                family.sample(
                    &[
                        ("application_name", &l[0]),
                        ("slot_name", &l[1]),
                        ("client_addr", &l[2]),
                        ("state", &l[3]),
                        ("pid", &l[4]),
                    ],
                    v,
                );
            }
        }
    }
}

fn slots(e: &mut Exposition, s: &Snapshot<'_>) {
    let slots = &s.status.slots;
    let names: Vec<String> = slots.iter().map(|x| x.name.to_string()).collect();
    let mut active = e.family(
        "walrelay_slot_active",
        Kind::Gauge,
        "Whether a stream uses the relay's slot now.",
    );
    for (slot, name) in slots.iter().zip(&names) {
        active.sample(
            &[("slot_name", name), ("slot_type", "physical")],
            f64::from(u8::from(slot.active_owner.is_some())),
        );
    }
    let mut restart = e.family(
        "walrelay_slot_restart_lsn",
        Kind::Gauge,
        "The oldest WAL the slot holds (bytes).",
    );
    for (slot, name) in slots.iter().zip(&names) {
        if let Some(l) = slot.restart_lsn {
            restart.sample(&[("slot_name", name), ("slot_type", "physical")], lsn(l));
        }
    }
    let mut status = e.family(
        "walrelay_slot_wal_status",
        Kind::Gauge,
        "The slot's wal_status as pg_replication_slots says it, as a label (value 1).",
    );
    for (slot, name) in slots.iter().zip(&names) {
        let wal = s.slot_wal(slot);
        status.sample(&[("slot_name", name), ("wal_status", wal.status)], 1.0);
    }
    let mut safe = e.family(
        "walrelay_slot_safe_wal_size_bytes",
        Kind::Gauge,
        "WAL that can still be written before the slot is lost (pg_replication_slots.safe_wal_size).",
    );
    for (slot, name) in slots.iter().zip(&names) {
        if let Some(bytes) = s.slot_wal(slot).safe_wal_size {
            safe.sample(&[("slot_name", name)], bytes as f64);
        }
    }
    let mut xmin = e.family(
        "walrelay_slot_xmin_present",
        Kind::Gauge,
        "Whether the slot holds an xmin from hot-standby feedback.",
    );
    for (slot, name) in slots.iter().zip(&names) {
        xmin.sample(
            &[("slot_name", name)],
            f64::from(u8::from(slot.xmin.is_some())),
        );
    }
}

fn connections(e: &mut Exposition, s: &Snapshot<'_>) {
    let d = &s.counters.downstream;
    counter(
        e,
        "walrelay_downstream_connections_accepted",
        "Downstream connections accepted.",
        d.accepted_total(),
    );
    let mut refused = e.family(
        "walrelay_downstream_connections_refused",
        Kind::Counter,
        "Downstream connections closed with an error before they logged in, by reason.",
    );
    for reason in Refusal::ALL {
        refused.sample(
            &[("reason", reason.label())],
            d.refused_total(reason) as f64,
        );
    }
    counter(
        e,
        "walrelay_downstream_authentication_failures",
        "Downstream logins that failed authentication.",
        d.refused_total(Refusal::Authentication),
    );
    gauge(
        e,
        "walrelay_base_backups_running",
        "BASE_BACKUPs being relayed from the upstream now.",
        d.backups_running() as f64,
    );
    let mut backups = e.family(
        "walrelay_base_backups",
        Kind::Counter,
        "BASE_BACKUPs relayed, by how they ended.",
    );
    for outcome in BackupOutcome::ALL {
        backups.sample(
            &[("outcome", outcome.label())],
            d.backups_total(outcome) as f64,
        );
    }
    counter(
        e,
        "walrelay_base_backup_bytes",
        "Bytes of BASE_BACKUP answers relayed to clients.",
        d.backup_bytes_total(),
    );
    let served = &s.status.served;
    let mut wal = e.family(
        "walrelay_wal_served_bytes",
        Kind::Counter,
        "WAL bytes served to downstreams, by where they came from: the newest WAL kept in \
         memory, segment files read into memory, or segment files the kernel sent from the \
         page cache.",
    );
    wal.sample(&[("source", "memory")], served.served_from_tail as f64);
    wal.sample(&[("source", "read")], served.served_from_disk as f64);
    wal.sample(&[("source", "sendfile")], served.served_as_files as f64);
    let streaming = s.status.streams.len();
    let mut current = e.family(
        "walrelay_downstream_connections",
        Kind::Gauge,
        "Downstream replication connections now, by state.",
    );
    current.sample(&[("state", "streaming")], streaming as f64);
    current.sample(
        &[("state", "command")],
        s.status.connections.saturating_sub(streaming) as f64,
    );
}

fn process(e: &mut Exposition, s: &Snapshot<'_>) {
    let p = &s.process;
    if let Some(v) = p.resident_bytes {
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            v,
        );
    }
    if let Some(v) = p.cpu_seconds {
        e.family(
            "process_cpu_seconds",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
        )
        .sample(&[], v);
    }
    if let Some(v) = p.open_fds {
        gauge(e, "process_open_fds", "Number of open file descriptors.", v);
    }
    if let Some(v) = p.max_fds {
        gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            v,
        );
    }
    if let Some(v) = p.start_time_seconds {
        gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            v,
        );
    }
}
