//! `walrelay demo`, as the README's quick start runs it: a throwaway primary, the relay and two
//! real standbys on relay slots, with a live table per downstream, stopped by `--duration`.
#![cfg(feature = "runtime")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use walrelay::testkit::localpg::require_postgres;
use walrelay::types::Lsn;

/// One refresh of the demo's table.
#[derive(Debug)]
struct Tick {
    primary_flushed: Lsn,
    relay_durable: Lsn,
    /// application, slot, sent, flushed, replayed
    rows: Vec<(String, String, Lsn, Lsn, Lsn)>,
}

fn lsn(text: &str) -> Lsn {
    text.parse().expect("an LSN")
}

/// A row's three positions, once the standby has reported them.
fn positions(words: &[&str]) -> Option<(Lsn, Lsn, Lsn)> {
    let p = |i: usize| words.get(i)?.parse::<Lsn>().ok();
    Some((p(2)?, p(3)?, p(4)?))
}

/// Splits the demo's output into its ticks.
fn ticks(out: &str) -> Vec<Tick> {
    let mut ticks: Vec<Tick> = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("primary flushed ") {
            ticks.push(Tick {
                primary_flushed: lsn(words[2]),
                relay_durable: lsn(words[8]),
                rows: Vec::new(),
            });
        } else if words.first().is_some_and(|w| w.starts_with("standby"))
            && let Some((sent, flushed, replayed)) = positions(&words)
            && let Some(tick) = ticks.last_mut()
        {
            let (app, slot) = (words[0].to_owned(), words[1].to_owned());
            tick.rows.push((app, slot, sent, flushed, replayed));
        }
    }
    ticks
}

#[test]
fn demo_streams_to_two_standbys_and_cleans_up() {
    if require_postgres().is_none() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["demo", "--segment-size-mb", "1", "--duration", "15"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "demo exited with {}", out.status);
    assert!(stdout.contains("demo cleaned up"), "{stdout}");
    let ticks = ticks(&stdout);
    let full: Vec<&Tick> = ticks.iter().filter(|t| t.rows.len() == 2).collect();
    assert!(
        full.len() >= 3,
        "fewer than 3 ticks with both standbys: {ticks:#?}"
    );
    for t in &full {
        assert!(t.relay_durable <= t.primary_flushed, "{t:#?}");
        for (app, slot, sent, flushed, replayed) in &t.rows {
            assert_eq!(slot, &format!("{app}_slot"), "{t:#?}");
            // Read in this order: standbys, relay, primary. A standby's first reply after
            // it connects may report more than was sent on that connection, never more
            // than the relay has.
            for reported in [sent, flushed, replayed] {
                assert!(*reported <= t.relay_durable, "past the durable end: {t:#?}");
            }
        }
    }
    // The write load goes on: the relay's durable end and what the standbys replay move.
    let (first, last) = (full[0], full[full.len() - 1]);
    assert!(last.relay_durable > first.relay_durable, "{ticks:#?}");
    for i in 0..2 {
        assert!(last.rows[i].4 > first.rows[i].4, "{ticks:#?}");
    }
}
