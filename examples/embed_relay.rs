//! A relay inside another program: built with [`Relay::builder`], run on the program's own
//! tokio runtime with [`Relay::spawn`], watched through [`RelayHandle::status`] and stopped
//! with [`RelayHandle::shutdown`].
//!
//! It streams from UPSTREAM into DATA_DIR (with its slot `embedded_relay` on the upstream),
//! serves standbys on LISTEN if given (`-` for none), prints the relay's status once a second,
//! and stops cleanly after SECONDS or on Ctrl-C, printing `stopped at durable X/Y`.
//!
//! ```text
//! cargo run --example embed_relay -- "host=db1 user=replicator" /tmp/relay [LISTEN|-] [SECONDS]
//! ```
//! The relay's logs go to stderr.

use std::io::stderr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use walrelay::{Relay, RelayHandle};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(upstream), Some(data_dir)) = (args.first(), args.get(1)) else {
        bail!("usage: embed_relay UPSTREAM DATA_DIR [LISTEN|-] [SECONDS]");
    };
    let listen = args.get(2).filter(|a| *a != "-");
    let seconds = args.get(3).map(|s| s.parse::<u64>()).transpose()?;

    let mut builder = Relay::builder(upstream, data_dir)
        .upstream_slot("embedded_relay")?
        .configure(|c| c.status_interval = Duration::from_secs(1));
    if let Some(address) = listen {
        builder = builder.listen(address);
    }
    let relay = builder.open().context("could not open the relay")?;
    if let Some(address) = relay.listen_addr() {
        println!("serving standbys on {address}");
    }
    let handle = relay.spawn();
    // The monitor outlives the handle, which `shutdown` consumes.
    let monitor = handle.monitor();

    let stop = tokio::time::sleep(seconds.map_or(Duration::MAX, Duration::from_secs));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(stop, ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => print_status(&handle),
            () = &mut stop => break,
            signalled = &mut ctrl_c => {
                signalled?;
                break;
            }
        }
    }
    handle.shutdown().await.context("the relay failed")?;
    println!("stopped at durable {}", monitor.status().durable);
    Ok(())
}

fn print_status(handle: &RelayHandle) {
    let s = handle.status();
    let upstream = s.upstream.map_or("-".into(), |u| u.system_id.to_string());
    let timeline = s.timeline.map_or("-".into(), |t| t.to_string());
    println!(
        "upstream system {upstream} timeline {timeline} written {} durable {} streams {}",
        s.written,
        s.durable,
        s.streams.len()
    );
    if let Some(failure) = s.store_failure {
        println!("store failed: {failure}");
    }
}
