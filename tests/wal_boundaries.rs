//! ACCEPTANCE A3's Wcraft and Wbig through the relay, at 1 MB and 16 MB segments: records that
//! end exactly on a WAL page boundary and exactly on a segment boundary, an XLOG_SWITCH whose
//! record starts right after a page header, a record whose header straddles a page (and a
//! segment) boundary, and records larger than three segments, one of them ending exactly on a
//! segment boundary. The relay stores them byte-identically to the primary's archive (O3),
//! `pg_waldump` reads its directory (O4), and a hot standby streaming from the relay on a relay
//! slot replays past every one of them (O1) with no complaint about the WAL it was sent.
//!
//! The boundaries are crafted as PostgreSQL's recovery tests 039_end_of_wal and
//! 043_no_contrecord_switch do: a non-transactional `pg_logical_emit_message` is one WAL
//! record and writes no commit record, so its payload size decides exactly where the record
//! ends. The record overhead is measured on the live server, and xlog.c's "usable byte
//! position" arithmetic (page headers take no record bytes) turns a target LSN into a size.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use support::*;
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, ScratchDir, free_port, require_postgres, run, wait_until,
};
use walrelay::types::{Lsn, WAL_PAGE_SIZE, WalSegmentSize};

const PAGE: u64 = WAL_PAGE_SIZE as u64;
/// `SizeOfXLogShortPHD`, MAXALIGNed: the header of every page but a segment's first.
const SHORT_HEADER: u64 = 24;
/// `SizeOfXLogLongPHD`, MAXALIGNed: the header of a segment's first page.
const LONG_HEADER: u64 = 40;
/// `SizeOfXLogRecord`: an XLOG_SWITCH record is a bare header.
const SWITCH_RECORD: u64 = 24;
/// The smallest payload a crafted record carries: above 255 bytes a record's main data takes
/// the long data header, the one the measured overhead includes.
const MIN_PAYLOAD: u64 = 256;
/// The payload of the record that measures the overhead.
const PROBE_PAYLOAD: u64 = 1024;
/// The size of a "small" crafted record: it starts and ends on the boundary's page.
const SMALL_RECORD: u64 = 512;
/// How far before a boundary a record starts so that its 24-byte header straddles it.
const SPLIT_AT: u64 = 16;
/// How many times a crafted shape is retried when a background record got in first.
const ATTEMPTS: usize = 5;
/// Lines a standby logs when the WAL it reads is not what the primary wrote.
const BAD_WAL_LINES: [&str; 3] = [
    "invalid record length",
    "incorrect resource manager data checksum",
    "unexpected pageaddr",
];

/// xlog.c's position arithmetic for one segment size: WAL positions counted in "usable bytes",
/// the bytes records occupy, which skip page headers (`XLogRecPtrToBytePos`).
#[derive(Clone, Copy, Debug)]
struct WalGeometry {
    seg: u64,
}

impl WalGeometry {
    fn new(size: WalSegmentSize) -> WalGeometry {
        WalGeometry {
            seg: size.bytes_u64(),
        }
    }

    /// The header size of the page starting at `page`.
    fn header_at(self, page: u64) -> u64 {
        if page.is_multiple_of(self.seg) {
            LONG_HEADER
        } else {
            SHORT_HEADER
        }
    }

    /// Record bytes from 0/0 to `lsn`; a page start counts like the position after its header.
    fn byte_pos(self, lsn: Lsn) -> u64 {
        let usable_page = PAGE - SHORT_HEADER;
        let usable_segment = self.seg / PAGE * usable_page - (LONG_HEADER - SHORT_HEADER);
        let (segments, offset) = (lsn.0 / self.seg, lsn.0 % self.seg);
        let (pages, in_page) = (offset / PAGE, offset % PAGE);
        let full_pages = match pages {
            0 => 0,
            n => PAGE - LONG_HEADER + (n - 1) * usable_page,
        };
        let in_page = in_page.saturating_sub(self.header_at(lsn.0 - in_page));
        segments * usable_segment + full_pages + in_page
    }

    /// Record bytes between two positions.
    fn usable(self, from: Lsn, to: Lsn) -> u64 {
        self.byte_pos(to) - self.byte_pos(from)
    }

    /// Where the next record starts when one ends at `end`: past the header of a page start.
    fn next_start(self, end: Lsn) -> Lsn {
        if end.0.is_multiple_of(PAGE) {
            Lsn(end.0 + self.header_at(end.0))
        } else {
            end
        }
    }

    /// The end of the segment holding `lsn` (the next segment's start).
    fn segment_end(self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 - lsn.0 % self.seg + self.seg)
    }
}

/// Where crafted records end.
#[derive(Clone, Copy, Debug)]
enum Boundary {
    /// A page end inside a segment.
    Page,
    /// A segment end.
    Segment,
}

impl Boundary {
    /// The first boundary of this kind after `from` with at least `room` record bytes
    /// between them.
    fn after(self, geo: WalGeometry, from: Lsn, room: u64) -> Lsn {
        let step = match self {
            Boundary::Page => PAGE,
            Boundary::Segment => geo.seg,
        };
        let mut end = Lsn(from.0 - from.0 % step + step);
        while geo.usable(from, end) < room
            || matches!(self, Boundary::Page) && end.0.is_multiple_of(geo.seg)
        {
            end = Lsn(end.0 + step);
        }
        end
    }
}

/// One crafted shape: the record `start` ends exactly at `end`, and the next record starts at
/// [`WalGeometry::next_start`]`(end)`.
#[derive(Clone, Debug)]
struct Crafted {
    label: &'static str,
    start: Lsn,
    end: Lsn,
    /// How pg_waldump's description of the record after `end` starts, when the shape fixes it.
    next: Option<&'static str>,
}

/// psql kept open for a sequence of one-value statements, so the positions it reads and the
/// records it writes follow each other within milliseconds.
struct Session {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Session {
    fn open(bins: &PgBinaries, conninfo: &str) -> Session {
        let mut cmd = bins.command("psql");
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start psql");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            input,
            output,
        }
    }

    /// Runs one statement that returns one LSN.
    fn lsn(&mut self, sql: &str) -> Lsn {
        writeln!(self.input, "{sql};").unwrap();
        let mut line = String::new();
        let n = self.output.read_line(&mut line).unwrap();
        assert!(n > 0, "psql ended at: {sql}");
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: {line:?}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes WAL records that end exactly where asked, on a primary with little background WAL
/// (autovacuum off, no checkpoint due). A shape is retried when another record got in between
/// reading the insert position and writing.
struct WalCrafter {
    session: Session,
    geo: WalGeometry,
    /// MAXALIGNed bytes a message record takes beyond its payload.
    overhead: u64,
}

impl WalCrafter {
    fn new(bins: &PgBinaries, conninfo: &str, size: WalSegmentSize) -> WalCrafter {
        let mut crafter = WalCrafter {
            session: Session::open(bins, conninfo),
            geo: WalGeometry::new(size),
            overhead: 0,
        };
        crafter.overhead = crafter.measure_overhead();
        println!("message record overhead: {} bytes", crafter.overhead);
        crafter
    }

    /// `pg_current_wal_insert_lsn()`: where the next record starts.
    fn insert_lsn(&mut self) -> Lsn {
        self.session.lsn("SELECT pg_current_wal_insert_lsn()")
    }

    /// One non-transactional message record with `payload` bytes; returns the record's end.
    fn emit(&mut self, payload: u64) -> Lsn {
        self.session.lsn(&format!(
            "SELECT pg_logical_emit_message(false, 'x', repeat('x', {payload}))"
        ))
    }

    /// The overhead of a message record: two probes in a row must agree.
    fn measure_overhead(&mut self) -> u64 {
        let mut probe = || {
            let start = self.insert_lsn();
            let end = self.emit(PROBE_PAYLOAD);
            self.geo.usable(start, end) - PROBE_PAYLOAD
        };
        for _ in 0..ATTEMPTS {
            let (a, b) = (probe(), probe());
            if a == b {
                assert!(a % 8 == 0 && (24..128).contains(&a), "overhead {a}");
                return a;
            }
        }
        panic!("background WAL kept changing the measured record overhead")
    }

    /// Writes one record at `start` (the insert position) sized to end exactly at `end`;
    /// false when another record got in first.
    fn record(&mut self, start: Lsn, end: Lsn) -> bool {
        let room = self.geo.usable(start, end);
        assert!(
            room >= self.overhead + MIN_PAYLOAD,
            "no room for a record from {start} to {end}"
        );
        self.emit(room - self.overhead) == end
    }

    /// Writes `shape` (which answers `None` when a background record got in) until it lands.
    fn attempt(
        &mut self,
        label: &'static str,
        mut shape: impl FnMut(&mut WalCrafter) -> Option<Crafted>,
    ) -> Crafted {
        for _ in 0..ATTEMPTS {
            if let Some(crafted) = shape(self) {
                println!("{label}: record {} ends at {}", crafted.start, crafted.end);
                return crafted;
            }
        }
        panic!("{label}: background WAL got in the way {ATTEMPTS} times")
    }

    /// One record with at least `payload` bytes ending exactly on the next `boundary`.
    fn large_record_at(&mut self, label: &'static str, at: Boundary, payload: u64) -> Crafted {
        self.attempt(label, |c| {
            let start = c.insert_lsn();
            let end = at.after(c.geo, start, c.overhead + payload);
            c.record(start, end).then_some(Crafted {
                label,
                start,
                end,
                next: None,
            })
        })
    }

    /// A filler record up to [`SMALL_RECORD`] bytes before the next `boundary`, then a record
    /// of those bytes that ends exactly on it.
    fn small_record_at(&mut self, label: &'static str, at: Boundary) -> Crafted {
        self.attempt(label, |c| {
            let from = c.insert_lsn();
            let end = at.after(c.geo, from, c.overhead + MIN_PAYLOAD + SMALL_RECORD);
            let start = Lsn(end.0 - SMALL_RECORD);
            (c.record(from, start) && c.record(start, end)).then_some(Crafted {
                label,
                start,
                end,
                next: None,
            })
        })
    }

    /// A filler record that ends [`SPLIT_AT`] bytes before the next `boundary`, then a record
    /// whose header straddles the boundary (the crafted end is the filler's).
    fn split_header_at(&mut self, label: &'static str, at: Boundary) -> Crafted {
        self.attempt(label, |c| {
            let start = c.insert_lsn();
            let boundary = at.after(c.geo, start, c.overhead + MIN_PAYLOAD + SPLIT_AT);
            let end = Lsn(boundary.0 - SPLIT_AT);
            let crafted = c.record(start, end).then_some(Crafted {
                label,
                start,
                end,
                next: Some("MESSAGE"),
            })?;
            let split_end = c.emit(MIN_PAYLOAD);
            (c.geo.usable(end, split_end) == c.overhead + MIN_PAYLOAD).then_some(crafted)
        })
    }

    /// A record ending exactly at a page end inside a segment, then `pg_switch_wal()`, whose
    /// XLOG_SWITCH record starts right after that page's header.
    fn switch_at_page_start(&mut self, label: &'static str) -> Crafted {
        self.attempt(label, |c| {
            let before = c.small_record_at("record before the switch", Boundary::Page);
            let switch_end = c.session.lsn("SELECT pg_switch_wal()");
            let switch = c.geo.next_start(before.end);
            (switch_end.0 == switch.0 + SWITCH_RECORD).then_some(Crafted {
                label,
                next: Some("SWITCH"),
                ..before
            })
        })
    }

    /// A one-byte message right after a crafted boundary, so the record pg_waldump shows
    /// there is small.
    fn marker(&mut self) {
        self.emit(1);
    }
}

/// Waits until the standby has replayed up to `lsn`.
fn wait_replayed(standby: &Cluster, lsn: Lsn, timeout: Duration) {
    wait_until(timeout, &format!("standby replays to {lsn}"), || {
        Ok(standby.replay_lsn()? >= lsn)
    })
    .unwrap();
}

/// The Wcraft shapes, as [`WalCrafter`] writes them.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// [`WalCrafter::small_record_at`].
    Small(Boundary),
    /// [`WalCrafter::large_record_at`] with at least this payload.
    Large(Boundary, u64),
    /// [`WalCrafter::split_header_at`].
    SplitHeader(Boundary),
    /// [`WalCrafter::switch_at_page_start`].
    Switch,
}

impl WalCrafter {
    fn craft(&mut self, label: &'static str, shape: Shape) -> Crafted {
        match shape {
            Shape::Small(at) => self.small_record_at(label, at),
            Shape::Large(at, payload) => self.large_record_at(label, at, payload),
            Shape::SplitHeader(at) => self.split_header_at(label, at),
            Shape::Switch => self.switch_at_page_start(label),
        }
    }
}

/// Writes every Wcraft shape, and a Wbig record that ends on a segment boundary. After a shape
/// that ends on a page or segment boundary, the primary's flush (and so the WAL the relay and
/// the standby hold) ends exactly there until the standby has replayed the crafted record;
/// then a marker follows it.
fn craft_all(crafter: &mut WalCrafter, standby: &Cluster) -> Vec<Crafted> {
    let seg = crafter.geo.seg;
    let shapes = [
        (
            "small record ending at a page end",
            Shape::Small(Boundary::Page),
        ),
        (
            "record over three pages ending at a page end",
            Shape::Large(Boundary::Page, 2 * PAGE),
        ),
        (
            "small record ending at a segment end",
            Shape::Small(Boundary::Segment),
        ),
        (
            "record header across a page end",
            Shape::SplitHeader(Boundary::Page),
        ),
        ("XLOG_SWITCH at a page start", Shape::Switch),
        (
            "record over three segments ending at a segment end",
            Shape::Large(Boundary::Segment, 3 * seg),
        ),
        (
            "record header across a segment end",
            Shape::SplitHeader(Boundary::Segment),
        ),
    ];
    let mut crafted = Vec::new();
    for (label, shape) in shapes {
        let c = crafter.craft(label, shape);
        let replayed = match shape {
            Shape::SplitHeader(_) => None,
            Shape::Switch => Some(crafter.geo.segment_end(c.end)),
            Shape::Small(_) | Shape::Large(..) => Some(c.end),
        };
        if let Some(lsn) = replayed {
            wait_replayed(standby, lsn, Duration::from_secs(30));
        }
        if c.next.is_none() {
            crafter.marker();
        }
        crafted.push(c);
    }
    crafted
}

/// The first record pg_waldump finds at or after `from` in `dir`: its LSN, its `prev` and its
/// description.
fn first_record_from(bins: &PgBinaries, dir: &Path, from: Lsn) -> (Lsn, Lsn, String) {
    let mut cmd = bins.command("pg_waldump");
    cmd.arg(format!("--path={}", dir.display()))
        .arg(format!("--start={from}"))
        .arg("--limit=1");
    let out = run(&mut cmd).unwrap();
    let field = |key: &str| -> &str {
        let rest = &out[out.find(key).unwrap_or_else(|| panic!("{key} in {out}")) + key.len()..];
        rest.split(',').next().unwrap().trim()
    };
    let desc = out.split("desc: ").nth(1).unwrap_or_default().to_string();
    (
        field("lsn: ").parse().unwrap(),
        field("prev ").parse().unwrap(),
        desc,
    )
}

/// pg_waldump over the archive confirms a crafted shape: the record right after the boundary
/// starts where [`WalGeometry::next_start`] says and points back at the crafted record.
fn assert_crafted(bins: &PgBinaries, archive: &Path, geo: WalGeometry, c: &Crafted) {
    let (lsn, prev, desc) = first_record_from(bins, archive, c.end);
    let short: String = desc.chars().take(40).collect();
    println!(
        "{}: after {} comes {lsn} (prev {prev}): {short}",
        c.label, c.end
    );
    assert_eq!(lsn, geo.next_start(c.end), "{}: next record", c.label);
    assert_eq!(prev, c.start, "{}: the record before the boundary", c.label);
    if let Some(next) = c.next {
        assert!(desc.starts_with(next), "{}: next record is {desc}", c.label);
    }
}

/// No line of `log` says that the standby read broken WAL.
fn assert_clean_standby_log(log: &str) {
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| BAD_WAL_LINES.iter().any(|b| l.contains(b)))
        .collect();
    assert!(bad.is_empty(), "the standby complained: {bad:#?}");
}

/// A primary with little background WAL, the relay streaming from it and serving on a port,
/// and a hot standby streaming from the relay on the relay slot `d1`. Fields drop in order:
/// the standby, the relay, the primary, then the directory.
struct Rig {
    standby: Cluster,
    relay: RelayProcess,
    primary: Cluster,
    bins: PgBinaries,
    /// The standby log's length once it streams: what it logged before is startup.
    steady: usize,
    _dir: ScratchDir,
}

impl Rig {
    fn start(segment_mb: u32) -> Option<Rig> {
        let bins = require_postgres()?;
        let dir = scratch(&bins, "walcraft");
        let mut primary = ClusterBuilder::new(bins.clone(), dir.path())
            .segment_size_mb(segment_mb)
            .archive(true)
            .config("autovacuum", "off")
            .config("checkpoint_timeout", "30min")
            .config("wal_writer_delay", "10ms")
            .init()
            .unwrap();
        primary.start().unwrap();
        let port = free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let relay_dir = dir.path().join("relay");
        let relay = RelayProcess::start(&primary.conninfo(), &relay_dir, &["--listen", &listen]);
        let now = primary.current_wal_flush_lsn().unwrap();
        wait_acked(&primary, now, Duration::from_secs(30));
        let conninfo = format!("host=127.0.0.1 port={port} user=postgres");
        let create = "CREATE_REPLICATION_SLOT \"d1\" PHYSICAL";
        bins.psql(&format!("{conninfo} replication=1"), create)
            .unwrap();
        let mut standby = primary
            .basebackup_standby(&format!("{conninfo} application_name=d1"), Some("d1"))
            .unwrap();
        standby.start().unwrap();
        wait_until(Duration::from_secs(30), "standby streaming", || {
            Ok(standby.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
        })
        .unwrap();
        let steady = standby.log_contents().len();
        Some(Rig {
            standby,
            relay,
            primary,
            bins,
            steady,
            _dir: dir,
        })
    }
}

fn wal_boundaries_through_relay(segment_mb: u32) {
    let Some(rig) = Rig::start(segment_mb) else {
        return;
    };
    let Rig {
        standby,
        relay,
        primary,
        bins,
        steady,
        ..
    } = &rig;
    let size = primary.wal_segment_size().unwrap();
    let mut crafter = WalCrafter::new(bins, &primary.conninfo(), size);
    let crafted = craft_all(&mut crafter, standby);
    // Wbig as ACCEPTANCE words it: one transactional message of three segments.
    primary.emit_message(3 * size.bytes() as usize).unwrap();

    // O1.
    primary.psql("CHECKPOINT").unwrap();
    let last = primary.switch_wal().unwrap();
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_replayed(standby, target, Duration::from_secs(60));
    primary
        .wait_archived(last, Duration::from_secs(60))
        .unwrap();
    wait_acked(primary, target, Duration::from_secs(60));

    // O3, O4, and the shapes really are where they were meant to be.
    let compared = assert_same_segments(&relay.wal_dir(), &primary.archive_dir(), size);
    assert!(compared >= 8, "only {compared} segments compared");
    assert_waldump(bins, &relay.wal_dir(), size);
    for c in &crafted {
        assert_crafted(bins, &primary.archive_dir(), crafter.geo, c);
    }
    let log = standby.log_contents();
    let (startup, after) = log.split_at(*steady);
    for line in startup
        .lines()
        .filter(|l| BAD_WAL_LINES.iter().any(|b| l.contains(b)))
    {
        println!("allowed before streaming: {line}");
    }
    assert_clean_standby_log(after);
}

at_1mb_and_16mb_segments!(
    wal_boundaries_1mb_segments,
    wal_boundaries_16mb_segments,
    wal_boundaries_through_relay
);

#[test]
fn usable_byte_positions_skip_page_headers() {
    let geo = WalGeometry::new(WalSegmentSize::new(1024 * 1024).unwrap());
    let seg = geo.seg;
    let at = |n: u64| Lsn(n);
    assert_eq!(geo.byte_pos(at(seg)), geo.byte_pos(at(seg + LONG_HEADER)));
    assert_eq!(
        geo.byte_pos(at(seg + PAGE)),
        geo.byte_pos(at(seg + PAGE + 24))
    );
    assert_eq!(geo.usable(at(seg + 40), at(seg + PAGE)), PAGE - 40);
    assert_eq!(geo.usable(at(seg - 16), at(seg + 48)), 16 + 8);
    assert_eq!(geo.usable(at(0), at(seg)), 128 * (PAGE - 24) - 16);
    assert_eq!(geo.next_start(at(seg)), at(seg + 40));
    assert_eq!(geo.next_start(at(PAGE)), at(PAGE + 24));
    assert_eq!(geo.next_start(at(PAGE - 8)), at(PAGE - 8));
    assert_eq!(Boundary::Page.after(geo, at(seg - 100), 0), at(seg + PAGE));
    assert_eq!(
        Boundary::Segment.after(geo, at(seg - 100), 200),
        at(2 * seg)
    );
    assert_eq!(Boundary::Page.after(geo, at(40), PAGE), at(2 * PAGE));
}
