//! The HTTP endpoint against real servers: a real Prometheus (Debian's `prometheus`, started
//! on a loopback port) scrapes the relay while three standbys stream from it under load, and
//! `promtool check metrics` reads what it serves; `/status`, `/healthz`, `/readyz` and the
//! bearer token behave as documented; without a token only loopback clients read the state,
//! and no password or secret shows anywhere (H12, O11).
//!
//! Under `CI=true` a missing `prometheus` or `promtool` fails the test; elsewhere it is
//! skipped with a message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use walrelay::testkit::localpg::{Cluster, free_port, require_postgres, wait_until};
use walrelay::types::Lsn;

const TIMEOUT: Duration = Duration::from_secs(60);

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `prometheus` and `promtool`, or `None` (skip) outside CI.
fn prometheus_tools() -> Option<()> {
    let found = ["prometheus", "promtool"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs prometheus and promtool (Debian's prometheus package; .ci/run installs it)"
    );
    eprintln!("skipped: prometheus or promtool not installed");
    None
}

/// `promtool check metrics` on `text`: its complaints, empty when there are none.
fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("exit {}: {said}", out.status)
    }
}

/// A Prometheus server scraping `target` every second, with its data under `dir`.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = free_port().unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: walrelay\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until(TIMEOUT, "Prometheus to be ready", || {
            Ok(TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready", &[]).0 == 200)
        })
        .unwrap();
        Prometheus { child, port }
    }

    /// The result vector of an instant PromQL query.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (code, _, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"), &[]);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn series_by_app(result: &[serde_json::Value]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = result
        .iter()
        .map(|s| {
            let app = s["metric"]["application_name"].as_str().unwrap().to_owned();
            let value = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
            (app, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Three standbys behind the relay under load: Prometheus scrapes the relay and sees one
/// flush-lag series per standby; at rest, its flush LSNs equal the standbys' own
/// `pg_last_wal_receive_lsn()`; promtool finds nothing wrong; `/status` agrees.
#[test]
fn prometheus_scrapes_three_standbys_under_load() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let Some(()) = prometheus_tools() else {
        return;
    };
    let dir = scratch(&bins, "http");
    let primary = archiving_primary(&bins, &dir.path().join("primary"), 16);
    let (relay_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[
            "--listen",
            &format!("127.0.0.1:{relay_port}"),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--ready-upstream-window",
            "3s",
        ],
    );
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    wait_until(TIMEOUT, "the relay to be ready", || {
        Ok(TcpStream::connect(("127.0.0.1", http_port)).is_ok()
            && http_get(http_port, "/readyz", &[]).0 == 200)
    })
    .unwrap();
    let mut standbys: Vec<Cluster> = Vec::new();
    for name in ["s1", "s2", "s3"] {
        bins.psql(
            &format!("{relay_conninfo} replication=1"),
            &format!("CREATE_REPLICATION_SLOT {name} PHYSICAL"),
        )
        .unwrap();
        let conninfo = format!("{relay_conninfo} application_name={name}");
        let mut standby = primary.basebackup_standby(&conninfo, Some(name)).unwrap();
        standby
            .set_config("wal_receiver_status_interval", "1s")
            .unwrap();
        standby.start().unwrap();
        standbys.push(standby);
    }
    let prom = Prometheus::start(dir.path(), &format!("127.0.0.1:{http_port}"));

    let load = WriteLoad::start(&bins, &primary.conninfo(), 200, 0);
    wait_until(TIMEOUT, "three flush-lag series in Prometheus", || {
        Ok(prom.query("walrelay_replication_flush_lag_seconds").len() == 3)
    })
    .unwrap();
    let lags = series_by_app(&prom.query("walrelay_replication_flush_lag_seconds"));
    let apps: Vec<&str> = lags.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(apps, ["s1", "s2", "s3"]);
    for (app, lag) in &lags {
        assert!((0.0..30.0).contains(lag), "{app}: flush lag {lag}");
    }
    let (code, headers, text) = http_get(http_port, "/metrics", &[]);
    assert_eq!(code, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(promtool_check(&text), "", "promtool on:\n{text}");
    let (_, headers, open) = http_get(
        http_port,
        "/metrics",
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
    );
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.ends_with("# EOF\n"));
    let (committed, _) = load.stop();
    assert!(committed > 0);

    // At rest, each standby's flush position as Prometheus last scraped it is the standby's
    // own receive position.
    let end = primary.current_wal_flush_lsn().unwrap();
    for s in &standbys {
        wait_until(TIMEOUT, "standby caught up", || {
            Ok(s.psql("SELECT pg_last_wal_receive_lsn()")?
                .parse::<Lsn>()
                .unwrap()
                >= end)
        })
        .unwrap();
    }
    // The primary may still write a record on its own (a running-transactions record), so
    // Prometheus's latest scrape and the standbys' positions are read again until they meet.
    let mut last = String::new();
    let met = wait_until(
        TIMEOUT,
        "scraped flush positions equal the standbys'",
        || {
            let flushes = series_by_app(&prom.query("walrelay_replication_flush_lsn"));
            assert_eq!(flushes.len(), 3, "{flushes:?}");
            let mut equal = true;
            last.clear();
            for ((app, flush), s) in flushes.iter().zip(&standbys) {
                let received: Lsn = s.psql("SELECT pg_last_wal_receive_lsn()")?.parse().unwrap();
                equal &= *flush as u64 == received.0;
                last.push_str(&format!(
                    "{app}: scraped {flush}, received {}; ",
                    received.0
                ));
            }
            Ok(equal)
        },
    );
    assert!(met.is_ok(), "{last}");

    let (code, _, status) = http_get(http_port, "/status", &[]);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["upstream"]["connected"], true);
    assert_eq!(status["replication"].as_array().unwrap().len(), 3);
    assert_eq!(status["slots"].as_array().unwrap().len(), 3);
    assert!(
        status["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["active"] == true)
    );
    // `walrelay status` prints the same, a row per standby.
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["status", "--http", &format!("http://127.0.0.1:{http_port}")])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.starts_with("upstream connected"), "{printed}");
    for name in ["s1", "s2", "s3"] {
        assert!(printed.contains(&format!("  {name} ")), "{printed}");
    }

    // The upstream goes away: with a 3 s window, /readyz turns false; /healthz stays true.
    let mut primary = primary;
    primary
        .stop(walrelay::testkit::localpg::StopMode::Fast)
        .unwrap();
    wait_until(TIMEOUT, "/readyz to turn false", || {
        Ok(http_get(http_port, "/readyz", &[]).0 == 503)
    })
    .unwrap();
    assert_eq!(http_get(http_port, "/healthz", &[]).0, 200);
    drop(relay);
}

/// On a new data directory whose upstream cannot be reached, `/readyz` says why it is not
/// ready and `/healthz` is fine; `/metrics` and `/status` want the token, the probes do
/// not; anything else is 404 or 405.
#[test]
fn probes_and_token_before_the_upstream_is_reached() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "http-probes");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let http_port = free_port().unwrap();
    // Nothing listens on port 1, and no test's server can get it (free ports are above
    // 1023): a freed port could go to another test's PostgreSQL, which this relay, with a new
    // data directory, would then stream from.
    let nowhere = 1;
    let relay = RelayProcess::start(
        &format!("host=127.0.0.1 port={nowhere} user=postgres connect_timeout=1"),
        &dir.path().join("relay"),
        &[
            "--listen",
            &format!("127.0.0.1:{}", free_port().unwrap()),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
            "--http-token-file",
            token.to_str().unwrap(),
        ],
    );
    let t0 = Instant::now();
    wait_until(TIMEOUT, "the HTTP endpoint", || {
        Ok(TcpStream::connect(("127.0.0.1", http_port)).is_ok())
    })
    .unwrap();
    let (code, _, body) = http_get(http_port, "/readyz", &[]);
    assert_eq!(code, 503);
    assert!(
        body.starts_with("not ready: the upstream has not been reached since the relay started"),
        "{body}"
    );
    assert_eq!(http_get(http_port, "/healthz", &[]).0, 200);
    let (code, headers, _) = http_get(http_port, "/metrics", &[]);
    assert_eq!(
        (code, header(&headers, "www-authenticate")),
        (401, Some("Bearer"))
    );
    assert_eq!(
        http_get(http_port, "/status", &[("Authorization", "Bearer wrong")]).0,
        401
    );
    let (code, _, text) = http_get(http_port, "/metrics", &[("Authorization", "Bearer t0ken")]);
    assert_eq!(code, 200);
    assert!(text.contains("walrelay_upstream_connected 0\n"), "{text}");
    assert!(
        text.contains("walrelay_upstream_disconnects_total{reason=\"connect\"} "),
        "{text}"
    );
    assert_eq!(http_get(http_port, "/nothing", &[]).0, 404);
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(t0.elapsed() < TIMEOUT);
    // `walrelay status` needs the token too, and says what the relay answered.
    let status = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["status", "--http", &format!("127.0.0.1:{http_port}")])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = status(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    let shown = status(&["--token-file", token.to_str().unwrap()]);
    assert!(shown.status.success(), "{shown:?}");
    assert!(String::from_utf8_lossy(&shown.stdout).starts_with("upstream not connected"));
    // A reload reads the token file again.
    std::fs::write(&token, "n3w\n").unwrap();
    let at = relay.log_len();
    relay.signal("HUP");
    relay.wait_log(at, "reload", TIMEOUT);
    wait_until(TIMEOUT, "the new token", || {
        Ok(http_get(http_port, "/metrics", &[("Authorization", "Bearer n3w")]).0 == 200)
    })
    .unwrap();
    assert_eq!(
        http_get(http_port, "/metrics", &[("Authorization", "Bearer t0ken")]).0,
        401
    );
    drop(relay);
}

/// H12 and O11: no password or secret reaches the relay's log (at debug level), its command
/// line, `/status`, `/metrics` or `walrelay status`, with the upstream password in the config
/// file, a downstream SCRAM login and a failed one; the data directory is 0700 and its files
/// 0600; and without a token, `/metrics` and `/status` answer a client inside a network
/// namespace of the test's own with 403 while loopback clients and the probes are served.
///
/// Needs root (`ip netns`); under `CI=true` it must be there.
#[test]
fn h12_no_secrets_and_a_loopback_only_state_without_a_token() {
    use std::os::unix::fs::PermissionsExt;
    use walrelay::testkit::localpg::ClusterBuilder;

    const UPSTREAM_PW: &str = "upstream-Pw-7c1";
    const ALICE_PW: &str = "alice-Pw-3d9";
    const WRONG_PW: &str = "wrong-Pw-5e2";
    let Some(bins) = require_postgres() else {
        return;
    };
    let Some(ns) = netns_or_skip() else {
        return;
    };
    let dir = scratch(&bins, "h12");
    let mut primary = ClusterBuilder::new(bins.clone(), dir.path())
        .segment_size_mb(1)
        .hba_line("host replication repl 127.0.0.1/32 scram-sha-256")
        .init()
        .unwrap();
    primary.start().unwrap();
    let role = format!("CREATE ROLE repl LOGIN REPLICATION PASSWORD '{UPSTREAM_PW}'");
    primary.psql(&role).unwrap();

    let passwd = passwd_line("alice", ALICE_PW);
    let users = dir.path().join("users");
    std::fs::write(&users, &passwd).unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hba = dir.path().join("relay_hba.conf");
    std::fs::write(&hba, "host replication alice 127.0.0.1/32 scram-sha-256\n").unwrap();
    let (port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let data = dir.path().join("relay");
    let config = dir.path().join("walrelay.toml");
    std::fs::write(
        &config,
        format!(
            "upstream = \"host=127.0.0.1 port={} user=repl password={UPSTREAM_PW}\"\n\
             data_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\
             http_listen = \"0.0.0.0:{http_port}\"\nhba_file = \"{}\"\nauth_file = \"{}\"\n",
            primary.port(),
            data.display(),
            hba.display(),
            users.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_walrelay"));
    let relay = RelayProcess::start_run(binary, &data, &["--config", config.to_str().unwrap()]);
    let flushed = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, flushed, TIMEOUT);

    // A SCRAM login, and one with a wrong password.
    let login = |password: &str| {
        let mut psql = bins.command("psql");
        psql.env("PGPASSWORD", password).args([
            "-X",
            "-At",
            "-d",
            &format!("host=127.0.0.1 port={port} user=alice replication=1"),
            "-c",
            "IDENTIFY_SYSTEM",
        ]);
        psql.output().unwrap()
    };
    assert!(login(ALICE_PW).status.success());
    let refused = login(WRONG_PW);
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        why.contains("password authentication failed for user \"alice\""),
        "{why}"
    );

    // Loopback clients read the state without a token; others are refused, the probes not.
    let (code, _, status) = http_get(http_port, "/status", &[]);
    assert_eq!(code, 200, "{status}");
    let (code, _, metrics) = http_get(http_port, "/metrics", &[]);
    assert_eq!(code, 200);
    let from_inside = |path: &str| {
        let url = format!("http://{}:{http_port}{path}", ns.host_addr());
        let script = "import sys, urllib.request, urllib.error\n\
                      try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n\
                      except urllib.error.HTTPError as e:\n    print(e.code)\n";
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["python3", "-c", script, &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(from_inside("/metrics"), "403");
    assert_eq!(from_inside("/status"), "403");
    assert_eq!(from_inside("/healthz"), "200");
    let shown = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["status", "--http", &format!("127.0.0.1:{http_port}")])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");

    // O11: nowhere a password or a secret.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", relay.pid())).unwrap();
    let surfaces = [
        ("the log", relay.log_contents()),
        (
            "/proc/PID/cmdline",
            String::from_utf8_lossy(&cmdline).into_owned(),
        ),
        ("/status", status),
        ("/metrics", metrics),
        (
            "walrelay status",
            String::from_utf8_lossy(&shown.stdout).into_owned(),
        ),
    ];
    assert!(
        surfaces[0].1.contains("alice") && surfaces[0].1.contains("password authentication failed"),
        "the log shows neither login: {}",
        surfaces[0].1
    );
    for (surface, text) in &surfaces {
        for secret in [UPSTREAM_PW, ALICE_PW, WRONG_PW, "SCRAM-SHA-256$"] {
            assert!(!text.contains(secret), "{secret} in {surface}");
        }
    }

    // The storage: directories 0700, files 0600.
    let mut dirs = vec![data.clone()];
    let mut files = 0;
    while let Some(d) = dirs.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 4, "{files} files in the data directory");
    drop(relay);
}
