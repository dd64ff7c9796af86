//! Hostile clients against the relay's downstream port with TLS on, access rules for
//! 127.0.0.1 (SCRAM for most users, `md5` and `password` for a few) and an auth file, using the
//! real relay binary, `psql`, `openssl s_client` and a raw client (plain TCP, or rustls after
//! an SSLRequest or as direct TLS) that sends exact bytes:
//!
//! - H1: commands pipelined after the StartupMessage, before the SASL answer;
//! - H4: wrong password, unknown user, empty password; mock salts stable over attempts and
//!   over a restart, and unlike a real user's;
//! - H5: channel binding: `psql channel_binding=require`, `y,,` with -PLUS offered, wrong
//!   binding data, `p=` and -PLUS on plaintext;
//! - H6: the authentication request codes sent for every rule, secret and transport;
//! - H7: SSLRequest or GSSENCRequest stuffed with a StartupMessage;
//! - H11: TLS 1.0 and 1.1, no shared cipher, `--ssl-min-protocol-version TLSv1.3`;
//! - §2.1 (TLS): a second SSLRequest, garbage instead of a ClientHello, a reset and silence
//!   mid-handshake or after it, bad client certificates, direct TLS with and without ALPN,
//!   and key, auth and rules files that stop `walrelay run`;
//! - §2.2: bad SASLInitialResponses, client-final twice, quitting halfway, a cleartext
//!   password when SCRAM was asked for;
//! - I1 (TLS): a thousand connections stuck mid-handshake are closed at the authentication
//!   timeout while a `psql sslmode=require` login is served;
//! - I2: a SCRAM exchange paused halfway is closed at the authentication timeout.
//!
//! Every expected SQLSTATE and text is PostgreSQL 15.18's, measured against a PG 15 server
//! with TLS and SCRAM, except where the relay is meant to be stricter: a `password` rule is
//! refused without TLS instead of asking for a cleartext password, direct TLS (PG 17) is
//! taken with ALPN `postgresql` only, and an SSLRequest stuffed with a StartupMessage gets
//! `S` then the FATAL (PG 15.18 answers `S`, then waits for a handshake; a GSSENCRequest it
//! answers `G` when built with GSSAPI). After each case the relay is still the same process,
//! serves `IDENTIFY_SYSTEM` to `psql` over TLS and has logged no panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod downstream_client;
mod support;

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use downstream_client::{ANSWER, Got, Msg, RawClient, first_packet, message, query_msg};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use support::certs::{Issued, TestCa, Validity};
use support::raw_tls::{self, Identity, Wire};
use support::{
    RelayProcess, archiving_primary, assert_relay_healthy, passwd_line, scratch, vm_hwm_kb,
    wait_acked,
};
use walrelay::testkit::localpg::{
    Cluster, PgBinaries, ScratchDir, free_port, require_postgres, wait_until,
};

/// Every known user's password.
const PASSWORD: &str = "s3cret-Pw.7";

/// The rules: `password` and `md5` for a few users, SCRAM for everyone else.
const HBA: &str = "\
# TYPE  DATABASE     USER       ADDRESS        METHOD
host    replication  pw_user    127.0.0.1/32   password
host    replication  md5_scram  127.0.0.1/32   md5
host    replication  md5_md5    127.0.0.1/32   md5
host    replication  md5_ghost  127.0.0.1/32   md5
host    replication  all        127.0.0.1/32   scram-sha-256
";

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";
const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// The certificates and access files of a relay.
struct Material {
    ca: TestCa,
    server: Issued,
    hba: PathBuf,
    auth: PathBuf,
    /// alice's line of the auth file, made by `walrelay passwd`.
    alice_line: String,
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn material(dir: &Path) -> Material {
    let tls = dir.join("tls");
    let ca = TestCa::new(&tls, "relay-ca");
    let server = ca.server("relay", "127.0.0.1", &["127.0.0.1", "localhost"], 7);
    let alice_line = passwd_line("alice", PASSWORD).trim().to_owned();
    assert!(
        alice_line.starts_with("alice SCRAM-SHA-256$4096:"),
        "{alice_line}"
    );
    let scram = || postgres_protocol::password::scram_sha_256(PASSWORD.as_bytes());
    let md5 = |user: &str| postgres_protocol::password::md5(PASSWORD.as_bytes(), user);
    let auth_text = format!(
        "{alice_line}\nscram_md5 {}\nmd5_scram {}\nmd5_md5 {}\npw_user {}\n",
        md5("scram_md5"),
        scram(),
        md5("md5_md5"),
        scram()
    );
    let auth = dir.join("relay-users");
    write_private(&auth, &auth_text);
    let hba = dir.join("relay-hba.conf");
    fs::write(&hba, HBA).unwrap();
    Material {
        ca,
        server,
        hba,
        auth,
        alice_line,
    }
}

/// The relay's flags for TLS, client certificates, the rules and the users.
fn tls_flags(m: &Material, port: u16) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--ssl-cert-file".into(),
        path(&m.server.cert),
        "--ssl-key-file".into(),
        path(&m.server.key),
        "--ssl-ca-file".into(),
        path(&m.ca.cert_file),
        "--hba-file".into(),
        path(&m.hba),
        "--auth-file".into(),
        path(&m.auth),
    ]
}

/// A primary and the relay in front of it with TLS and the rules above. Fields drop in
/// order: the relay, then the primary, then their directory.
struct Setup {
    relay: RelayProcess,
    primary: Cluster,
    dir: ScratchDir,
    bins: PgBinaries,
    port: u16,
    flags: Vec<String>,
    m: Material,
    /// A client configuration trusting the relay's CA, without ALPN or certificate.
    tls: Arc<ClientConfig>,
}

fn setup(label: &str, extra: &[&str]) -> Option<Setup> {
    let bins = require_postgres()?;
    let dir = scratch(&bins, label);
    let primary = archiving_primary(&bins, dir.path(), 1);
    let m = material(dir.path());
    let port = free_port().unwrap();
    let mut flags = tls_flags(&m, port);
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    let relay = start_relay(&primary, &dir.path().join("relay"), &flags);
    let tls = raw_tls::client_config(&m.ca.cert_file, false, Identity::Anonymous);
    let s = Setup {
        relay,
        primary,
        dir,
        bins,
        port,
        flags,
        m,
        tls,
    };
    s.wait_ready();
    Some(s)
}

fn start_relay(primary: &Cluster, data: &Path, flags: &[String]) -> RelayProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    RelayProcess::start(&primary.conninfo(), data, &flags)
}

/// How a raw client reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Plain,
    Tls,
}

impl Setup {
    /// `psql` as alice with `extra` conninfo options, for replication commands.
    fn psql(&self, extra: &str, sql: &str) -> Result<String, String> {
        self.bins
            .psql(&self.conninfo(extra), sql)
            .map_err(|e| e.to_string())
    }

    /// alice's replication connection string, with `extra` at its end.
    fn conninfo(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=alice password={PASSWORD} replication=1 {extra}",
            self.port
        )
    }

    fn wait_ready(&self) {
        wait_until(Duration::from_secs(30), "the relay answers", || {
            Ok(self.psql("sslmode=require", "IDENTIFY_SYSTEM").is_ok())
        })
        .unwrap();
        let now = self.primary.current_wal_flush_lsn().unwrap();
        wait_acked(&self.primary, now, Duration::from_secs(30));
    }

    /// O8: the same process, serving a SCRAM login over TLS and `IDENTIFY_SYSTEM`, no panic.
    fn assert_healthy(&mut self, after: &str) {
        let (bins, conninfo) = (&self.bins, self.conninfo("sslmode=require"));
        assert_relay_healthy(&mut self.relay, after, || {
            bins.psql(&conninfo, "IDENTIFY_SYSTEM")
        });
    }

    fn restart_relay(&mut self) {
        let data = self.relay.data_dir.clone();
        self.relay.kill9();
        self.relay = start_relay(&self.primary, &data, &self.flags);
        self.wait_ready();
    }

    fn connect(&self, link: Link) -> Conn {
        match link {
            Link::Plain => Conn::new(Wire::plain(self.port)),
            Link::Tls => Conn::new(raw_tls::connect_tls(self.port, &self.tls).unwrap()),
        }
    }

    /// Connects, sends a replication StartupMessage for `user` and returns the first answer.
    fn begin(&self, link: Link, user: &str) -> (Conn, Msg) {
        let mut c = self.connect(link);
        c.send(&login_packet(user));
        let first = c.expect_msg();
        (c, first)
    }
}

/// A replication StartupMessage for `user`.
fn login_packet(user: &str) -> Vec<u8> {
    downstream_client::startup_packet(&[
        ("user", user),
        ("database", "replication"),
        ("replication", "true"),
        ("application_name", "tls-abuse"),
    ])
}

/// A PostgreSQL connection over a [`Wire`], read message by message with deadlines.
struct Conn {
    wire: Wire,
    buf: Vec<u8>,
    closed: bool,
    /// The error that ended the connection, when it was not a clean EOF.
    error: Option<io::Error>,
}

impl Conn {
    fn new(wire: Wire) -> Conn {
        Conn {
            wire,
            buf: Vec::new(),
            closed: false,
            error: None,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write to the relay");
    }

    fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.write_all(bytes)?;
        self.wire.flush()
    }

    /// Reads into the buffer until `deadline`: `Some(true)` for bytes, `Some(false)` for the
    /// end of the connection, `None` for the deadline.
    fn fill(&mut self, deadline: Instant) -> Option<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        self.wire.tcp().set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match self.wire.read(&mut chunk) {
            Ok(0) => Some(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) if e.kind() == ErrorKind::Interrupted => Some(true),
            Err(e) => {
                self.error = Some(e);
                Some(false)
            }
        }
    }

    fn read_msg(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!(
                    (4..=1 << 20).contains(&len),
                    "bad length {len} from the relay: {:?}",
                    &self.buf[..self.buf.len().min(32)]
                );
                if self.buf.len() > len {
                    let body = self.buf[5..=len].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..=len);
                    return Got::Msg(Msg { tag, body });
                }
            }
            if self.closed {
                return Got::Closed;
            }
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => self.closed = true,
                None => return Got::TimedOut,
            }
        }
    }

    /// The next `n` raw bytes (the one-byte answer to an encryption request); fewer when the
    /// connection closes or [`ANSWER`] passes first.
    fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + ANSWER;
        while self.buf.len() < n && !self.closed {
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => self.closed = true,
                None => break,
            }
        }
        self.buf.drain(..n.min(self.buf.len())).collect()
    }

    fn expect_msg(&mut self) -> Msg {
        match self.read_msg(ANSWER) {
            Got::Msg(m) => m,
            other => panic!("expected a message from the relay, got {other:?}"),
        }
    }

    /// Messages until the relay closes, and how long that took; `None` when still open.
    fn until_closed(&mut self, timeout: Duration) -> Option<(Duration, Vec<Msg>)> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut msgs = Vec::new();
        loop {
            match self.read_msg(deadline.saturating_duration_since(Instant::now())) {
                Got::Msg(m) => msgs.push(m),
                Got::Closed => return Some((start.elapsed(), msgs)),
                Got::TimedOut => return None,
            }
        }
    }

    /// Messages up to ReadyForQuery or the close.
    fn until_ready_or_closed(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        loop {
            match self.read_msg(ANSWER) {
                Got::Msg(m) => {
                    let done = m.tag == b'Z';
                    msgs.push(m);
                    if done {
                        return msgs;
                    }
                }
                Got::Closed => return msgs,
                Got::TimedOut => panic!("neither ReadyForQuery nor a close: {msgs:?}"),
            }
        }
    }

    /// The single FATAL the relay sent before it closed: (SQLSTATE, message, detail).
    fn fatal_then_close(&mut self, what: &str) -> (String, String, String) {
        let (_, msgs) = self
            .until_closed(ANSWER)
            .unwrap_or_else(|| panic!("{what}: still open after {ANSWER:?}"));
        assert_eq!(msgs.len(), 1, "{what}: {msgs:?}");
        let e = &msgs[0];
        assert_eq!(e.tag, b'E', "{what}: {e:?}");
        assert_eq!(e.severity(), "FATAL", "{what}: {e:?}");
        (e.sqlstate(), e.message(), e.field(b'D').unwrap_or_default())
    }

    /// `IDENTIFY_SYSTEM` on a logged-in connection: its row.
    fn identify_system(&mut self) -> Vec<Option<String>> {
        self.send(&query_msg("IDENTIFY_SYSTEM"));
        let msgs = self.until_ready_or_closed();
        msgs.iter()
            .find_map(Msg::data_row)
            .unwrap_or_else(|| panic!("no row: {msgs:?}"))
    }
}

/// The code of an Authentication message.
fn auth_code(m: &Msg) -> Option<u32> {
    (m.tag == b'R' && m.body.len() >= 4)
        .then(|| u32::from_be_bytes(m.body[..4].try_into().unwrap()))
}

/// The mechanisms an AuthenticationSASL offers, in order.
fn mechanisms(m: &Msg) -> Vec<String> {
    assert_eq!(auth_code(m), Some(10), "not AuthenticationSASL: {m:?}");
    assert!(m.body.ends_with(&[0, 0]), "unterminated list: {m:?}");
    m.body[4..]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// SASLInitialResponse: the mechanism, then Int32 `len` and `data` as given.
fn sasl_initial_raw(mechanism: &[u8], len: i32, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.to_vec();
    body.push(0);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(data);
    message(b'p', &body)
}

fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    sasl_initial_raw(mechanism.as_bytes(), data.len() as i32, data)
}

/// SASLResponse, or a PasswordMessage when `data` ends in NUL.
fn sasl_response(data: &[u8]) -> Vec<u8> {
    message(b'p', data)
}

fn password_message(password: &str) -> Vec<u8> {
    let mut body = password.as_bytes().to_vec();
    body.push(0);
    message(b'p', &body)
}

/// The `tls-server-end-point` binding data of the relay's certificate: SHA-256 of its DER
/// (the test CA signs with ECDSA-SHA256).
fn end_point_hash(c: &Conn) -> Vec<u8> {
    Sha256::digest(c.wire.server_certificate().unwrap()).to_vec()
}

/// Sends the client-first of `scram` under `mechanism`; returns the answer.
fn client_first(c: &mut Conn, mechanism: &str, scram: &ScramSha256) -> Msg {
    c.send(&sasl_initial(mechanism, scram.message()));
    c.expect_msg()
}

/// Takes the server-first (an AuthenticationSASLContinue) and sends the client-final; returns
/// what came until ReadyForQuery or the close.
fn client_final(c: &mut Conn, scram: &mut ScramSha256, server_first: &Msg) -> Vec<Msg> {
    assert_eq!(auth_code(server_first), Some(11), "{server_first:?}");
    scram.update(&server_first.body[4..]).unwrap();
    c.send(&sasl_response(scram.message()));
    c.until_ready_or_closed()
}

/// A whole SCRAM exchange for `user` with `password`: -PLUS with the right binding over TLS,
/// plain SCRAM-SHA-256 otherwise. Returns the connection and everything after the
/// client-final.
fn scram_login(s: &Setup, link: Link, user: &str, password: &str) -> (Conn, Vec<Msg>) {
    let (mut c, first) = s.begin(link, user);
    let offered = mechanisms(&first);
    let (mechanism, binding) = match link {
        Link::Tls => (
            SCRAM_PLUS,
            ChannelBinding::tls_server_end_point(end_point_hash(&c)),
        ),
        Link::Plain => (SCRAM, ChannelBinding::unsupported()),
    };
    assert!(offered.iter().any(|m| m == mechanism), "{offered:?}");
    let mut scram = ScramSha256::new(password.as_bytes(), binding);
    let server_first = client_first(&mut c, mechanism, &scram);
    let rest = client_final(&mut c, &mut scram, &server_first);
    (c, rest)
}

/// The login succeeded: SASLFinal, AuthenticationOk, ..., ReadyForQuery, and no error.
fn assert_logged_in(msgs: &[Msg], what: &str) {
    let codes: Vec<_> = msgs.iter().filter_map(auth_code).collect();
    assert!(
        codes.contains(&0),
        "{what}: no AuthenticationOk in {msgs:?}"
    );
    assert!(!msgs.iter().any(|m| m.tag == b'E'), "{what}: {msgs:?}");
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'), "{what}: {msgs:?}");
}

/// A refused login: one FATAL (after any authentication requests), then the close, and no
/// AuthenticationOk.
fn assert_refused(msgs: &[Msg], what: &str, code: &str, text: &str) {
    let e = msgs
        .last()
        .unwrap_or_else(|| panic!("{what}: nothing came"));
    assert_eq!(
        (e.tag, e.severity(), e.sqlstate(), e.message()),
        (b'E', "FATAL".to_owned(), code.to_owned(), text.to_owned()),
        "{what}: {msgs:?}"
    );
    assert!(
        msgs[..msgs.len() - 1].iter().all(|m| m.tag == b'R'),
        "{what}: {msgs:?}"
    );
    assert!(
        !msgs.iter().any(|m| auth_code(m) == Some(0)),
        "{what}: AuthenticationOk came: {msgs:?}"
    );
}

/// The salt and iteration count of the server-first for `user` (the exchange is abandoned
/// after it).
fn salt_of(s: &Setup, link: Link, user: &str) -> (String, String) {
    let (mut c, first) = s.begin(link, user);
    assert!(mechanisms(&first).iter().any(|m| m == SCRAM));
    let scram = ScramSha256::new(b"whatever", ChannelBinding::unsupported());
    let server_first = client_first(&mut c, SCRAM, &scram);
    assert_eq!(auth_code(&server_first), Some(11), "{server_first:?}");
    let text = String::from_utf8(server_first.body[4..].to_vec()).unwrap();
    let attr = |name: &str| {
        text.split(',')
            .find_map(|a| a.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    (attr("s="), attr("i="))
}

// ---------------------------------------------------------------------------------------
// The cases of the shared test.

fn h1_commands_pipelined_before_the_sasl_answer(s: &mut Setup) {
    for link in [Link::Plain, Link::Tls] {
        let mut c = s.connect(link);
        let mut bytes = login_packet("alice");
        bytes.extend(query_msg("IDENTIFY_SYSTEM"));
        bytes.extend(query_msg("START_REPLICATION 0/0 TIMELINE 1"));
        c.send(&bytes);
        let (_, msgs) = c.until_closed(ANSWER).expect("H1: still open");
        println!("H1 {link:?}: {msgs:?}");
        assert_eq!(msgs.len(), 2, "H1 {link:?}: {msgs:?}");
        assert_eq!(auth_code(&msgs[0]), Some(10), "H1 {link:?}: {msgs:?}");
        assert_refused(
            &msgs,
            "H1",
            "08P01",
            "expected SASL response, got message type 81",
        );
        assert!(
            !msgs
                .iter()
                .any(|m| matches!(m.tag, b'S' | b'K' | b'T' | b'D' | b'Z' | b'W')),
            "H1 {link:?}: session data before authentication: {msgs:?}"
        );
        s.assert_healthy("H1");
    }
}

fn h4_wrong_unknown_and_empty_passwords(s: &mut Setup) {
    for link in [Link::Plain, Link::Tls] {
        for (user, password, what) in [
            ("alice", "not-the-password", "a wrong password"),
            ("ghost", PASSWORD, "an unknown user"),
            ("alice", "", "an empty password"),
        ] {
            let (mut c, msgs) = scram_login(s, link, user, password);
            let text = format!("password authentication failed for user \"{user}\"");
            assert_refused(&msgs, &format!("H4 {what} {link:?}"), "28P01", &text);
            assert!(c.until_closed(ANSWER).is_some(), "H4 {what}: still open");
        }
        s.assert_healthy("H4");
    }
    // The mock salt of an unknown user: the same on every attempt, over either transport.
    let ghost: Vec<_> = (0..5)
        .map(|i| salt_of(s, if i % 2 == 0 { Link::Plain } else { Link::Tls }, "ghost"))
        .collect();
    println!("H4: ghost's salts {ghost:?}");
    assert!(ghost.iter().all(|g| *g == ghost[0]), "{ghost:?}");
    assert_eq!(ghost[0].1, "4096");
    // A real user's salt is the one of her secret, and unlike the mock one; another unknown
    // user gets a salt of his own.
    let alice = salt_of(s, Link::Plain, "alice");
    let stored = s.m.alice_line.split(['$', ':']).nth(2).unwrap().to_owned();
    assert_eq!(alice, (stored, "4096".to_owned()));
    assert_ne!(alice.0, ghost[0].0);
    let other = salt_of(s, Link::Plain, "ghost2");
    assert_ne!(other.0, ghost[0].0, "two unknown users share a mock salt");
    // The secret behind mock salts is kept in the data directory: the same after a restart.
    s.restart_relay();
    let again = salt_of(s, Link::Tls, "ghost");
    println!("H4: ghost's salt after a restart {again:?}");
    assert_eq!(again, ghost[0], "the mock salt changed with a restart");
    s.assert_healthy("H4 restart");
}

fn h5_channel_binding(s: &mut Setup) {
    let ca = s.m.ca.cert_file.display().to_string();
    let verify = format!("sslmode=verify-full sslrootcert={ca} channel_binding=require");
    let id = s
        .psql(&verify, "IDENTIFY_SYSTEM")
        .unwrap_or_else(|e| panic!("H5: psql {verify}: {e}"));
    assert_eq!(id.split('|').count(), 4, "{id}");

    // -PLUS with the right binding data, as a control.
    let (mut c, first) = s.begin(Link::Tls, "alice");
    assert_eq!(mechanisms(&first), [SCRAM_PLUS, SCRAM]);
    let hash = end_point_hash(&c);
    let mut scram = ScramSha256::new(
        PASSWORD.as_bytes(),
        ChannelBinding::tls_server_end_point(hash.clone()),
    );
    let server_first = client_first(&mut c, SCRAM_PLUS, &scram);
    assert_logged_in(&client_final(&mut c, &mut scram, &server_first), "H5 -PLUS");
    assert_eq!(c.identify_system().len(), 4);

    // `y,,`: the client thinks the server cannot bind, but -PLUS was offered.
    let (mut c, _) = s.begin(Link::Tls, "alice");
    let scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unrequested());
    assert!(scram.message().starts_with(b"y,,"));
    c.send(&sasl_initial(SCRAM, scram.message()));
    let (code, text, detail) = c.fatal_then_close("H5 y,,");
    assert_eq!(
        (code.as_str(), text.as_str()),
        ("28000", "SCRAM channel binding negotiation error")
    );
    assert_eq!(
        detail,
        "The client supports SCRAM channel binding but thinks the server does not.  \
         However, this server does support channel binding."
    );
    s.assert_healthy("H5 y,,");

    // Binding data of another certificate.
    let (mut c, _) = s.begin(Link::Tls, "alice");
    let mut wrong = hash.clone();
    wrong[0] ^= 0xff;
    let mut scram = ScramSha256::new(
        PASSWORD.as_bytes(),
        ChannelBinding::tls_server_end_point(wrong),
    );
    let server_first = client_first(&mut c, SCRAM_PLUS, &scram);
    let msgs = client_final(&mut c, &mut scram, &server_first);
    assert_refused(
        &msgs,
        "H5 wrong c=",
        "28000",
        "SCRAM channel binding check failed",
    );
    s.assert_healthy("H5 wrong binding data");

    // `p=` on plaintext, with SCRAM-SHA-256 and with -PLUS (never offered there).
    let (mut c, first) = s.begin(Link::Plain, "alice");
    assert_eq!(mechanisms(&first), [SCRAM]);
    let scram = ScramSha256::new(
        PASSWORD.as_bytes(),
        ChannelBinding::tls_server_end_point(hash.clone()),
    );
    c.send(&sasl_initial(SCRAM, scram.message()));
    let (code, text, detail) = c.fatal_then_close("H5 p= on plaintext");
    assert_eq!(
        (code.as_str(), text.as_str()),
        ("08P01", "malformed SCRAM message")
    );
    assert_eq!(
        detail,
        "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message \
         includes channel binding data."
    );
    s.assert_healthy("H5 p= on plaintext");
    let (mut c, _) = s.begin(Link::Plain, "alice");
    c.send(&sasl_initial(SCRAM_PLUS, scram.message()));
    let (code, text, _) = c.fatal_then_close("H5 -PLUS on plaintext");
    assert_eq!(
        (code.as_str(), text.as_str()),
        (
            "08P01",
            "client selected an invalid SASL authentication mechanism"
        )
    );
    s.assert_healthy("H5 -PLUS on plaintext");
}

/// What the relay answered a StartupMessage with: the authentication request code, or the
/// refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FirstAnswer {
    Request(u32),
    Refused(String, String),
}

fn h6_authentication_request_codes(s: &mut Setup) {
    // (user, rule, secret, expected over plaintext, expected over TLS)
    let refused_password = |user: &str| {
        FirstAnswer::Refused(
            "28000".into(),
            format!(
                "pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \
                 \"{user}\", no encryption"
            ),
        )
    };
    let matrix = [
        (
            "alice",
            "scram-sha-256",
            "SCRAM",
            FirstAnswer::Request(10),
            FirstAnswer::Request(10),
        ),
        (
            "scram_md5",
            "scram-sha-256",
            "md5",
            FirstAnswer::Request(10),
            FirstAnswer::Request(10),
        ),
        (
            "ghost",
            "scram-sha-256",
            "none",
            FirstAnswer::Request(10),
            FirstAnswer::Request(10),
        ),
        (
            "md5_scram",
            "md5",
            "SCRAM",
            FirstAnswer::Request(10),
            FirstAnswer::Request(10),
        ),
        (
            "md5_ghost",
            "md5",
            "none",
            FirstAnswer::Request(10),
            FirstAnswer::Request(10),
        ),
        (
            "md5_md5",
            "md5",
            "md5",
            FirstAnswer::Request(5),
            FirstAnswer::Request(5),
        ),
        (
            "pw_user",
            "password",
            "SCRAM",
            refused_password("pw_user"),
            FirstAnswer::Request(3),
        ),
    ];
    let mut seen = Vec::new();
    for (user, rule, secret, plain, tls) in &matrix {
        for (link, want) in [(Link::Plain, plain), (Link::Tls, tls)] {
            let mut c = s.connect(link);
            c.send(&login_packet(user));
            let first = c.expect_msg();
            let got = match auth_code(&first) {
                Some(code) => FirstAnswer::Request(code),
                None => {
                    assert_eq!((first.tag, first.severity()), (b'E', "FATAL".into()));
                    let (_, rest) = c.until_closed(ANSWER).expect("closed after the refusal");
                    assert!(
                        rest.is_empty(),
                        "{user} {link:?}: more after the refusal: {rest:?}"
                    );
                    FirstAnswer::Refused(first.sqlstate(), first.message())
                }
            };
            println!("H6: rule {rule:<13} secret {secret:<5} user {user:<9} {link:?}: {got:?}");
            seen.push((*user, link, got.clone()));
            assert_eq!(
                &got, want,
                "H6: {user} ({rule} rule, {secret} secret) {link:?}"
            );
        }
    }
    // Cleartext (3) and MD5 (5) only where a rule asks for them: `password` over TLS, and
    // `md5` for a user whose secret is an MD5 hash.
    for (user, link, got) in &seen {
        if *got == FirstAnswer::Request(3) {
            assert_eq!((*user, *link), ("pw_user", Link::Tls));
        }
        if *got == FirstAnswer::Request(5) {
            assert_eq!(*user, "md5_md5");
        }
    }
    s.assert_healthy("H6 requests");

    // The configured methods work, and refuse wrong and empty passwords as PostgreSQL does.
    let md5_with = |s: &Setup, password: &str| {
        let (mut c, first) = s.begin(Link::Plain, "md5_md5");
        assert_eq!(auth_code(&first), Some(5));
        let salt: [u8; 4] = first.body[4..8].try_into().unwrap();
        let response = if password.is_empty() {
            String::new()
        } else {
            md5_hash(b"md5_md5", password.as_bytes(), salt)
        };
        c.send(&password_message(&response));
        c.until_ready_or_closed()
    };
    assert_logged_in(&md5_with(s, PASSWORD), "md5");
    let failed = "password authentication failed for user \"md5_md5\"";
    assert_refused(&md5_with(s, "wrong"), "md5 wrong", "28P01", failed);
    let empty = "empty password returned by client";
    assert_refused(&md5_with(s, ""), "md5 empty", "28P01", empty);
    let cleartext_with = |s: &Setup, password: &str| {
        let (mut c, first) = s.begin(Link::Tls, "pw_user");
        assert_eq!(auth_code(&first), Some(3));
        c.send(&password_message(password));
        c.until_ready_or_closed()
    };
    assert_logged_in(&cleartext_with(s, PASSWORD), "password over TLS");
    let failed = "password authentication failed for user \"pw_user\"";
    assert_refused(
        &cleartext_with(s, "wrong"),
        "password wrong",
        "28P01",
        failed,
    );
    assert_refused(&cleartext_with(s, ""), "password empty", "28P01", empty);
    // md5 rule, SCRAM secret: SCRAM, which works; SCRAM rule, md5 secret: a mock exchange.
    let (_, msgs) = scram_login(s, Link::Plain, "md5_scram", PASSWORD);
    assert_logged_in(&msgs, "md5 rule with a SCRAM secret");
    let (_, msgs) = scram_login(s, Link::Tls, "scram_md5", PASSWORD);
    let failed = "password authentication failed for user \"scram_md5\"";
    assert_refused(&msgs, "SCRAM rule with an md5 secret", "28P01", failed);
    s.assert_healthy("H6 logins");
}

fn h7_ssl_and_gss_requests_stuffed_with_a_startup(s: &mut Setup) {
    for (code, answer) in [
        (downstream_client::SSL_REQUEST_CODE, b"S"),
        (GSSENC_REQUEST_CODE, b"N"),
    ] {
        let mut stuffed = first_packet(&code.to_be_bytes());
        stuffed.extend(login_packet("alice"));
        let mut c = RawClient::connect(s.port);
        c.send(&stuffed);
        assert_eq!(c.read_bytes(1, ANSWER), answer, "H7 {code}");
        let (_, msgs) = c.until_closed(ANSWER).expect("H7: still open");
        assert_eq!(
            downstream_client::only_fatal(&msgs),
            (
                "08P01".into(),
                "received unencrypted data after SSL request".into()
            ),
            "H7 {code}"
        );
        s.assert_healthy("H7");
    }
}

/// Encryption requests that may not come again: a second SSLRequest inside TLS, a
/// GSSENCRequest inside TLS, a second GSSENCRequest after `N`. Each gets a FATAL and the close
/// (its SQLSTATE is checked by `repeated_encryption_requests_get_postgres_sqlstate`); returns
/// (what, SQLSTATE, message).
fn repeated_encryption_requests(s: &Setup) -> Vec<(&'static str, String, String)> {
    let gssenc = first_packet(&GSSENC_REQUEST_CODE.to_be_bytes());
    let mut out = Vec::new();
    for (what, link, request) in [
        (
            "SSLRequest inside TLS",
            Link::Tls,
            raw_tls::ssl_request_bytes().to_vec(),
        ),
        ("GSSENCRequest inside TLS", Link::Tls, gssenc.clone()),
        ("GSSENCRequest twice", Link::Plain, gssenc.clone()),
    ] {
        let mut c = s.connect(link);
        if link == Link::Plain {
            c.send(&gssenc);
            assert_eq!(c.read_bytes(1), b"N", "{what}");
        }
        c.send(&request);
        let (code, text, _) = c.fatal_then_close(what);
        println!("{what}: {code} {text}");
        out.push((what, code, text));
    }
    out
}

/// The message PostgreSQL's protocol-version check gives an encryption request it does not
/// take (`ProcessStartupPacket`).
fn unsupported_protocol(what: &str) -> &'static str {
    if what.starts_with("SSL") {
        "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0"
    } else {
        "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0"
    }
}

fn tls_handshake_abuse(s: &mut Setup) {
    for (what, _, text) in repeated_encryption_requests(s) {
        assert_eq!(text, unsupported_protocol(what), "{what}");
    }
    s.assert_healthy("repeated encryption requests");

    // Garbage instead of a ClientHello: closed, at most with a TLS alert.
    let (mut sock, answer) = raw_tls::ssl_request(s.port).unwrap();
    assert_eq!(answer, Some(b'S'));
    sock.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut sock, ANSWER).expect("garbage: still open");
    println!("garbage instead of a ClientHello: answered {got:02x?}");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "not a TLS alert: {got:02x?}"
    );
    s.assert_healthy("garbage instead of a ClientHello");

    // A reset in the middle of the ClientHello: the `S` is left unread, so closing the socket
    // sends RST.
    let offset = s.relay.log_len();
    let hello = raw_tls::client_hello(&s.tls);
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.write_all(&raw_tls::ssl_request_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    sock.write_all(&hello[..hello.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(sock);
    s.relay
        .wait_log(offset, "could not accept SSL connection", ANSWER);
    let log = s.relay.log_since(offset);
    let line = log
        .lines()
        .find(|l| l.contains("could not accept SSL connection"));
    println!("RST mid-handshake: {}", line.unwrap_or_default());
    s.assert_healthy("a reset mid-handshake");

    // A finished handshake, then silence: closed at the authentication timeout (2 s).
    let t0 = Instant::now();
    let mut c = s.connect(Link::Tls);
    let (_, msgs) = c
        .until_closed(Duration::from_secs(10))
        .expect("silence after the handshake: still open after 10 s");
    let took = t0.elapsed();
    println!("silence after the handshake: closed after {took:?}");
    assert!(msgs.is_empty(), "{msgs:?}");
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_secs(4),
        "closed after {took:?} with a 2 s authentication timeout"
    );
    s.assert_healthy("silence after the handshake");
}

/// Every raw byte until the peer closes; `None` when still open at `timeout`.
fn read_until_closed(sock: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some(got),
        }
    }
}

/// A handshake with `identity` is refused: a TLS alert, and not one PostgreSQL message.
/// Returns the alert as the client saw it.
fn assert_certificate_refused(s: &Setup, identity: Identity<'_>, what: &str) -> String {
    let config = raw_tls::client_config(&s.m.ca.cert_file, false, identity);
    let error = match raw_tls::connect_tls(s.port, &config) {
        Err(e) => e,
        Ok(wire) => {
            // TLS 1.3: the server judges the certificate after the client finished.
            let mut c = Conn::new(wire);
            let _ = c.try_send(&login_packet("alice"));
            let (_, msgs) = c
                .until_closed(ANSWER)
                .unwrap_or_else(|| panic!("{what}: still open"));
            assert!(msgs.is_empty(), "{what}: the relay answered {msgs:?}");
            c.error
                .unwrap_or_else(|| panic!("{what}: closed without a TLS alert"))
        }
    };
    let alert =
        raw_tls::tls_error(&error).unwrap_or_else(|| panic!("{what}: not a TLS error: {error:?}"));
    assert!(
        matches!(alert, rustls::Error::AlertReceived(_)),
        "{what}: {alert:?}"
    );
    format!("{alert}")
}

fn client_certificates(s: &mut Setup) {
    let dir = s.dir.path().join("tls");
    let good = s.m.ca.client("client-good", "alice", Validity::Current);
    let expired = s.m.ca.client("client-expired", "alice", Validity::Expired);
    let stranger = TestCa::new(&dir.join("other"), "other-ca").client(
        "client-stranger",
        "alice",
        Validity::Current,
    );

    // A certificate from the CA, as a control: the login goes on to SCRAM.
    let config = raw_tls::client_config(
        &s.m.ca.cert_file,
        false,
        Identity::Pem {
            cert: &good.cert,
            key: &good.key,
        },
    );
    let mut c = Conn::new(raw_tls::connect_tls(s.port, &config).unwrap());
    c.send(&login_packet("alice"));
    let first = c.expect_msg();
    assert_eq!(mechanisms(&first), [SCRAM_PLUS, SCRAM]);
    let mut scram = ScramSha256::new(
        PASSWORD.as_bytes(),
        ChannelBinding::tls_server_end_point(end_point_hash(&c)),
    );
    let server_first = client_first(&mut c, SCRAM_PLUS, &scram);
    assert_logged_in(
        &client_final(&mut c, &mut scram, &server_first),
        "a good client certificate",
    );

    for (what, identity) in [
        (
            "an expired client certificate",
            Identity::Pem {
                cert: &expired.cert,
                key: &expired.key,
            },
        ),
        (
            "a client certificate from an unknown CA",
            Identity::Pem {
                cert: &stranger.cert,
                key: &stranger.key,
            },
        ),
        (
            "a junk client certificate",
            Identity::Junk {
                bytes: b"this is not a certificate at all".repeat(8),
                key: &good.key,
            },
        ),
    ] {
        let alert = assert_certificate_refused(s, identity, what);
        println!("{what}: refused with {alert}");
        s.assert_healthy(what);
    }
}

fn direct_tls(s: &mut Setup) {
    let with_alpn = raw_tls::client_config(&s.m.ca.cert_file, true, Identity::Anonymous);
    let mut c = Conn::new(raw_tls::connect_direct(s.port, &with_alpn).unwrap());
    assert_eq!(c.wire.alpn().as_deref(), Some(raw_tls::ALPN_POSTGRESQL));
    c.send(&login_packet("alice"));
    let first = c.expect_msg();
    assert_eq!(mechanisms(&first), [SCRAM_PLUS, SCRAM]);
    let mut scram = ScramSha256::new(
        PASSWORD.as_bytes(),
        ChannelBinding::tls_server_end_point(end_point_hash(&c)),
    );
    let server_first = client_first(&mut c, SCRAM_PLUS, &scram);
    assert_logged_in(
        &client_final(&mut c, &mut scram, &server_first),
        "direct TLS with ALPN",
    );
    assert_eq!(c.identify_system().len(), 4);
    println!("direct TLS with ALPN: {:?}", c.wire.version());

    // Without ALPN: closed, before anything of PostgreSQL's is said.
    match raw_tls::connect_direct(s.port, &s.tls) {
        Err(e) => println!("direct TLS without ALPN: handshake failed: {e}"),
        Ok(wire) => {
            let mut c = Conn::new(wire);
            let _ = c.try_send(&login_packet("alice"));
            let (_, msgs) = c
                .until_closed(ANSWER)
                .expect("direct TLS without ALPN: still open");
            println!("direct TLS without ALPN: closed ({:?})", c.error);
            assert!(msgs.is_empty(), "answered without ALPN: {msgs:?}");
        }
    }
    s.assert_healthy("direct TLS");
}

fn sasl_initial_response_abuse(s: &mut Setup) {
    let invalid = "client selected an invalid SASL authentication mechanism";
    for link in [Link::Plain, Link::Tls] {
        let cases: [(&str, Vec<u8>, &str, &str); 6] = [
            (
                "an unknown mechanism",
                sasl_initial("SCRAM-SHA-1", b"n,,n=,r=abcdef"),
                "08P01",
                invalid,
            ),
            (
                "an empty mechanism",
                sasl_initial("", b"n,,n=,r=abcdef"),
                "08P01",
                invalid,
            ),
            (
                "inner length i32::MAX",
                sasl_initial_raw(SCRAM.as_bytes(), i32::MAX, b"n,,n=,r=abcdef"),
                "08P01",
                "insufficient data left in message",
            ),
            (
                "an inner length beyond the message",
                sasl_initial_raw(SCRAM.as_bytes(), 24, b"n,,n=,r=abcdef"),
                "08P01",
                "insufficient data left in message",
            ),
            (
                "an empty client-first",
                sasl_initial(SCRAM, b""),
                "08P01",
                "malformed SCRAM message",
            ),
            (
                "a cleartext password",
                password_message(PASSWORD),
                "08P01",
                invalid,
            ),
        ];
        for (what, bytes, code, text) in cases {
            let (mut c, first) = s.begin(link, "alice");
            assert_eq!(auth_code(&first), Some(10));
            c.send(&bytes);
            let (got_code, got_text, _) = c.fatal_then_close(what);
            assert_eq!(
                (got_code.as_str(), got_text.as_str()),
                (code, text),
                "{what} {link:?}"
            );
            s.assert_healthy(what);
        }

        // A 10 KB mechanism name: the message is longer than SASL messages may be.
        let (mut c, _) = s.begin(link, "alice");
        let name = vec![b'A'; 10 * 1024];
        c.send(&sasl_initial_raw(&name, 14, b"n,,n=,r=abcdef"));
        let (_, msgs) = c.until_closed(ANSWER).expect("10 KB mechanism: still open");
        println!("10 KB mechanism {link:?}: {msgs:?} ({:?})", c.error);
        assert_refused(
            &msgs,
            "a 10 KB mechanism",
            "28P01",
            "password authentication failed for user \"alice\"",
        );
        s.assert_healthy("a 10 KB mechanism name");
    }

    // Inner length -1: an empty challenge, then the client-first-message comes on its own,
    // and the login goes on.
    let (mut c, _) = s.begin(Link::Plain, "alice");
    c.send(&sasl_initial_raw(SCRAM.as_bytes(), -1, b""));
    let empty = c.expect_msg();
    assert_eq!(
        (auth_code(&empty), empty.body.len()),
        (Some(11), 4),
        "{empty:?}"
    );
    let mut scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unrequested());
    c.send(&sasl_response(scram.message()));
    let server_first = c.expect_msg();
    assert_logged_in(
        &client_final(&mut c, &mut scram, &server_first),
        "inner length -1",
    );
    assert_eq!(c.identify_system().len(), 4);
    s.assert_healthy("inner length -1");
}

fn sasl_exchange_abuse(s: &mut Setup) {
    // The client-final twice in one write: the login succeeds, then the second one is an
    // unknown message in command mode (PG15: `invalid frontend message type 112`).
    for link in [Link::Plain, Link::Tls] {
        let (mut c, first) = s.begin(link, "alice");
        let mechanism = if link == Link::Tls { SCRAM_PLUS } else { SCRAM };
        assert!(mechanisms(&first).iter().any(|m| m == mechanism));
        let binding = match link {
            Link::Tls => ChannelBinding::tls_server_end_point(end_point_hash(&c)),
            Link::Plain => ChannelBinding::unsupported(),
        };
        let mut scram = ScramSha256::new(PASSWORD.as_bytes(), binding);
        let server_first = client_first(&mut c, mechanism, &scram);
        scram.update(&server_first.body[4..]).unwrap();
        let mut twice = sasl_response(scram.message());
        twice.extend(sasl_response(scram.message()));
        c.send(&twice);
        let (_, msgs) = c
            .until_closed(ANSWER)
            .expect("client-final twice: still open");
        let ready = msgs.iter().position(|m| m.tag == b'Z');
        let ready = ready.unwrap_or_else(|| panic!("client-final twice {link:?}: {msgs:?}"));
        assert_logged_in(&msgs[..=ready], "client-final twice");
        assert_refused(
            &msgs[ready + 1..],
            "client-final twice",
            "08P01",
            "invalid frontend message type 112",
        );
        s.assert_healthy("client-final twice");
    }

    // Quitting halfway: closing after the server-first, or sending Terminate.
    for link in [Link::Plain, Link::Tls] {
        let (mut c, _) = s.begin(link, "alice");
        let scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
        assert_eq!(auth_code(&client_first(&mut c, SCRAM, &scram)), Some(11));
        drop(c);
        s.assert_healthy("quitting halfway");
        let (mut c, _) = s.begin(link, "alice");
        assert_eq!(auth_code(&client_first(&mut c, SCRAM, &scram)), Some(11));
        c.send(&message(b'X', &[]));
        let (code, text, _) = c.fatal_then_close("Terminate halfway");
        assert_eq!(
            (code.as_str(), text.as_str()),
            ("08P01", "expected SASL response, got message type 88"),
            "{link:?}"
        );
        s.assert_healthy("Terminate halfway");
    }
}

/// Waits for the relay to close `c`, counting from `t0` (before the connection was opened)
/// and from `last` (the relay's last message): with a 2 s authentication timeout the close
/// must come about 2 s after `t0`, whatever came since. `Err` says how it went wrong.
fn closed_at_the_timeout(
    c: &mut Conn,
    t0: Instant,
    last: Instant,
    what: &str,
) -> Result<(), String> {
    let closed = c.until_closed(Duration::from_secs(8));
    let (took, quiet) = (t0.elapsed(), last.elapsed());
    println!(
        "I2 {what}: closed={} {took:?} after connecting, {quiet:?} after the last message",
        closed.is_some()
    );
    let Some((_, msgs)) = closed else {
        return Err(format!("{what}: still open after {took:?}"));
    };
    if !msgs.is_empty() {
        return Err(format!("{what}: {msgs:?}"));
    }
    if took < Duration::from_millis(1800) || took > Duration::from_secs(4) {
        return Err(format!(
            "{what}: closed after {took:?} with a 2 s authentication timeout"
        ));
    }
    // Meaningful only when the messages were spread over the timeout.
    if last.duration_since(t0) > Duration::from_millis(500) && quiet >= Duration::from_millis(1800)
    {
        return Err(format!(
            "{what}: the timeout restarted with a message ({quiet:?} after the last)"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The tests.

/// H1, H4–H7, §2.1's TLS items and §2.2 against one primary and one relay with a 2 s
/// authentication timeout and a CA file for client certificates.
#[test]
fn tls_and_authentication_abuse_gets_postgres_answers() {
    let Some(mut s) = setup("tlsabuse", &["--authentication-timeout", "2s"]) else {
        return;
    };
    let t0 = Instant::now();
    let step = |name: &str, s: &mut Setup, case: fn(&mut Setup)| {
        let t = Instant::now();
        case(s);
        println!("== {name}: {:?}", t.elapsed());
    };
    step("H1", &mut s, h1_commands_pipelined_before_the_sasl_answer);
    step("H4", &mut s, h4_wrong_unknown_and_empty_passwords);
    step("H5", &mut s, h5_channel_binding);
    step("H6", &mut s, h6_authentication_request_codes);
    step("H7", &mut s, h7_ssl_and_gss_requests_stuffed_with_a_startup);
    step("§2.1 handshakes", &mut s, tls_handshake_abuse);
    step("§2.1 client certificates", &mut s, client_certificates);
    step("§2.1 direct TLS", &mut s, direct_tls);
    step(
        "§2.2 SASLInitialResponse",
        &mut s,
        sasl_initial_response_abuse,
    );
    step("§2.2 exchange", &mut s, sasl_exchange_abuse);
    println!("all cases: {:?}", t0.elapsed());
}

/// I2: a login that stops after the StartupMessage is answered, or halfway through the SCRAM
/// exchange (after the server-first), is closed at the authentication timeout, which covers
/// the whole exchange and not one read.
#[test]
fn i2_a_scram_exchange_paused_halfway_is_closed_at_the_authentication_timeout() {
    let Some(mut s) = setup("i2", &["--authentication-timeout", "2s"]) else {
        return;
    };
    // TLS; the steps come at 0.7 s and 1.4 s, then nothing after the server-first.
    let t0 = Instant::now();
    let mut c = s.connect(Link::Tls);
    std::thread::sleep(Duration::from_millis(700));
    c.send(&login_packet("alice"));
    assert_eq!(auth_code(&c.expect_msg()), Some(10));
    std::thread::sleep(Duration::from_millis(700));
    let scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    assert_eq!(auth_code(&client_first(&mut c, SCRAM, &scram)), Some(11));
    let last = Instant::now();
    // Plain TCP, beside it: nothing after AuthenticationSASL.
    let t1 = Instant::now();
    let (mut silent, first) = s.begin(Link::Plain, "alice");
    assert_eq!(auth_code(&first), Some(10));
    let silent_last = Instant::now();
    let outcomes = [
        closed_at_the_timeout(&mut c, t0, last, "TLS, paused after the server-first"),
        closed_at_the_timeout(
            &mut silent,
            t1,
            silent_last,
            "silent after AuthenticationSASL",
        ),
    ];
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.is_empty(), "I2: {failed:#?}");
    s.assert_healthy("I2");
}

/// Repeated encryption requests are refused as PostgreSQL 15.18 refuses them (measured):
/// they fall through to the protocol-version check of `ProcessStartupPacket`, SQLSTATE 0A000
/// (feature not supported).
#[test]
fn repeated_encryption_requests_get_postgres_sqlstate() {
    let Some(mut s) = setup("sslagain", &[]) else {
        return;
    };
    for (what, code, text) in repeated_encryption_requests(&s) {
        assert_eq!(
            (code.as_str(), text.as_str()),
            ("0A000", unsupported_protocol(what)),
            "{what}"
        );
    }
    s.assert_healthy("repeated encryption requests");
}

/// `openssl s_client -starttls postgres` against the relay: whether it succeeded, and what it
/// printed.
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_s_client(port: u16, args: &[&str], ok: bool, needle: &str) {
    let (success, text) = s_client(port, args);
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .map(str::trim)
        .unwrap_or("-");
    println!("H11: s_client {args:?}: success={success}: {line}");
    assert_eq!(success, ok, "s_client {args:?}:\n{text}");
    assert!(
        text.contains(needle),
        "s_client {args:?}: no {needle:?} in\n{text}"
    );
}

fn h11_protocol_versions(s: &mut Setup) {
    // The relay refuses with an alert (rustls: handshake_failure for TLS 1.0 and 1.1;
    // OpenSSL in PostgreSQL says protocol_version): one came from the server.
    let refused = "SSL alert number";
    let low = ["-cipher", "DEFAULT@SECLEVEL=0"];
    assert_s_client(s.port, &["-tls1_1", low[0], low[1]], false, refused);
    assert_s_client(s.port, &["-tls1", low[0], low[1]], false, refused);
    assert_s_client(s.port, &["-tls1_2"], true, "New, TLSv1.2,");
    assert_s_client(s.port, &["-tls1_3"], true, "New, TLSv1.3,");
    assert_s_client(
        s.port,
        &["-tls1_2", "-cipher", "AES128-SHA"],
        false,
        refused,
    );
    s.assert_healthy("H11");

    // A second relay on the same primary that takes TLS 1.3 only.
    let port = free_port().unwrap();
    let mut flags = tls_flags(&s.m, port);
    flags.extend(
        [
            "--ssl-min-protocol-version",
            "TLSv1.3",
            "--upstream-slot",
            "walrelay_tls13",
        ]
        .map(String::from),
    );
    let mut strict = start_relay(&s.primary, &s.dir.path().join("relay-tls13"), &flags);
    wait_until(Duration::from_secs(30), "the TLS 1.3 relay listens", || {
        Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
    })
    .unwrap();
    assert_s_client(port, &["-tls1_2"], false, refused);
    assert_s_client(port, &["-tls1_3"], true, "New, TLSv1.3,");
    assert!(strict.is_running(), "the TLS 1.3 relay exited");
}

/// I1 with TLS: connections that stop in the middle of the handshake.
fn i1_a_thousand_stalled_handshakes(s: &mut Setup) {
    let pid = s.relay.pid();
    let hwm_before = vm_hwm_kb(pid);
    let hello = raw_tls::client_hello(&s.tls);
    let opened = Instant::now();
    let mut flood: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let (mut sock, answer) = raw_tls::ssl_request(s.port).unwrap();
            assert_eq!(answer, Some(b'S'), "connection {i}");
            if i % 2 == 1 {
                sock.write_all(&hello[..hello.len() / 2]).unwrap();
            }
            sock
        })
        .collect();
    let opened_in = opened.elapsed();
    let asked = Instant::now();
    let id = s.psql("sslmode=require", "IDENTIFY_SYSTEM");
    let answered = asked.elapsed();
    println!(
        "I1: 1000 SSLRequests answered S in {opened_in:?}; psql sslmode=require login and \
         IDENTIFY_SYSTEM during the flood took {answered:?}"
    );
    let id = id.unwrap_or_else(|e| panic!("I1: psql during the flood: {e}"));
    assert_eq!(id.split('|').count(), 4, "{id}");
    assert!(
        answered < Duration::from_secs(10),
        "I1: IDENTIFY_SYSTEM took {answered:?}"
    );
    let mut open = 0;
    for sock in &mut flood {
        let left = Duration::from_secs(15).saturating_sub(opened.elapsed());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut byte = [0u8; 1];
        match sock.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("I1: the relay sent data to a stalled handshake"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(_) => open += 1,
        }
    }
    let closed_in = opened.elapsed();
    println!("I1: all closed {closed_in:?} after the flood began, {open} still open");
    assert_eq!(open, 0, "I1: stalled handshakes left open");
    let hwm_after = vm_hwm_kb(pid);
    println!("I1: VmHWM {hwm_before} kB -> {hwm_after} kB");
    assert!(
        hwm_after < 200 * 1024,
        "I1: VmHWM {hwm_after} kB (before the flood {hwm_before} kB)"
    );
    s.assert_healthy("I1");
}

/// H11 and I1 against one primary and a relay with a 3 s authentication timeout.
#[test]
fn tls_versions_and_a_flood_of_stalled_handshakes() {
    let Some(mut s) = setup("tlsflood", &["--authentication-timeout", "3s"]) else {
        return;
    };
    h11_protocol_versions(&mut s);
    i1_a_thousand_stalled_handshakes(&mut s);
}

/// Starts `walrelay run` with `flags` against an upstream that does not exist; returns its
/// exit status within 10 s (`None` if it is still running) and its log.
fn run_briefly(dir: &Path, name: &str, flags: &[String]) -> (Option<i32>, String) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut relay = RelayProcess::start(
        "host=127.0.0.1 port=1 user=nobody connect_timeout=1",
        &dir.join(name),
        &flags,
    );
    let status = relay.wait_exit(Duration::from_secs(10));
    let log = relay.log_contents();
    (status.map(|s| s.code().unwrap_or(-1)), log)
}

/// §2.1: a key or auth file others may read, and a rules line that does not parse, stop
/// `walrelay run` with PostgreSQL's words; the same files with the right modes do not.
#[test]
fn unsafe_key_and_auth_files_and_bad_rules_stop_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let m = material(dir.path());
    let flags_with = |replace: &str, with: &Path| {
        let mut flags = tls_flags(&m, free_port().unwrap());
        let at = flags.iter().position(|f| f == replace).unwrap();
        flags[at + 1] = with.display().to_string();
        flags
    };

    // The files as made: the relay starts and listens.
    let port = free_port().unwrap();
    let good = tls_flags(&m, port);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let mut relay = RelayProcess::start(
        "host=127.0.0.1 port=1 user=nobody connect_timeout=1",
        &dir.path().join("good"),
        &good,
    );
    wait_until(Duration::from_secs(10), "the relay listens", || {
        Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    assert!(relay.is_running(), "{}", relay.log_contents());
    drop(relay);

    let key = dir.path().join("open.key");
    fs::copy(&m.server.key, &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (status, log) = run_briefly(dir.path(), "key", &flags_with("--ssl-key-file", &key));
    println!("key file 0644: exit {status:?}");
    assert!(
        matches!(status, Some(code) if code != 0),
        "{status:?}\n{log}"
    );
    let want = format!(
        "private key file \"{}\" has group or world access",
        key.display()
    );
    assert!(log.contains(&want), "no {want:?} in\n{log}");

    let auth = dir.path().join("open-users");
    fs::copy(&m.auth, &auth).unwrap();
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o644)).unwrap();
    let (status, log) = run_briefly(dir.path(), "auth", &flags_with("--auth-file", &auth));
    println!("auth file 0644: exit {status:?}");
    assert!(
        matches!(status, Some(code) if code != 0),
        "{status:?}\n{log}"
    );
    let want = format!("auth file \"{}\" has group or world access", auth.display());
    assert!(log.contains(&want), "no {want:?} in\n{log}");

    let hba = dir.path().join("bad-hba.conf");
    fs::write(
        &hba,
        "# rules\nhost replication alice 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 frobnicate\n",
    )
    .unwrap();
    let (status, log) = run_briefly(dir.path(), "hba", &flags_with("--hba-file", &hba));
    println!("a rules line that does not parse: exit {status:?}");
    assert!(
        matches!(status, Some(code) if code != 0),
        "{status:?}\n{log}"
    );
    let want = format!("(line 3 of configuration file \"{}\")", hba.display());
    assert!(log.contains(&want), "no {want:?} in\n{log}");
    assert!(log.contains("frobnicate"), "{log}");
}
