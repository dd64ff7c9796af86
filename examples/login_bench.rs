//! End-to-end login benchmark: replication logins over TLS with SCRAM-SHA-256 (4096
//! iterations) per second, and the memory a TLS connection costs before and after its login,
//! for the relay and for a PostgreSQL 15 server on the same machine with the same certificate,
//! rule and verifier.
//!
//! Both servers get `hostssl replication bench 127.0.0.1/32 scram-sha-256` and the verifier
//! PostgreSQL made for `bench` (the relay's auth file holds the one copied from `pg_authid`).
//! The clients are the same for both: `--clients` tasks that each log in (SSLRequest, TLS 1.3
//! handshake, SCRAM with channel binding offered, `IDENTIFY_SYSTEM`) and close, again and
//! again, for `--seconds`. Clients and server share the machine's cores, so the figure is what
//! one machine does with both sides, the same for both servers.
//!
//! Memory: `--hold` connections are opened and kept after the TLS handshake, before the
//! StartupMessage, then, with those still open, `--hold` more after a full login and
//! `IDENTIFY_SYSTEM`; each figure is the growth of the server's summed PSS
//! (`/proc/PID/smaps_rollup`, over the process tree: a PostgreSQL backend per connection, one
//! relay process) its connections caused, divided by their number.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example login_bench -- [--clients 4] [--seconds 10] [--hold 200]
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walrelay::client::ReplicationClient;
use walrelay::client::tls::{client_config, server_name};
use walrelay::proto::conninfo::{ConnInfo, Env};
use walrelay::testkit::localpg::{Cluster, ClusterBuilder, PgBinaries, free_port, wait_until};

const PASSWORD: &str = "bench-password";
const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent login loops.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// How long each server is measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections held open for the memory figures.
    #[arg(long, default_value_t = 200)]
    hold: usize,
}

/// One server's figures.
#[derive(Debug)]
struct Figures {
    logins: u64,
    secs: f64,
    server_cpu_secs: f64,
    before_login_kib: f64,
    after_login_kib: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bins = PgBinaries::find()?;
    let base = std::env::temp_dir().join(format!("walrelay-login-bench-{}", std::process::id()));
    fs::create_dir_all(&base)?;
    let result = run(&args, &bins, &base);
    let _ = fs::remove_dir_all(&base);
    let (pg, relay) = result?;
    println!(
        "{:<12} {:>10} {:>16} {:>22} {:>21}",
        "server", "logins/s", "server CPU/login", "per conn before login", "per conn after login"
    );
    for (name, f) in [("PostgreSQL", &pg), ("walrelay", &relay)] {
        println!(
            "{:<12} {:>10.0} {:>13.2} ms {:>19.0} kB {:>18.0} kB",
            name,
            f.logins as f64 / f.secs,
            f.server_cpu_secs * 1000.0 / f.logins.max(1) as f64,
            f.before_login_kib,
            f.after_login_kib
        );
    }
    Ok(())
}

fn run(args: &Args, bins: &PgBinaries, base: &Path) -> Result<(Figures, Figures)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let max = (2 * args.hold + args.clients + 10).to_string();
    let mut primary = ClusterBuilder::new(bins.clone(), base)
        .config("ssl", "on")
        .config("ssl_cert_file", "server.crt")
        .config("ssl_key_file", "server.key")
        .config("max_connections", &max)
        .config("max_wal_senders", &max)
        .hba_line("hostssl replication bench 127.0.0.1/32 scram-sha-256")
        .init()?;
    install_server_files(&primary.data_dir())?;
    primary.start()?;
    primary.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE bench LOGIN REPLICATION PASSWORD '{PASSWORD}'"
    ))?;
    let verifier = primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")?;

    let pg_pid = primary
        .pid()
        .ok_or_else(|| anyhow!("the primary is not running"))?;
    let pg = runtime.block_on(measure(args, pg_pid, primary.port()))?;

    let mut relay = Relay::start(base, &primary, &verifier, &max)?;
    let figures = runtime.block_on(measure(args, relay.pid(), relay.port));
    relay.stop();
    Ok((pg, figures?))
}

/// The server certificate and key in the data directory, owned by the data directory's owner
/// with mode 0600 as PostgreSQL requires.
fn install_server_files(data: &Path) -> Result<()> {
    let owner = fs::metadata(data)?;
    for name in ["server.crt", "server.key"] {
        let to = data.join(name);
        fs::copy(Path::new(CERTS).join(name), &to)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(
            &to,
            Some(std::os::unix::fs::MetadataExt::uid(&owner)),
            Some(std::os::unix::fs::MetadataExt::gid(&owner)),
        )?;
    }
    Ok(())
}

/// The relay binary, streaming from the primary and serving TLS + SCRAM.
struct Relay {
    child: Child,
    port: u16,
}

impl Relay {
    fn start(base: &Path, primary: &Cluster, verifier: &str, max: &str) -> Result<Relay> {
        let dir = base.join("relay-files");
        fs::create_dir_all(&dir)?;
        let key = dir.join("server.key");
        fs::copy(Path::new(CERTS).join("server.key"), &key)?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        let users = dir.join("users");
        fs::write(&users, format!("bench {verifier}\n"))?;
        fs::set_permissions(&users, fs::Permissions::from_mode(0o600))?;
        let hba = dir.join("hba.conf");
        fs::write(
            &hba,
            "hostssl replication bench 127.0.0.1/32 scram-sha-256\n",
        )?;
        let port = free_port()?;
        let log = fs::File::create(dir.join("relay.log"))?;
        let child = Command::new(relay_binary()?)
            .arg("run")
            .args(["--upstream", &primary.conninfo()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--ssl-cert-file")
            .arg(Path::new(CERTS).join("server.crt"))
            .arg("--ssl-key-file")
            .arg(&key)
            .arg("--hba-file")
            .arg(&hba)
            .arg("--auth-file")
            .arg(&users)
            .args(["--max-wal-senders", max])
            .env("WALRELAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("could not start the relay")?;
        let relay = Relay { child, port };
        let conninfo = relay.conninfo();
        wait_until(Duration::from_secs(60), "the relay serves logins", || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| walrelay::testkit::localpg::LocalPgError::Invalid(e.to_string()))?;
            Ok(rt.block_on(login(&conninfo)).is_ok())
        })?;
        Ok(relay)
    }

    fn conninfo(&self) -> String {
        conninfo(self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user=bench password={PASSWORD} sslmode=require connect_timeout=10"
    )
}

/// One full login and `IDENTIFY_SYSTEM`; the client, still connected.
async fn login(conninfo: &str) -> Result<ReplicationClient> {
    let mut client = ReplicationClient::connect(conninfo).await?;
    client.identify_system().await?;
    Ok(client)
}

async fn measure(args: &Args, server: u32, port: u16) -> Result<Figures> {
    let conninfo = conninfo(port);
    let clk_tck = clock_ticks()?;
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_before = tree_ticks(server);
    let start = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..args.clients {
        let conninfo = conninfo.clone();
        let count = Arc::clone(&count);
        loops.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let client = login(&conninfo).await?;
                client.close().await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for l in loops {
        l.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let server_cpu_secs = tree_ticks(server).saturating_sub(cpu_before) as f64 / clk_tck as f64;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = tree_pss(server);
    let mut handshaken = Vec::new();
    for _ in 0..args.hold {
        handshaken.push(tls_only(port).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handshaken_pss = tree_pss(server);
    let before_login = handshaken_pss.saturating_sub(idle) as f64 / args.hold as f64;
    // The handshaken connections stay open, so that the logins below cannot reuse their
    // memory: each figure is what its connections added.
    let idle = handshaken_pss;
    let mut logged_in = Vec::new();
    for _ in 0..args.hold {
        logged_in.push(login(&conninfo).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_login = tree_pss(server).saturating_sub(idle) as f64 / args.hold as f64;
    for c in logged_in {
        let _ = c.close().await;
    }
    drop(handshaken);
    Ok(Figures {
        logins: count.load(Ordering::Relaxed),
        secs,
        server_cpu_secs,
        before_login_kib: before_login,
        after_login_kib: after_login,
    })
}

/// A connection that has sent an SSLRequest and finished the TLS handshake, and nothing more.
async fn tls_only(port: u16) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let info = ConnInfo::parse("sslmode=require", &Env::default().with_os_user("bench"))?;
    let config = client_config(&info)?;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer != *b"S" {
        bail!("the server answered {:?} to SSLRequest", answer);
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(connector.connect(server_name("localhost")?, tcp).await?)
}

/// `getconf CLK_TCK`.
fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `root` and its live descendants.
fn tree(root: u32) -> Vec<u32> {
    let parent = |pid: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        after.split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&p) = tree.get(next) {
        tree.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(pid, _)| *pid));
        next += 1;
    }
    tree
}

/// utime + stime + cutime + cstime over the tree.
fn tree_ticks(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = stat.rsplit_once(')')?.1.to_owned();
            let fields: Vec<u64> = after
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(fields.iter().sum::<u64>())
        })
        .sum()
}

/// Summed `Pss:` of the tree, in kB.
fn tree_pss(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| {
            let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            let line = text.lines().find_map(|l| l.strip_prefix("Pss:"))?;
            line.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// `walrelay` beside this example's directory (`target/release/examples/…`).
fn relay_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("walrelay"))
        .ok_or_else(|| anyhow!("no directory above {}", exe.display()))?;
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo build --release` first",
            path.display()
        );
    }
    Ok(path)
}
