//! `/status`: a [`Snapshot`] as JSON, shaped like `pg_stat_replication` (`replication`) and
//! `pg_replication_slots` (`slots`), with the upstream and the store beside them. Positions
//! are PostgreSQL's text form (`0/3000148`), lags are seconds (`null` as PostgreSQL's NULL).

use serde_json::{Value, json};

use super::snapshot::{Snapshot, unix_seconds};
use crate::proto::syncrep::SyncAck;
use crate::types::Lsn;

fn lsn(l: Lsn) -> Value {
    Value::String(l.to_string())
}

fn opt_lsn(l: Option<Lsn>) -> Value {
    l.map_or(Value::Null, lsn)
}

/// The JSON of `snapshot`.
pub(crate) fn render(s: &Snapshot<'_>) -> Value {
    let up = &s.counters.upstream;
    let replication: Vec<Value> = s
        .status
        .streams
        .iter()
        .map(|r| {
            let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
            json!({
                "pid": r.pid.0,
                "application_name": r.application_name,
                "client_addr": r.client_addr.map(|a| a.to_string()),
                "state": r.state(),
                "slot_name": r.slot.as_ref().map(ToString::to_string),
                "timeline": r.timeline.get(),
                "sent_lsn": lsn(r.sent),
                "write_lsn": lsn(r.client.write),
                "flush_lsn": lsn(r.client.flush),
                "replay_lsn": lsn(r.client.apply),
                "write_lag": secs(r.lags.write_lag()),
                "flush_lag": secs(r.lags.flush_lag()),
                "replay_lag": secs(r.lags.replay_lag()),
                "reply_time": (r.client.reply_time.0 != 0)
                    .then(|| unix_seconds(r.client.reply_time.to_system_time())),
            })
        })
        .collect();
    let slots: Vec<Value> = s
        .status
        .slots
        .iter()
        .map(|slot| {
            let wal = s.slot_wal(slot);
            json!({
                "slot_name": slot.name.to_string(),
                "slot_type": "physical",
                "temporary": slot.temporary,
                "active": slot.active_owner.is_some(),
                "active_pid": slot.active_owner.map(|p| p.0),
                "restart_lsn": opt_lsn(slot.restart_lsn),
                "xmin": slot.xmin.map(|x| x.get()),
                "catalog_xmin": slot.catalog_xmin.map(|x| x.get()),
                "wal_status": wal.status,
                "safe_wal_size": wal.safe_wal_size,
            })
        })
        .collect();
    let info = s.status.upstream.as_ref();
    json!({
        "upstream": {
            "connected": up.connected(),
            "reached": up.reached(),
            "server_version": info.map(|i| i.server_version.clone()),
            "system_identifier": info.map(|i| i.system_id.0.to_string()),
            "timeline": s.status.timeline.map(|t| t.get()),
            "written_lsn": lsn(s.status.written),
            "flush_lsn": lsn(s.status.durable),
            "end_lsn": opt_lsn(s.upstream_end()),
            "lag_bytes": s.upstream_lag_bytes(),
            "lag_seconds": s.upstream_lag_seconds(),
            "received_bytes": up.bytes_received(),
            "connections": up.connections(),
        },
        "store": {
            "segments": s.store.segments,
            "bytes": s.store.bytes,
            "oldest_lsn": opt_lsn(s.status.oldest),
            "failure": s.status.store_failure,
            "write_errors": s.counters.store.write_errors(),
        },
        "replication": replication,
        "synchronous": synchronous(s.status.synchronous),
        "slots": slots,
        "time": s.now_seconds(),
    })
}

/// The synchronous standbys' state: `off`, `waiting` (too few stream) or `acknowledging`,
/// with what they hold.
fn synchronous(ack: SyncAck) -> Value {
    match ack {
        SyncAck::Off => json!({ "state": "off" }),
        SyncAck::Short {
            required,
            available,
        } => json!({ "state": "waiting", "required": required, "streaming": available }),
        SyncAck::Held(p) => json!({
            "state": "acknowledging",
            "write_lsn": lsn(p.write),
            "flush_lsn": lsn(p.flush),
            "replay_lsn": lsn(p.apply),
        }),
    }
}
