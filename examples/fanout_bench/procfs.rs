//! What a server spends, read from `/proc`: CPU time per process (grouped by what the process
//! is, from its title) or per thread (grouped by thread name), peak RSS and sampled PSS.
//!
//! CPU time is utime + stime of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`), in
//! `CLK_TCK` ticks (10 ms), read at the start and the end of a window. A process that exits
//! inside the window is counted through its parent's cutime + cstime (the time of reaped
//! children); a thread that exits is counted through its process's total, which keeps the time
//! of its dead threads.
//!
//! Peak RSS is `VmHWM` of `/proc/PID/status`, reset at the start of the window by writing `5`
//! to `/proc/PID/clear_refs`, so it is the peak within the window. PSS is `Pss` of
//! `/proc/PID/smaps_rollup`, summed over the processes and sampled every
//! [`PSS_SAMPLE_EVERY`]; PSS divides each shared page among the processes that map it, so
//! PostgreSQL's shared memory counts once in the sum, where RSS counts it in every process.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

/// How often PSS is sampled inside a window.
pub const PSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// `getconf CLK_TCK`: the ticks a second of the times in `/proc/PID/stat`.
pub fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

/// The fields of one `/proc/.../stat` line that matter here.
#[derive(Clone, Copy, Debug)]
struct Stat {
    ppid: u32,
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: the time of the children it has reaped.
    child_ticks: u64,
}

/// Parses a `stat` file; `None` when it is gone or malformed.
fn read_stat(path: &str) -> Option<Stat> {
    let text = fs::read_to_string(path).ok()?;
    // After the command name (which may hold spaces and parentheses), field 3 comes first.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(num(4)?).ok()?,
        ticks: num(14)? + num(15)?,
        child_ticks: num(16)? + num(17)?,
    })
}

/// Every live process: pid and stat.
fn all_processes() -> Vec<(u32, Stat)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(&format!("/proc/{pid}/stat"))?)))
        .collect()
}

/// `root` and all its live descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let all = all_processes();
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(
            all.iter()
                .filter(|(_, s)| s.ppid == parent)
                .map(|(p, _)| *p),
        );
        next += 1;
    }
    tree.retain(|pid| all.iter().any(|(p, _)| p == pid));
    tree
}

/// What a PostgreSQL process is, from its title (`postgres: walsender postgres 127.0.0.1(…)
/// streaming 0/…`): `walsender`, `walreceiver`, `startup`, or `other` (the postmaster,
/// checkpointer, backends…). A process that is not PostgreSQL's is `other` too.
pub fn role(pid: u32) -> &'static str {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let title = String::from_utf8_lossy(&cmdline);
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return "other";
    };
    ["walsender", "walreceiver", "startup"]
        .into_iter()
        .find(|role| rest.starts_with(role) || rest.contains(&format!(" {role} ")))
        .unwrap_or("other")
}

/// A thread's name (`comm`), as the program set it (15 bytes at most).
fn thread_name(pid: u32, tid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How a meter splits the CPU time it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// A process tree, split by [`role`].
    Roles,
    /// One process, split by thread name.
    Threads,
}

/// CPU ticks at one moment: per unit (process or thread id), with its group, plus the total
/// that covers exited units.
#[derive(Debug, Default)]
struct Snapshot {
    units: BTreeMap<u32, (String, u64)>,
    /// The ticks of units that already exited (reaped children, dead threads).
    exited: u64,
}

fn snapshot(root: u32, split: Split) -> Snapshot {
    let mut snap = Snapshot::default();
    match split {
        Split::Roles => {
            for pid in process_tree(root) {
                let Some(stat) = read_stat(&format!("/proc/{pid}/stat")) else {
                    continue;
                };
                if pid == root {
                    snap.exited = stat.child_ticks;
                }
                snap.units.insert(pid, (role(pid).to_string(), stat.ticks));
            }
        }
        Split::Threads => {
            let total = read_stat(&format!("/proc/{root}/stat")).map_or(0, |s| s.ticks);
            let tids = fs::read_dir(format!("/proc/{root}/task"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
            let mut live = 0;
            for tid in tids {
                let Some(stat) = read_stat(&format!("/proc/{root}/task/{tid}/stat")) else {
                    continue;
                };
                live += stat.ticks;
                snap.units.insert(tid, (thread_name(root, tid), stat.ticks));
            }
            snap.exited = total.saturating_sub(live);
        }
    }
    snap
}

/// What a meter measured over its window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    /// CPU seconds (user + system) of everything measured.
    pub cpu_s: f64,
    /// CPU seconds per group (role or thread name); `exited` holds processes or threads that
    /// ended before the window's end.
    pub cpu_by: BTreeMap<String, f64>,
    /// Processes (or threads) alive at the end.
    pub units: usize,
    /// Summed `VmHWM` over the window, in kB (RSS counts shared memory in every process).
    pub peak_rss_kib: Option<u64>,
    /// Largest summed PSS sampled during the window, in kB.
    pub peak_pss_kib: Option<u64>,
}

/// Measures one process tree or process from [`Meter::start`] to [`Meter::finish`].
pub struct Meter {
    root: u32,
    split: Split,
    clk_tck: f64,
    before: Snapshot,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<Option<u64>>>,
}

impl Meter {
    /// Starts measuring `root`; with `memory`, resets the peak RSS of every process and samples
    /// PSS until the end.
    pub fn start(root: u32, split: Split, clk_tck: f64, memory: bool) -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = memory.then(|| {
            for pid in process_tree(root) {
                // Resets VmHWM to the current RSS (Linux 4.0+); an error leaves the peak of the
                // process's whole life, which the report cannot tell apart.
                let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
            }
            let stop = Arc::clone(&stop);
            thread::spawn(move || sample_pss(root, &stop))
        });
        Meter {
            root,
            split,
            clk_tck,
            before: snapshot(root, split),
            stop,
            sampler,
        }
    }

    /// Ends the window and returns what was spent in it.
    pub fn finish(mut self) -> Usage {
        let after = snapshot(self.root, self.split);
        self.stop.store(true, Ordering::Relaxed);
        let peak_pss_kib = self.sampler.take().and_then(|s| s.join().ok()).flatten();
        let mut cpu_by: BTreeMap<String, f64> = BTreeMap::new();
        for (unit, (group, ticks)) in &after.units {
            let before = self.before.units.get(unit).map_or(0, |(_, t)| *t);
            *cpu_by.entry(group.clone()).or_default() +=
                ticks.saturating_sub(before) as f64 / self.clk_tck;
        }
        // A unit that ended moved its whole time, the part spent before the window too, into
        // `exited`; only the part since the window's start is the window's.
        let gone: u64 = self
            .before
            .units
            .iter()
            .filter(|(unit, _)| !after.units.contains_key(unit))
            .map(|(_, (_, ticks))| ticks)
            .sum();
        let exited = after
            .exited
            .saturating_sub(self.before.exited)
            .saturating_sub(gone) as f64
            / self.clk_tck;
        if exited > 0.0 {
            *cpu_by.entry("exited".into()).or_default() += exited;
        }
        let peak_rss_kib = peak_pss_kib.is_some().then(|| {
            process_tree(self.root)
                .into_iter()
                .filter_map(|p| status_kib(p, "VmHWM:"))
                .sum()
        });
        Usage {
            cpu_s: cpu_by.values().sum(),
            cpu_by,
            units: after.units.len(),
            peak_rss_kib,
            peak_pss_kib,
        }
    }
}

/// Samples the summed PSS of the tree rooted at `root` until `stop`, and returns the largest.
fn sample_pss(root: u32, stop: &AtomicBool) -> Option<u64> {
    let mut peak = None;
    loop {
        let sum = process_tree(root)
            .into_iter()
            .map(pss_kib)
            .sum::<Option<u64>>();
        peak = peak.max(sum);
        if stop.load(Ordering::Relaxed) {
            return peak;
        }
        thread::sleep(PSS_SAMPLE_EVERY);
    }
}

/// A `kB` line of `/proc/PID/status`, such as `VmHWM:`.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_line(&text, key)
}

/// `Pss:` of `/proc/PID/smaps_rollup`.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_line(&text, "Pss:")
}

/// The number on the line starting with `key` (`VmHWM:     1234 kB`).
fn kib_line(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().next()?.parse().ok()
}
