//! The results: one JSON document (every measurement and the ratios derived from them) and the
//! Markdown tables of the README.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::MIB;
use crate::catchup::Catchup;
use crate::client_runs::{ClientsCase, Latency};
use crate::disk::{Disk, SYNC_EVERY};
use crate::fanout::{Case, Load};
use crate::servers::Mode;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The run's settings and the machine.
    pub config: Value,
    /// The disk's fdatasync'd write bandwidth.
    pub disk: Option<Disk>,
    /// The relay catching up WAL already written.
    pub catchup: Option<Catchup>,
    /// Real standbys behind each fan-out server.
    pub fanout: Vec<Case>,
    /// Lightweight clients on one relay.
    pub clients: Vec<ClientsCase>,
    /// Flush → received latency under pgbench.
    pub latency: Option<Latency>,
    /// The ratios read off the above.
    pub derived: Value,
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn median(v: &[f64]) -> f64 {
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The fan-out server's CPU that serves the standbys, per standby and GiB: the relay's whole
/// CPU less its CPU with no standby under the same load (both per GiB), PostgreSQL's walsender
/// processes alone. `None` without standbys or a baseline.
pub fn send_cpu_per_standby_gib(case: &Case, all: &[Case]) -> Option<f64> {
    if case.standbys == 0 || case.wal_bytes == 0 {
        return None;
    }
    let per_gib = case.server.cpu_s / gib(case.wal_bytes);
    let n = case.standbys as f64;
    match case.mode {
        Mode::Relay => {
            let base = relay_alone(case.load, all)?;
            let base_per_gib = base.server.cpu_s / gib(base.wal_bytes);
            Some((per_gib - base_per_gib) / n)
        }
        Mode::Cascade | Mode::Direct => {
            let walsenders = case.server.cpu_by.get("walsender").copied().unwrap_or(0.0);
            Some(walsenders / gib(case.wal_bytes) / n)
        }
    }
}

/// The relay's runtime threads, workers and blocking ones, as `/proc` names them (15 bytes of
/// the name tokio gives them): they run the senders' tasks and, besides them, only what the
/// relay does away from its own threads (accepting connections, the HTTP endpoint, slot
/// saves, retention's removals), which the subtraction of the group with no standby takes
/// out; receiving, writing and syncing have threads of their own (`upstream`, `wal-writer`,
/// `wal-sync`).
const RELAY_WORKERS: &str = "tokio-rt-worker";

/// The relay's send path alone, per standby and GiB: its worker threads' CPU per GiB less
/// theirs with no standby under the same load, divided by the standbys. Of the relay, this is
/// what the walsender processes are of PostgreSQL; [`send_cpu_per_standby_gib`] also counts
/// what receiving, writing and syncing cost more with standbys on the same cores. `None` for
/// PostgreSQL, or without standbys or a baseline.
pub fn sender_threads_cpu_per_standby_gib(case: &Case, all: &[Case]) -> Option<f64> {
    if case.mode != Mode::Relay || case.standbys == 0 || case.wal_bytes == 0 {
        return None;
    }
    let workers =
        |c: &Case| c.server.cpu_by.get(RELAY_WORKERS).copied().unwrap_or(0.0) / gib(c.wal_bytes);
    let base = relay_alone(case.load, all)?;
    Some((workers(case) - workers(base)) / case.standbys as f64)
}

/// The relay's group with no standby under `load`: the baseline of its send CPU.
fn relay_alone(load: Load, all: &[Case]) -> Option<&Case> {
    all.iter()
        .find(|c| c.mode == Mode::Relay && c.load == load && c.standbys == 0)
}

/// The relay's ingest CPU per GiB (the run with no downstream, WAL-only load).
fn ingest_cpu_per_gib(fanout: &[Case]) -> Option<f64> {
    relay_alone(Load::Wal, fanout).map(|c| c.server.cpu_s / gib(c.wal_bytes))
}

/// Relay CPU per client and GiB: raw, and less the ingest CPU.
fn client_cpu(case: &ClientsCase, ingest: Option<f64>) -> (f64, Option<f64>) {
    let per_gib = case.relay.cpu_s / gib(case.wal_bytes);
    let n = case.clients as f64;
    (per_gib / n, ingest.map(|i| (per_gib - i) / n))
}

/// The ratios the benchmark is for.
pub fn derive(
    fanout: &[Case],
    clients: &[ClientsCase],
    latency: Option<&Latency>,
    disk: Option<&Disk>,
    catchup: Option<&Catchup>,
) -> Value {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let find = |mode: Mode, load: Load, n: usize| {
        fanout
            .iter()
            .find(|c| c.mode == mode && c.load == load && c.standbys == n)
    };
    let most = fanout.iter().map(|c| c.standbys).max().unwrap_or(0);
    let send = |mode| find(mode, Load::Wal, most).and_then(|c| send_cpu_per_standby_gib(c, fanout));
    let sender_threads = find(Mode::Relay, Load::Wal, most)
        .and_then(|c| sender_threads_cpu_per_standby_gib(c, fanout));
    let mut receive = Vec::new();
    let mut counts: Vec<usize> = fanout
        .iter()
        .map(|c| c.standbys)
        .filter(|&n| n > 0)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    let mut send_cpu = Vec::new();
    for load in [Load::Wal, Load::Table] {
        for &n in &counts {
            let pick = |mode, at: fn(&[f64]) -> Option<f64>| {
                find(mode, load, n).and_then(|c| at(&c.standby_received_s))
            };
            let first: fn(&[f64]) -> Option<f64> = |v| v.first().copied();
            let mid: fn(&[f64]) -> Option<f64> = |v| v.get(v.len() / 2).copied();
            let last: fn(&[f64]) -> Option<f64> = |v| v.last().copied();
            let times = |at| {
                json!({"direct": pick(Mode::Direct, at), "relay": pick(Mode::Relay, at),
                       "cascade": pick(Mode::Cascade, at)})
            };
            let (d, r, c) = (
                pick(Mode::Direct, last),
                pick(Mode::Relay, last),
                pick(Mode::Cascade, last),
            );
            let written = |mode| {
                find(mode, load, n)
                    .and_then(|c| c.disk_written_bytes)
                    .map(|b| b as f64 / MIB as f64)
            };
            receive.push(json!({
                "load": load.name(), "standbys": n,
                "first_received_s": times(first), "median_received_s": times(mid),
                "last_received_s": times(last),
                "last_relay_over_direct": ratio(r, d), "last_cascade_over_direct": ratio(c, d),
                "last_relay_over_cascade": ratio(r, c),
                "disk_written_mb": {"direct": written(Mode::Direct),
                    "relay": written(Mode::Relay), "cascade": written(Mode::Cascade)},
                "disk_written_relay_over_direct": ratio(written(Mode::Relay), written(Mode::Direct)),
            }));
            let cpu = |mode| find(mode, load, n).and_then(|c| send_cpu_per_standby_gib(c, fanout));
            let whole =
                |mode| find(mode, load, n).map(|c| c.server.cpu_s / gib(c.wal_bytes) / n as f64);
            send_cpu.push(json!({
                "load": load.name(), "standbys": n,
                "send_cpu_s_per_standby_gib": {"direct": cpu(Mode::Direct),
                    "relay": cpu(Mode::Relay), "cascade": cpu(Mode::Cascade),
                    "relay_sender_threads": find(Mode::Relay, load, n)
                        .and_then(|c| sender_threads_cpu_per_standby_gib(c, fanout))},
                "server_cpu_s_per_standby_gib": {"direct": whole(Mode::Direct),
                    "relay": whole(Mode::Relay), "cascade": whole(Mode::Cascade)},
            }));
        }
    }
    let ingest = ingest_cpu_per_gib(fanout);
    let per_client: Vec<Value> = clients
        .iter()
        .map(|c| {
            let (raw, net) = client_cpu(c, ingest);
            let all = c.client_received_s.iter().all(|s| s.is_finite());
            json!({
                "clients": c.clients, "all_received": all,
                "relay_cpu_s_per_client_gib": raw, "net_of_ingest": net,
                "peak_rss_kib": c.relay.peak_rss_kib, "peak_pss_kib": c.relay.peak_pss_kib,
                "budget_kib": c.memory_budget_kib,
                "rss_over_budget": c.relay.peak_rss_kib.map(|r| r as f64 / c.memory_budget_kib as f64),
                "client_threads_cpu_s": c.client_cpu_s,
            })
        })
        .collect();
    let (small, big) = (clients.first(), clients.last());
    let ingest_case = find(Mode::Relay, Load::Wal, 0);
    let ingest_mib_s = ingest_case.and_then(|c| {
        let s = c.server_received_s?;
        Some(c.wal_bytes as f64 / MIB as f64 / s)
    });
    let disk_mib_s = disk.and_then(Disk::best_mib_s);
    let pass_mib_s =
        |every: usize, release: bool| disk.and_then(|d| d.pass(every, release)).map(|p| p.mib_s);
    json!({
        "send_cpu_s_per_standby_gib_at_most_standbys": {
            "standbys": most,
            "relay_net_of_ingest": send(Mode::Relay),
            "cascade_walsenders": send(Mode::Cascade),
            "direct_walsenders": send(Mode::Direct),
            "relay_over_cascade": ratio(send(Mode::Relay), send(Mode::Cascade)),
            "relay_sender_threads": sender_threads,
            "relay_sender_threads_over_cascade": ratio(sender_threads, send(Mode::Cascade)),
        },
        "receive_times": receive,
        "send_cpu": send_cpu,
        "clients": per_client,
        "clients_cpu_per_client_gib_largest_over_smallest": match (small, big) {
            (Some(s), Some(b)) if s.clients != b.clients => json!({
                "counts": [s.clients, b.clients],
                "raw": ratio(Some(client_cpu(b, ingest).0), Some(client_cpu(s, ingest).0)),
                "net_of_ingest": ratio(client_cpu(b, ingest).1, client_cpu(s, ingest).1),
            }),
            _ => Value::Null,
        },
        "ingest": {
            "relay_durable_s": ingest_case.and_then(|c| c.server_received_s),
            "relay_mib_s": ingest_mib_s,
            "relay_cpu_s_per_gib": ingest,
            "primary_write_s": ingest_case.map(|c| c.write_s),
            "disk_sync_every_chunks": SYNC_EVERY,
            "disk_mib_s": disk_mib_s,
            "disk_mib_s_releasing_cache": pass_mib_s(SYNC_EVERY, true),
            "disk_mib_s_keeping_cache": pass_mib_s(SYNC_EVERY, false),
            "disk_mib_s_sync_every_1": pass_mib_s(1, false),
            "relay_over_disk": ratio(ingest_mib_s, disk_mib_s),
            "catching_up": catchup.map(|c| json!({
                "relay_mib_s": c.relay_mib_s,
                "relay_serving_mib_s": c.relay_serving_mib_s,
                "relay_cpu_s_per_gib": c.relay.cpu_s / gib(c.relay_serving_bytes),
                "receivewal_no_sync_mib_s": c.receivewal_mib_s,
                "relay_over_disk": ratio(Some(c.relay_mib_s), disk_mib_s),
                "relay_serving_over_disk": ratio(Some(c.relay_serving_mib_s), disk_mib_s),
                "relay_over_receivewal": ratio(Some(c.relay_mib_s), Some(c.receivewal_mib_s)),
            })),
        },
        "latency": latency.map(|l| json!({
            "relay_p50_ms": l.relay.p50_ms, "direct_p50_ms": l.direct.p50_ms,
            "relay_p99_ms": l.relay.p99_ms, "direct_p99_ms": l.direct.p99_ms,
            "p50_added_ms": l.relay.p50_ms - l.direct.p50_ms,
            "p99_added_ms": l.relay.p99_ms - l.direct.p99_ms,
        })),
    })
}

/// The send CPU of a table row; the relay's with its worker threads' alone in brackets.
fn send_cell(c: &Case, all: &[Case]) -> String {
    let net = secs(send_cpu_per_standby_gib(c, all));
    match sender_threads_cpu_per_standby_gib(c, all) {
        Some(t) => format!("{net} ({t:.2})"),
        None => net,
    }
}

fn mb(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.0} MB", k as f64 / 1024.0))
}

fn secs(s: Option<f64>) -> String {
    s.map_or("–".into(), |s| format!("{s:.2}"))
}

/// The Markdown tables, as in the README.
pub fn tables(r: &Report) -> String {
    let mut out = String::new();
    for load in [Load::Wal, Load::Table] {
        let cases: Vec<&Case> = r.fanout.iter().filter(|c| c.load == load).collect();
        let Some(first) = cases.first() else { continue };
        let what = match load {
            Load::Wal => "WAL-only load",
            Load::Table => "Table-writing load",
        };
        let _ = writeln!(
            out,
            "\n{what}, {:.0} MB of WAL:\n\n| Standbys | Server | Primary wrote it (s) | Server had it (s) | \
             Standbys had it: first / median / last (s) | Server CPU (s) | Send CPU per standby per GiB (s) | \
             Disk written (MB) | Peak RSS | Peak PSS |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            first.wal_bytes as f64 / MIB as f64
        );
        let mut sorted = cases.clone();
        sorted.sort_by_key(|c| (c.standbys, c.mode));
        for c in sorted {
            let rec = &c.standby_received_s;
            let times = match (rec.first(), rec.last()) {
                (Some(a), Some(z)) => format!("{a:.2} / {:.2} / {z:.2}", median(rec)),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {} | {times} | {:.2} | {} | {} | {} | {} |",
                c.standbys,
                c.mode.name(),
                c.write_s,
                secs(c.server_received_s),
                c.server.cpu_s,
                send_cell(c, &r.fanout),
                c.disk_written_bytes
                    .map_or("–".into(), |b| format!("{:.0}", b as f64 / MIB as f64)),
                mb(c.server.peak_rss_kib),
                mb(c.server.peak_pss_kib),
            );
        }
    }
    ingest_table(r, &mut out);
    clients_table(r, &mut out);
    if let Some(l) = &r.latency {
        let _ = writeln!(
            out,
            "\nFlush → received latency, pgbench -R {} -c {} for {} s ({} tps, {} flushes, sampled every {:.2} ms):\n\n\
             | Client streams from | p50 | p99 | max | resolution |\n|---|---:|---:|---:|---:|",
            l.rate,
            l.pgbench_clients,
            l.seconds,
            l.tps.map_or("?".into(), |t| format!("{t:.0}")),
            l.flushes,
            l.sample_interval_ms
        );
        for (name, d) in [("the relay", &l.relay), ("the primary", &l.direct)] {
            let _ = writeln!(
                out,
                "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | ±{:.2} ms |",
                d.p50_ms,
                d.p99_ms,
                d.max_ms,
                d.resolution_ms / 2.0
            );
        }
    }
    out
}

fn ingest_table(r: &Report, out: &mut String) {
    let base = r
        .fanout
        .iter()
        .filter(|c| c.standbys == 0 && c.load == Load::Wal);
    let mut rows = Vec::new();
    for c in base {
        let gibs = gib(c.wal_bytes);
        let (name, s) = match c.mode {
            Mode::Relay => ("relay, durable end", c.server_received_s),
            Mode::Cascade => ("cascading standby, received", c.server_received_s),
            Mode::Direct => ("the primary alone, written", Some(c.write_s)),
        };
        let rate = s.map(|s| c.wal_bytes as f64 / MIB as f64 / s);
        rows.push(format!(
            "| {name} | {} | {} | {:.2} |",
            secs(s),
            rate.map_or("–".into(), |r| format!("{r:.0}")),
            c.server.cpu_s / gibs
        ));
    }
    if let Some(c) = &r.catchup {
        rows.push(format!(
            "| relay, catching up {:.0} MB already written, durable end | {:.2} | {:.0} | {:.2} |",
            c.relay_bytes as f64 / MIB as f64,
            c.relay_s,
            c.relay_mib_s,
            c.relay.cpu_s / gib(c.relay_serving_bytes)
        ));
        rows.push(format!(
            "| `pg_receivewal --no-sync`, the same WAL from the primary | {:.2} | {:.0} | – |",
            c.receivewal_s, c.receivewal_mib_s
        ));
    }
    if let Some(d) = &r.disk {
        for p in &d.passes {
            rows.push(format!(
                "| write + fdatasync every {} chunk{}{} ({} MB) | {:.2} | {:.0} | – |",
                p.sync_every_chunks,
                if p.sync_every_chunks == 1 { "" } else { "s" },
                if p.releases_cache {
                    ", the page cache released behind"
                } else {
                    ""
                },
                d.bytes / MIB,
                p.secs,
                p.mib_s
            ));
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "\nIngest with no downstream, WAL-only load:\n\n| What | Time (s) | MB/s | CPU s per GiB |\n|---|---:|---:|---:|"
        );
        for row in rows {
            let _ = writeln!(out, "{row}");
        }
    }
}

fn clients_table(r: &Report, out: &mut String) {
    let Some(first) = r.clients.first() else {
        return;
    };
    let ingest = ingest_cpu_per_gib(&r.fanout);
    let _ = writeln!(
        out,
        "\nLightweight clients on one relay, {:.0} MB of WAL:\n\n| Clients | Clients had it: first / median / last (s) | \
         Relay CPU (s) | per client per GiB | less ingest | Clients' own CPU (s) | Relay threads | Peak RSS | \
         Peak PSS | 16 MB + 64 kB per client |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        first.wal_bytes as f64 / MIB as f64
    );
    for c in &r.clients {
        let (raw, net) = client_cpu(c, ingest);
        let rec = &c.client_received_s;
        let times = match (rec.first(), rec.last()) {
            (Some(a), Some(z)) => format!("{a:.2} / {:.2} / {z:.2}", median(rec)),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {times} | {:.2} | {:.1} ms | {} | {:.2} | {} | {} | {} | {:.0} MB |",
            c.clients,
            c.relay.cpu_s,
            raw * 1e3,
            net.map_or("–".into(), |n| format!("{:.1} ms", n * 1e3)),
            c.client_cpu_s,
            c.relay.units,
            mb(c.relay.peak_rss_kib),
            mb(c.relay.peak_pss_kib),
            c.memory_budget_kib as f64 / 1024.0
        );
    }
}
