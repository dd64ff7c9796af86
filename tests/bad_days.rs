//! Three bad days for the relay, against a real PostgreSQL 15 primary with 1 MB segments
//! (ACCEPTANCE.md rows C1, D3 and J1).
//!
//! - C1, disk full: the relay's data directory is a 12 MB tmpfs, a standby D1 streams through
//!   the relay and an unused relay slot d2 (`RESERVE_WAL`) pins every segment, so a write load
//!   (about 2 MB/s, running throughout) fills the disk within seconds; a filler file then
//!   takes whatever pages the relay's cut-back `.partial` left free, so the disk is full to
//!   the last page. While it is full: the primary's `walrelay` slot never passes the relay's
//!   stored end and stops advancing while the primary writes on; D1 receives everything the
//!   relay holds, on the same connection; every file under a complete segment name has the
//!   full segment size, at every sample (every 100 ms); the relay log names the error ("the
//!   WAL store failed", "No space left on device") and the process stays up. Space is then
//!   freed the two ways the row names, one test each: `DROP_REPLICATION_SLOT d2` (which must
//!   succeed on the full disk, as it does on PostgreSQL, and after which retention must remove
//!   at least 4 MB), or a remount to 128 MB (after which d2 is dropped and retention must free
//!   what it pinned). Either way the same relay process catches up with the primary and has
//!   no further store failure while the load goes on; at the end its segments equal the
//!   archive (O3), `pg_waldump` reads them (O4), and D1 replays to the primary's end with the
//!   same rows.
//! - D3, slow link: a userspace link ([`support::wan_link`]) adds 200 ms each way and caps
//!   each direction at 1 MB/s between the primary (`wal_sender_timeout = 5s`) and the relay
//!   (`--receive-timeout 10s`, status every second). Under about 8 MB of WAL written over 20 s
//!   and a 2 MB burst: the primary never times the relay out, the relay never reconnects (one
//!   "connected to upstream" line, one walsender pid), and at the end O3 and O4 hold. The test
//!   first proves the link is slow: a psql round trip through it takes at least four one-way
//!   delays, and the burst takes at least 1.5 s to be acknowledged.
//! - J1, clock jumps: the relay runs under libfaketime with the monotonic clock left alone
//!   (as NTP steps only the wall clock), with two standbys behind it and every timeout at
//!   10 s. The wall clock is moved while it runs (+0, then +1h, then -1h, through
//!   `FAKETIME_TIMESTAMP_FILE`), and in two more runs is offset from the start by a constant
//!   `FAKETIME=+1h` or `-1h`. After each jump: `/status` shows the relay's clock moved by the
//!   hour and the standbys see its messages' send times an hour off (so the test is not
//!   vacuous), the standbys replay new WAL up to the primary's flush
//!   before and after an idle spell longer than the timeouts, their walreceiver pids do not
//!   change, the relay reconnects neither upstream nor downstream, and no log (relay,
//!   primary, standbys) has a replication timeout.
//!
//! Under `CI=true` a missing tool (PostgreSQL, libfaketime, permission to mount a tmpfs)
//! fails the test; elsewhere the test is skipped with a `SKIP` line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::relay_env::{remove_faketime_shm, require_faketime};
use support::relay_topology::*;
use support::tmpfs::{TmpfsMount, take_free_space};
use support::wan_link::{LinkShape, WanLink};
use support::*;
use walrelay::testkit::localpg::{
    Cluster, PgBinaries, ScratchDir, free_port, require_postgres, wait_until,
};
use walrelay::types::{Lsn, WalSegmentSize};

const MB: u64 = 1 << 20;

/// Seconds since the epoch on the test's (real) wall clock.
fn real_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What a relay log line says about a timeout, upstream or downstream.
const RELAY_TIMEOUTS: [&str; 3] = [
    "due to replication timeout",
    "due to timeout",
    "has not read for",
];

/// What PostgreSQL logs when a walsender or walreceiver times out.
const PG_TIMEOUTS: [&str; 2] = [
    "terminating walsender process due to replication timeout",
    "terminating walreceiver due to timeout",
];

// ---------------------------------------------------------------------------------------------
// C1: disk full.

/// The relay's tmpfs: about eleven 1 MB segments besides the relay's own small files.
const C1_TMPFS_MB: u64 = 12;

/// What the C1 sampler saw while the disk filled and while it was full.
#[derive(Debug, Default)]
struct DiskSamples {
    samples: u64,
    /// Files under a complete segment name without the full segment size: (name, length).
    short_complete: Vec<(String, u64)>,
    /// Samples where the primary's slot was past the end of the relay's files:
    /// (restart_lsn, stored end).
    slot_ahead: Vec<(Lsn, Lsn)>,
}

/// One sample: every completed segment's length, then the primary's slot against the end of
/// the relay's files (read after the slot, and it only grows while the relay writes).
fn sample_disk(primary: &Cluster, wal: &Path, size: WalSegmentSize, out: &mut DiskSamples) {
    for name in segment_files(wal) {
        match fs::metadata(wal.join(&name)) {
            Ok(m) if m.len() != size.bytes_u64() => out.short_complete.push((name, m.len())),
            _ => {}
        }
    }
    if let Some(restart) = relay_slot_restart(primary) {
        let stored = stored_end(wal, size).unwrap_or_default();
        if restart > stored {
            out.slot_ahead.push((restart, stored));
        }
    }
    out.samples += 1;
}

/// How C1 frees space once the relay's disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FreeSpace {
    /// Drop d2, the slot that pins the WAL, so that retention removes segments.
    DropSlot,
    /// Remount the tmpfs larger.
    Remount,
}

/// The tmpfs size C1's [`FreeSpace::Remount`] grows to.
const C1_REMOUNT_MB: u64 = 128;

/// C1, freed the first way the row names: d2's slot is dropped.
#[test]
fn c1_disk_full_then_freed_by_dropping_the_pinning_slot() {
    c1_disk_full("c1drop", FreeSpace::DropSlot);
}

/// C1, freed the second way the row names: the filesystem grows.
#[test]
fn c1_disk_full_then_freed_by_remounting_larger() {
    c1_disk_full("c1grow", FreeSpace::Remount);
}

/// C1: the relay's disk fills under load while an unused slot pins its WAL; space is freed
/// as `how` says, and the same relay process resumes.
fn c1_disk_full(label: &str, how: FreeSpace) {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, label);
    let data = dir.path().join("relay");
    let Some(disk) = TmpfsMount::mount(&data, C1_TMPFS_MB) else {
        return;
    };
    let primary = primary_with(&bins, dir.path(), &[]);
    let size = primary.wal_segment_size().unwrap();
    let (relay_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let (listen, http) = (
        format!("127.0.0.1:{relay_port}"),
        format!("127.0.0.1:{http_port}"),
    );
    let extra = [
        "--listen",
        &listen,
        "--http-listen",
        &http,
        "--wal-keep-size",
        "2MB",
    ];
    let mut relay = RelayProcess::start(&primary.conninfo(), &data, &extra);
    let relay_pid = relay.pid();
    wait_acked(
        &primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let d1 = relay_standby(&primary, relay_port, "d1", &[]);
    wait_replayed(
        &d1,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let d1_pid = walreceiver_pid(&d1).expect("D1 streams");
    relay_repl(
        &bins,
        relay_port,
        "CREATE_REPLICATION_SLOT d2 PHYSICAL RESERVE_WAL",
    );
    let wal = relay.wal_dir();
    let began = Instant::now();

    let stop = AtomicBool::new(false);
    let (seen, fault, freed) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = DiskSamples::default();
            while !stop.load(Ordering::SeqCst) {
                sample_disk(&primary, &wal, size, &mut seen);
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        let stop_sampler = StopOnDrop(&stop);
        // The load runs through the fault and while space is freed, as the row's Wpg does,
        // at a rate the disk can hold between two retention rounds (a second apart).
        let load = WriteLoad::start(&bins, &primary.conninfo(), 100, 30_000);
        let fault = c1_fill_disk(&primary, &mut relay, &d1, size);
        let freed = c1_free_and_resume(&bins, &primary, &relay, &disk, relay_port, how);
        let (committed, failed) = load.stop();
        assert!(
            committed > 0 && failed == 0,
            "load: {committed} ok, {failed} failed"
        );
        drop(stop_sampler);
        (sampler.join().unwrap(), fault, freed)
    });

    let compared = settle_and_compare(&primary, &relay.wal_dir(), size);
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_replayed(&d1, target, Duration::from_secs(60));
    for table in ["walrelay_fault_load", "walrelay_load"] {
        assert_eq!(
            table_digest(&primary, table),
            table_digest(&d1, table),
            "D1's {table} differs from the primary's"
        );
    }
    let status = relay_status(http_port);
    println!(
        "C1 ({how:?}): disk full {:.1} s after the load began ({} kB left for a filler); \
         during the fault the primary wrote {} kB while its slot for the relay stayed at {}; \
         D1 was served up to {} (the relay held {}); {} store failures logged, {} upstream \
         reconnects; the relay acknowledged the primary's position {:.1} s after space was \
         freed; the WAL files held {} kB before d2 was dropped and {} kB at least after; {} \
         samples, {} segments byte-identical at the end; /status store: {}; {:.1} s in all",
        fault.full_after.as_secs_f64(),
        fault.filler_bytes / 1024,
        fault.primary_wrote / 1024,
        fault.frozen_at,
        fault.d1_received,
        fault.held,
        fault.failures,
        fault.reconnects,
        freed.resumed_after.as_secs_f64(),
        freed.before_drop / 1024,
        freed.least_after_drop / 1024,
        seen.samples,
        compared,
        status["store"],
        began.elapsed().as_secs_f64(),
    );
    println!("C1 first store error: {}", fault.first_error);
    assert!(seen.samples >= 30, "too few samples: {seen:?}");
    assert!(
        seen.short_complete.is_empty(),
        "short files under a complete segment name: {:?}",
        seen.short_complete
    );
    assert!(
        seen.slot_ahead.is_empty(),
        "the primary's slot passed the relay's stored end (restart_lsn, stored end): {:?}",
        seen.slot_ahead
    );
    assert!(relay.is_running(), "the relay exited");
    assert_eq!(relay.pid(), relay_pid);
    assert_eq!(walreceiver_pid(&d1), Some(d1_pid), "D1 reconnected");
    assert!(!relay.log_contents().contains("panicked at"));
}

/// [`converge_and_compare`] for a relay whose retention keeps little: once the relay has
/// acknowledged the primary's end, retention's next round (a second apart) is awaited before
/// the segments are listed, so none is removed while they are compared and read.
fn settle_and_compare(primary: &Cluster, relay_wal: &Path, size: WalSegmentSize) -> usize {
    let switched = primary.switch_wal().unwrap();
    primary
        .wait_archived(switched, Duration::from_secs(60))
        .unwrap();
    let end = primary.write_load(20).unwrap();
    wait_acked(primary, end, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500));
    let compared = assert_same_segments(relay_wal, &primary.archive_dir(), size);
    assert_waldump(primary.bins(), relay_wal, size);
    let pg_wal = primary.data_dir().join("pg_wal");
    assert_eq!(assert_partial_prefix(relay_wal, &pg_wal), 1);
    assert_no_leftovers(relay_wal, size);
    compared
}

/// The `durable=` end of the last "recovered stored WAL" line in `log`: what the store held
/// when it was last opened.
fn last_recovered_durable(log: &str) -> Option<Lsn> {
    let line = log.lines().rfind(|l| l.contains("recovered stored WAL"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("durable="))
        .and_then(|v| v.parse().ok())
}

/// What [`c1_fill_disk`] saw while the disk was full.
struct C1Fault {
    full_after: Duration,
    filler_bytes: u64,
    frozen_at: Lsn,
    primary_wrote: u64,
    held: Lsn,
    d1_received: Lsn,
    failures: usize,
    reconnects: usize,
    first_error: String,
}

/// Waits for the load to fill the relay's disk and checks the relay while it is full.
fn c1_fill_disk(
    primary: &Cluster,
    relay: &mut RelayProcess,
    d1: &Cluster,
    size: WalSegmentSize,
) -> C1Fault {
    let since = relay.log_len();
    let load_began = Instant::now();
    relay.wait_log(since, "No space left on device", Duration::from_secs(60));
    let full_after = load_began.elapsed();
    let first_error = lines_with(&relay.log_since(since), &["No space left on device"])
        .first()
        .unwrap()
        .to_string();
    assert!(
        first_error.contains("the WAL store failed"),
        "unclear error: {first_error}"
    );

    // Whatever the relay's last failed write left free (a cut-back .partial can free a few
    // pages, or none), the disk is now full to the last page for a while, as it would be with
    // another writer on it; meanwhile the last acknowledgement reaches the primary.
    let filler_bytes = take_free_space(&relay.data_dir.join("filler"), Duration::from_secs(2));
    let frozen_at = relay_slot_restart(primary).unwrap();
    let flush_before = primary.current_wal_flush_lsn().unwrap();
    // What the relay holds: the durable end its store recovered at the last reopen.
    let held = last_recovered_durable(&relay.log_since(since)).expect("the store was reopened");
    assert!(
        frozen_at <= held,
        "the primary's slot ({frozen_at}) is past what the relay holds ({held})"
    );
    // D1 is served everything the relay holds, on its connection.
    let mut d1_received = Lsn(0);
    wait_until(
        Duration::from_secs(15),
        "D1 receives what the relay holds",
        || {
            d1_received = d1
                .psql("SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')")?
                .parse()
                .unwrap_or_default();
            Ok(d1_received >= held)
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let restart_after = relay_slot_restart(primary).unwrap();
    let flush_after = primary.current_wal_flush_lsn().unwrap();
    assert!(relay.is_running(), "the relay exited on a full disk");
    let during = relay.log_since(since);
    assert!(
        !during.contains("panicked at"),
        "the relay panicked:\n{during}"
    );
    assert!(
        flush_after.0 - flush_before.0 >= MB,
        "the primary wrote too little during the fault to tell ({flush_before} -> {flush_after})"
    );
    assert_eq!(
        restart_after,
        frozen_at,
        "the primary's slot moved while the relay's disk was full (primary wrote {} kB)",
        (flush_after.0 - flush_before.0) / 1024
    );
    assert!(held <= stored_end(&relay.wal_dir(), size).unwrap());
    C1Fault {
        full_after,
        filler_bytes,
        frozen_at,
        primary_wrote: flush_after.0 - flush_before.0,
        held,
        d1_received,
        failures: relay.count_log(since, "the WAL store failed;"),
        reconnects: relay.count_log(since, "reconnecting to upstream"),
        first_error,
    }
}

/// What [`c1_free_and_resume`] saw.
struct C1Freed {
    before_drop: u64,
    least_after_drop: u64,
    resumed_after: Duration,
}

/// Frees space as `how` says while the load runs, then checks that the same relay process
/// catches up with the primary and keeps up without the store failing again. With
/// [`FreeSpace::Remount`], d2 is dropped once there is room, and retention must then free
/// what it pinned.
fn c1_free_and_resume(
    bins: &PgBinaries,
    primary: &Cluster,
    relay: &RelayProcess,
    disk: &TmpfsMount,
    relay_port: u16,
    how: FreeSpace,
) -> C1Freed {
    let freeing = Instant::now();
    let mut before_drop = wal_bytes(&relay.wal_dir());
    let mut least_after_drop = before_drop;
    match how {
        FreeSpace::DropSlot => {
            // PostgreSQL drops a slot on a full disk (a rename and a removal need no space).
            let conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres replication=1");
            let dropped = bins.psql(&conninfo, "DROP_REPLICATION_SLOT d2");
            assert!(
                dropped.is_ok(),
                "the relay refused to drop slot d2 on its full disk, so the space it pins cannot \
                 be freed: {}\ntmpfs used: {} of {} kB; the relay's last warnings:\n{}",
                dropped.unwrap_err(),
                disk.used_bytes() / 1024,
                C1_TMPFS_MB * 1024,
                last_warnings(&relay.log_contents(), 6)
            );
            least_after_drop = wait_retention_frees(relay, disk, before_drop);
        }
        FreeSpace::Remount => disk.resize(C1_REMOUNT_MB),
    }
    // The same process catches up with the primary.
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_acked(primary, target, Duration::from_secs(60));
    let resumed_after = freeing.elapsed();
    // Once retention has had a round, it keeps up with the load without the store failing
    // again.
    std::thread::sleep(Duration::from_secs(2));
    let calm = relay.log_len();
    std::thread::sleep(Duration::from_secs(3));
    wait_acked(
        primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let again = relay.count_log(calm, "the WAL store failed;");
    assert_eq!(
        again,
        0,
        "the store failed again:\n{}",
        relay.log_since(calm)
    );
    if how == FreeSpace::Remount {
        before_drop = wal_bytes(&relay.wal_dir());
        relay_repl(bins, relay_port, "DROP_REPLICATION_SLOT d2");
        least_after_drop = wait_retention_frees(relay, disk, before_drop);
    }
    C1Freed {
        before_drop,
        least_after_drop,
        resumed_after,
    }
}

/// The last `n` warning or error lines of a relay log.
fn last_warnings(log: &str, n: usize) -> String {
    let lines = lines_with(log, &[" WARN ", " ERROR "]);
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until the relay's WAL files hold at least 4 MB less than `before` (d2 is gone, so
/// retention may remove what it pinned); returns the least seen.
fn wait_retention_frees(relay: &RelayProcess, disk: &TmpfsMount, before: u64) -> u64 {
    let since = relay.log_len();
    let mut least = before;
    wait_until(Duration::from_secs(30), "retention frees space", || {
        least = least.min(wal_bytes(&relay.wal_dir()));
        Ok(least + 4 * MB <= before)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the WAL files still hold {} kB, {} kB before (tmpfs used {} kB); log since:\n{}",
            wal_bytes(&relay.wal_dir()) / 1024,
            before / 1024,
            disk.used_bytes() / 1024,
            relay.log_since(since)
        )
    });
    least
}

// ---------------------------------------------------------------------------------------------
// D3: a slow, long link between the primary and the relay.

/// One-way latency of the D3 link.
const D3_DELAY: Duration = Duration::from_millis(200);

/// Bandwidth of the D3 link, each direction.
const D3_RATE: u64 = MB;

/// D3: 200 ms each way and 1 MB/s between the primary and the relay, under load.
#[test]
fn d3_slow_link_is_stable_and_never_timed_out() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "d3");
    let primary = primary_with(&bins, dir.path(), &[("wal_sender_timeout", "5s")]);
    let size = primary.wal_segment_size().unwrap();
    let link = WanLink::start(
        primary.port(),
        LinkShape {
            delay: D3_DELAY,
            rate: D3_RATE,
            buffer: 256 * 1024,
        },
    );
    let via = format!("host=127.0.0.1 port={} user=postgres", link.port);
    // The link is really long: a login and one query cross it at least four times.
    let t = Instant::now();
    bins.psql(&via, "SELECT 1").unwrap();
    let round_trip = t.elapsed();
    assert!(
        round_trip >= D3_DELAY * 4,
        "psql through the link took only {round_trip:?}"
    );

    let relay = RelayProcess::start(
        &via,
        &dir.path().join("relay"),
        &["--receive-timeout", "10s"],
    );
    wait_acked(
        &primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let walsender = walsender_pid(&primary).expect("the relay streams");
    let began = Instant::now();
    let load_secs = env_u64("WALRELAY_D3_SECS", 20);
    let start_lsn = primary.current_wal_flush_lsn().unwrap();
    let mut max_lag = 0u64;
    let mut ticks = 0u64;
    while began.elapsed() < Duration::from_secs(load_secs) {
        let tick = Instant::now();
        primary
            .psql(
                "CREATE TABLE IF NOT EXISTS walrelay_d3 (id bigserial PRIMARY KEY, payload text); \
                 INSERT INTO walrelay_d3 (payload) \
                 SELECT repeat(md5(g::text), 4) FROM generate_series(1, 150) g; \
                 SELECT pg_logical_emit_message(true, 'walrelay', repeat('m', 60000))",
            )
            .unwrap();
        ticks += 1;
        if ticks.is_multiple_of(4) {
            let flush = primary.current_wal_flush_lsn().unwrap();
            if let Some(acked) = acked_flush(&primary, "walrelay") {
                max_lag = max_lag.max(flush.0.saturating_sub(acked.0));
            }
            assert_eq!(
                walsender_pid(&primary),
                Some(walsender),
                "the relay reconnected"
            );
        }
        std::thread::sleep(Duration::from_millis(250).saturating_sub(tick.elapsed()));
    }
    let written = primary.current_wal_flush_lsn().unwrap().0 - start_lsn.0;
    // A burst larger than the link carries in a second takes it at the link's rate.
    let burst = primary.emit_message(2_000_000).unwrap();
    let t = Instant::now();
    wait_acked(&primary, burst, Duration::from_secs(60));
    let burst_took = t.elapsed();

    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    let log = relay.log_contents();
    let connected = relay.count_log(0, "connected to upstream");
    let primary_log = primary.log_contents();
    println!(
        "D3: {} kB of WAL in {:.1} s of load plus a 2 MB burst acknowledged in {:.1} s; psql \
         round trip {round_trip:?}; largest lag seen {} kB; {} kB to the relay and {} kB back \
         through the link; {connected} upstream connection(s); {compared} segments \
         byte-identical; {:.1} s in all",
        written / 1024,
        load_secs as f64,
        burst_took.as_secs_f64(),
        max_lag / 1024,
        link.counters.to_client.load(Ordering::SeqCst) / 1024,
        link.counters.to_server.load(Ordering::SeqCst) / 1024,
        began.elapsed().as_secs_f64(),
    );
    assert!(
        written >= 5 * MB,
        "only {written} bytes of WAL were written"
    );
    assert!(
        burst_took >= Duration::from_millis(1500),
        "2 MB crossed a 1 MB/s link in {burst_took:?}"
    );
    let timeouts = lines_with(&primary_log, &PG_TIMEOUTS);
    assert!(timeouts.is_empty(), "the primary timed out: {timeouts:?}");
    let timeouts = lines_with(&log, &RELAY_TIMEOUTS);
    assert!(timeouts.is_empty(), "the relay timed out: {timeouts:?}");
    assert_eq!(connected, 1, "the relay reconnected:\n{log}");
    assert_eq!(
        walsender_pid(&primary),
        Some(walsender),
        "the relay reconnected"
    );
    assert!(!log.contains("panicked at"));
}

// ---------------------------------------------------------------------------------------------
// J1: wall-clock jumps under the relay.

/// Idle time after each jump: longer than every timeout (10 s), so timers that misread the
/// clock, or keepalives that stop, would show.
const J1_IDLE: Duration = Duration::from_secs(11);

/// The J1 topology: a primary, the relay under libfaketime, two standbys. Fields drop in
/// order: standbys, relay, primary, directory.
struct ClockTopo {
    standbys: Vec<Cluster>,
    relay: RelayProcess,
    primary: Cluster,
    http_port: u16,
    relay_pid: u32,
    receivers: Vec<u32>,
    walsender: u32,
    clock_file: Option<PathBuf>,
    _dir: ScratchDir,
}

impl Drop for ClockTopo {
    fn drop(&mut self) {
        self.relay.kill9();
        remove_faketime_shm(self.relay_pid);
    }
}

/// Starts the J1 topology with the relay's wall clock faked by `faketime` (a `FAKETIME`
/// value), or, when `None`, by a `FAKETIME_TIMESTAMP_FILE` that starts at `+0`.
fn clock_topo(label: &str, faketime: Option<&str>) -> Option<ClockTopo> {
    let bins = require_postgres()?;
    let lib = require_faketime()?;
    let dir = scratch(&bins, label);
    let primary = primary_with(&bins, dir.path(), &[("wal_sender_timeout", "10s")]);
    let (relay_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let (listen, http) = (
        format!("127.0.0.1:{relay_port}"),
        format!("127.0.0.1:{http_port}"),
    );
    let clock_file = dir.path().join("faketime.rc");
    fs::write(&clock_file, "+0\n").unwrap();
    let lib = lib.to_str().unwrap();
    let mut env = vec![
        ("LD_PRELOAD", lib),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    match faketime {
        Some(value) => env.push(("FAKETIME", value)),
        None => env.push(("FAKETIME_TIMESTAMP_FILE", clock_file.to_str().unwrap())),
    }
    let args = [
        "--listen",
        &listen,
        "--http-listen",
        &http,
        "--sender-timeout",
        "10s",
        "--receive-timeout",
        "10s",
        "--status-interval",
        "10s",
        "--reconnect-min",
        "50ms",
        "--reconnect-max",
        "1s",
    ];
    let relay =
        RelayProcess::start_with_env(&primary.conninfo(), &dir.path().join("relay"), &args, &env);
    let relay_pid = relay.pid();
    wait_acked(
        &primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let standby_config = [
        ("wal_receiver_timeout", "10s"),
        ("wal_receiver_status_interval", "10s"),
    ];
    let standbys: Vec<Cluster> = ["d1", "d2"]
        .iter()
        .map(|slot| relay_standby(&primary, relay_port, slot, &standby_config))
        .collect();
    let target = primary.current_wal_flush_lsn().unwrap();
    for standby in &standbys {
        wait_replayed(standby, target, Duration::from_secs(30));
    }
    let receivers = standbys
        .iter()
        .map(|s| walreceiver_pid(s).expect("the standby streams"))
        .collect();
    let walsender = walsender_pid(&primary).expect("the relay streams");
    wait_listening(http_port, Duration::from_secs(10));
    Some(ClockTopo {
        standbys,
        relay,
        primary,
        http_port,
        relay_pid,
        receivers,
        walsender,
        clock_file: faketime.is_none().then_some(clock_file),
        _dir: dir,
    })
}

impl ClockTopo {
    /// Sets the relay's wall clock offset through the timestamp file (`+1h`, `-1h`, `+0`).
    /// The file is replaced by a rename, so libfaketime (which reads it at every clock call)
    /// never sees it empty.
    fn jump(&self, offset: &str) {
        let file = self.clock_file.as_ref().expect("a timestamp-file topology");
        let tmp = file.with_extension("tmp");
        fs::write(&tmp, format!("{offset}\n")).unwrap();
        fs::rename(&tmp, file).unwrap();
    }

    /// Waits until the relay's `/status` time is `offset_secs` from the real clock (within
    /// a minute); returns the offset seen.
    fn wait_clock(&self, offset_secs: f64) -> f64 {
        let mut seen = f64::NAN;
        wait_until(Duration::from_secs(10), "the relay's clock moved", || {
            let time = relay_status(self.http_port)["time"].as_f64().unwrap();
            seen = time - real_now();
            Ok((seen - offset_secs).abs() < 60.0)
        })
        .unwrap_or_else(|e| panic!("{e}: the relay's clock is {seen:.0} s off the real one"));
        seen
    }

    /// New WAL on the primary, replayed by both standbys; returns the longest wait.
    fn replicate(&self, rows: u32) -> Duration {
        self.primary.write_load(rows).unwrap();
        let target = self.primary.emit_message(200_000).unwrap();
        self.standbys
            .iter()
            .map(|s| wait_replayed(s, target, Duration::from_secs(30)))
            .max()
            .unwrap()
    }

    /// No reconnect anywhere and no timeout in any log since the start.
    fn assert_no_false_timeouts(&mut self, phase: &str) {
        assert!(self.relay.is_running(), "{phase}: the relay exited");
        let pids: Vec<Option<u32>> = self.standbys.iter().map(walreceiver_pid).collect();
        let expected: Vec<Option<u32>> = self.receivers.iter().copied().map(Some).collect();
        assert_eq!(pids, expected, "{phase}: a standby's walreceiver changed");
        assert_eq!(
            walsender_pid(&self.primary),
            Some(self.walsender),
            "{phase}: the relay reconnected upstream"
        );
        let log = self.relay.log_contents();
        assert_eq!(
            self.relay.count_log(0, "connected to upstream"),
            1,
            "{phase}: the relay reconnected upstream:\n{log}"
        );
        let timeouts = lines_with(&log, &RELAY_TIMEOUTS);
        assert!(timeouts.is_empty(), "{phase}: relay timeouts: {timeouts:?}");
        assert!(!log.contains("panicked at"), "{phase}: the relay panicked");
        for (name, cluster) in std::iter::once(("primary", &self.primary))
            .chain(["d1", "d2"].into_iter().zip(self.standbys.iter()))
        {
            let log = cluster.log_contents();
            let timeouts = lines_with(&log, &PG_TIMEOUTS);
            assert!(
                timeouts.is_empty(),
                "{phase}: {name} timed out: {timeouts:?}"
            );
        }
    }

    /// One phase at a clock offset: replication before and after an idle spell longer than
    /// every timeout, then no false timeouts. Returns the longest replay wait.
    fn phase(&mut self, name: &str, offset_secs: f64) -> Duration {
        let seen = self.wait_clock(offset_secs);
        let before = self.replicate(2000);
        // The standbys see the relay's clock too: its messages carry its wall-clock time.
        let sent: Vec<f64> = self.standbys.iter().map(last_send_offset).collect();
        for offset in &sent {
            assert!(
                (offset - offset_secs).abs() < 60.0,
                "{name}: the relay's last message was sent {offset:+.0} s from the standby's now"
            );
        }
        std::thread::sleep(J1_IDLE);
        let after = self.replicate(2000);
        self.assert_no_false_timeouts(name);
        println!(
            "J1 {name}: relay clock {seen:+.0} s off (its messages' send times {sent:+.0?} s \
             off on the standbys); standbys replayed new WAL within {before:?} after the jump \
             and {after:?} after {J1_IDLE:?} idle"
        );
        before.max(after)
    }
}

/// How far the send time of the last message a standby got from the relay is from the
/// standby's own clock, in seconds.
fn last_send_offset(standby: &Cluster) -> f64 {
    standby
        .psql("SELECT extract(epoch FROM last_msg_send_time - now()) FROM pg_stat_wal_receiver")
        .unwrap()
        .parse()
        .unwrap()
}

/// J1: the relay's wall clock jumps forward and back by an hour while it streams.
#[test]
fn j1_clock_jumps_cause_no_false_timeouts() {
    let Some(mut topo) = clock_topo("j1jump", None) else {
        return;
    };
    let began = Instant::now();
    topo.phase("+0", 0.0);
    topo.jump("+1h");
    topo.phase("+1h", 3600.0);
    topo.jump("-1h");
    topo.phase("-1h", -3600.0);
    println!("J1 jumps: {:.1} s", began.elapsed().as_secs_f64());
}

/// J1 as the row states it: the relay runs an hour ahead from the start.
#[test]
fn j1_relay_an_hour_ahead() {
    let Some(mut topo) = clock_topo("j1ahead", Some("+1h")) else {
        return;
    };
    topo.phase("FAKETIME=+1h", 3600.0);
}

/// J1 as the row states it: the relay runs an hour behind from the start.
#[test]
fn j1_relay_an_hour_behind() {
    let Some(mut topo) = clock_topo("j1behind", Some("-1h")) else {
        return;
    };
    topo.phase("FAKETIME=-1h", -3600.0);
}
