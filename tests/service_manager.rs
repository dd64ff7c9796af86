//! `walrelay run` as a service manager and a log collector see it.
//!
//! systemd's notification protocol, as a `Type=notify` unit with `WatchdogSec` runs it: a
//! datagram socket stands in for systemd's (`NOTIFY_SOCKET`), and the relay must say
//! `READY=1` once it has started, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `RELOADING=1` then
//! `READY=1` on SIGHUP, and `STOPPING=1` on SIGTERM. The upstream need not be reachable for
//! any of it: systemd waits for `READY=1` only until the relay has opened its store and bound
//! its ports. And `--log-format json` writes one JSON object per line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An upstream port nothing listens on and no test's server can get (free ports are above
/// 1023): a port freed by this test could go to another test's PostgreSQL, which a relay
/// with a new data directory would then stream from.
const NOWHERE: u16 = 1;

fn receive_until(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0_u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message == want;
            seen.push(message);
            if found {
                return;
            }
        }
    }
    panic!("no {want} within 20 s; received {seen:?}");
}

/// `READY=1`, `WATCHDOG=1`, `RELOADING=1` and `READY=1` on SIGHUP, `STOPPING=1` on SIGTERM,
/// in that order, and a clean exit.
#[test]
fn notifies_ready_watchdog_reload_and_stopping() {
    let dir = std::env::temp_dir().join(format!("walrelay-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = NOWHERE;
    let mut relay = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args([
            "run",
            "--upstream",
            &format!("host=127.0.0.1 port={port} user=postgres connect_timeout=1"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    receive_until(&socket, "READY=1", &mut seen);
    receive_until(&socket, "WATCHDOG=1", &mut seen);
    let t0 = Instant::now();
    receive_until(&socket, "WATCHDOG=1", &mut seen);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "WATCHDOG=1 at half of WATCHDOG_USEC (0.2 s), well within 1 s: {:?}",
        t0.elapsed()
    );
    let kill = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &relay.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    kill("-HUP");
    receive_until(&socket, "RELOADING=1", &mut seen);
    receive_until(&socket, "READY=1", &mut seen);
    kill("-TERM");
    receive_until(&socket, "STOPPING=1", &mut seen);
    let status = relay.wait().unwrap();
    assert!(status.success(), "{status}; notifications {seen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json`: every line standard error gets is one JSON object with a timestamp,
/// a level and the event's fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = std::env::temp_dir().join(format!("walrelay-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = NOWHERE;
    let relay = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args([
            "--log-format",
            "json",
            "run",
            "--upstream",
            &format!("host=127.0.0.1 port={port} user=postgres connect_timeout=1"),
            "--reconnect-max",
            "100ms",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status();
    let out = relay.wait_with_output().unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    let ended = lines
        .iter()
        .find(|l| l["fields"]["message"] == "upstream connection ended")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(ended["level"], "WARN");
    assert!(
        ended["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("could not connect")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `log_level` in the config file sets what is logged, and a reload changes it.
#[test]
fn log_level_follows_the_config_file() {
    let dir = std::env::temp_dir().join(format!("walrelay-loglevel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = NOWHERE;
    let config = dir.join("walrelay.toml");
    let write = |level: &str| {
        std::fs::write(
            &config,
            format!(
                "upstream = \"host=127.0.0.1 port={port} user=postgres connect_timeout=1\"\n\
                 data_dir = \"{}\"\nreconnect_max = \"200ms\"\nlog_level = \"{level}\"\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
    };
    write("error");
    let log = dir.join("relay.log");
    let relay = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("WALRELAY_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let quiet = std::fs::read_to_string(&log).unwrap();
    assert!(
        !quiet.contains(" WARN ") && !quiet.contains(" INFO "),
        "{quiet}"
    );
    write("info");
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &relay.id().to_string()])
            .status()
            .unwrap()
    };
    signal("-HUP");
    std::thread::sleep(Duration::from_millis(1000));
    let loud = std::fs::read_to_string(&log).unwrap();
    assert!(loud.contains("upstream connection ended"), "{loud}");
    signal("-TERM");
    let _ = relay.wait_with_output();
    let _ = std::fs::remove_dir_all(&dir);
}
