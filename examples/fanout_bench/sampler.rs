//! Polls LSNs over persistent connections while a load runs, to find when each server first
//! held the WAL the load wrote.
//!
//! While the load runs the target is not known yet (it is the primary's flush LSN at the end
//! of the load), and no server can have reached it, so probes are polled slowly
//! ([`SLOW_POLL`]) to disturb little. As soon as the load's query returns the sampler is told
//! to go fast, and once the target is known it polls the probes that have not reached it in
//! rounds [`FAST_POLL`] apart, each probe a query round trip. A probe's time is when the answer
//! that first showed the target arrived, so it is late by at most one round (its length is
//! reported) and never early.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use walrelay::types::Lsn;

use crate::sqlconn::SqlConn;
use crate::{RUN_TIMEOUT, check_interrupt};

/// Poll interval before the load has ended.
pub const SLOW_POLL: Duration = Duration::from_millis(50);
/// Pause between two rounds once the load has ended.
pub const FAST_POLL: Duration = Duration::from_millis(1);

/// One server to poll: a connection, a query and the column holding the LSN.
pub struct Probe {
    /// A name for errors.
    pub name: String,
    /// The connection.
    pub conn: SqlConn,
    /// The query.
    pub sql: &'static str,
    /// The column of its first row holding the LSN.
    pub column: usize,
}

impl Probe {
    fn lsn(&mut self) -> Result<Lsn> {
        let text = self.conn.query_column(self.sql, self.column)?;
        text.parse()
            .map_err(|_| anyhow!("{}: {text:?} is no LSN", self.name))
    }
}

/// What the sampler saw.
#[derive(Debug, Default)]
pub struct Sampled {
    /// Per probe, when it first showed the target (`None` if it never did).
    pub reached: Vec<Option<Instant>>,
    /// Median time a round of queries took once the target was known (the probes not yet
    /// done, one query each), in ms; rounds are [`FAST_POLL`] apart.
    pub round_ms: f64,
}

/// A running sampler.
pub struct Sampler {
    fast: Arc<AtomicBool>,
    target: Arc<AtomicU64>,
    handle: JoinHandle<Result<Sampled>>,
}

impl Sampler {
    /// Starts polling `probes`.
    pub fn start(probes: Vec<Probe>) -> Sampler {
        let fast = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicU64::new(0));
        let (f, t) = (Arc::clone(&fast), Arc::clone(&target));
        let handle = thread::spawn(move || poll(probes, &f, &t));
        Sampler {
            fast,
            target,
            handle,
        }
    }

    /// The load has ended: poll fast.
    pub fn go_fast(&self) {
        self.fast.store(true, Ordering::Relaxed);
    }

    /// Sets the target and waits until every probe has reached it.
    pub fn finish(self, target: Lsn) -> Result<Sampled> {
        self.go_fast();
        self.target.store(target.0.max(1), Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("the sampler panicked"))?
    }
}

fn poll(mut probes: Vec<Probe>, fast: &AtomicBool, target: &AtomicU64) -> Result<Sampled> {
    let mut reached: Vec<Option<Instant>> = vec![None; probes.len()];
    let mut rounds = Vec::new();
    let began = Instant::now();
    loop {
        check_interrupt()?;
        let round = Instant::now();
        let goal = Lsn(target.load(Ordering::Relaxed));
        for (probe, seen) in probes.iter_mut().zip(reached.iter_mut()) {
            if seen.is_some() {
                continue;
            }
            let lsn = probe.lsn()?;
            if goal.0 > 0 && lsn >= goal {
                *seen = Some(Instant::now());
            }
        }
        if goal.0 > 0 {
            rounds.push(round.elapsed());
            if reached.iter().all(Option::is_some) {
                break;
            }
        }
        if began.elapsed() > RUN_TIMEOUT {
            bail!("not every server reached {goal} within {RUN_TIMEOUT:?}");
        }
        if fast.load(Ordering::Relaxed) {
            thread::sleep(FAST_POLL);
        } else {
            thread::sleep(SLOW_POLL);
        }
    }
    rounds.sort();
    let round_ms = rounds
        .get(rounds.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok(Sampled { reached, round_ms })
}
