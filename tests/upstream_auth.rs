//! The upstream login pieces against a real PostgreSQL: `ConnInfo`, the TLS client
//! configuration, the `tls-server-end-point` hash and `ClientAuth`, driven over a blocking
//! socket. The server has `ssl=on` with the test certificates and SCRAM, md5 and cleartext
//! `pg_hba.conf` rules for replication connections.
#![cfg(feature = "runtime")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::sync::Arc;

use bytes::BytesMut;
use walrelay::client::tls;
use walrelay::proto::auth::{AuthAction, AuthError, AuthRequest, Channel, ClientAuth};
use walrelay::proto::conninfo::{ConnInfo, Env};
use walrelay::testkit::localpg::{Cluster, ClusterBuilder, require_postgres};

const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A server with TLS and one role per authentication method.
fn server() -> Option<Cluster> {
    let bins = require_postgres()?;
    let mut cluster = ClusterBuilder::new(bins, std::env::temp_dir())
        .config("ssl", "on")
        .config("ssl_cert_file", "server.crt")
        .config("ssl_key_file", "server.key")
        .config("password_encryption", "scram-sha-256")
        .hba_line("host replication clear 127.0.0.1/32 password")
        .hba_line("host replication md5user 127.0.0.1/32 md5")
        .hba_line("host replication all 127.0.0.1/32 scram-sha-256")
        .init()
        .unwrap();
    let data = cluster.data_dir();
    let owner = fs::metadata(&data).unwrap();
    for file in ["server.crt", "server.key"] {
        let target = data.join(file);
        fs::copy(format!("{TLS_DIR}/{file}"), &target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        chown(&target, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    cluster.start().unwrap();
    cluster
        .psql(
            "CREATE ROLE repl LOGIN REPLICATION PASSWORD 'sécret pw'; \
             CREATE ROLE clear LOGIN REPLICATION PASSWORD 'clear pw'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5 pw';",
        )
        .unwrap();
    Some(cluster)
}

/// SSLRequest when `sslmode` is not `disable`, then TLS as `tls::client_config` sets it up.
fn open(cluster: &Cluster, info: &ConnInfo) -> (Box<dyn Stream>, Channel) {
    let mut tcp = TcpStream::connect(("127.0.0.1", cluster.port())).unwrap();
    if info.sslmode.as_str() == "disable" {
        return (Box::new(tcp), Channel::Plain);
    }
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
        .unwrap();
    let mut answer = [0u8];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S");
    let config = Arc::new(tls::client_config(info).unwrap());
    let name = tls::server_name("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    let cert = conn.peer_certificates().unwrap()[0].clone();
    let end_point = tls::server_end_point_hash(cert.as_ref());
    assert!(end_point.is_some());
    let stream = rustls::StreamOwned::new(conn, tcp);
    (
        Box::new(stream),
        Channel::Tls {
            server_end_point: end_point,
        },
    )
}

fn read_message(stream: &mut dyn Stream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
    assert!((4..1 << 20).contains(&len));
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).unwrap();
    (header[0], body)
}

/// What a login came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Authenticated and ReadyForQuery seen; whether SCRAM was channel-bound.
    Ready { channel_bound: bool },
    /// The server sent ErrorResponse with this SQLSTATE.
    Refused(String),
    /// `ClientAuth` refused.
    Client(AuthError),
}

/// A physical replication login, as the relay makes it.
fn login(cluster: &Cluster, settings: &str) -> Outcome {
    let text = format!("{settings} sslrootcert={TLS_DIR}/ca.crt");
    let info = ConnInfo::parse(&text, &Env::default().with_os_user("nobody")).unwrap();
    let (mut stream, transport) = open(cluster, &info);
    let mut params = Vec::new();
    for (k, v) in [
        ("user", info.user.as_str()),
        ("database", "replication"),
        ("replication", "true"),
    ] {
        params.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
    }
    params.push(0);
    let len = u32::try_from(params.len() + 8).unwrap();
    let startup = [&len.to_be_bytes()[..], &196_608u32.to_be_bytes(), &params].concat();
    stream.write_all(&startup).unwrap();
    let mut auth = ClientAuth::new(
        &info.user,
        info.password.clone(),
        info.channel_binding,
        transport,
    );
    loop {
        let (tag, body) = read_message(stream.as_mut());
        match tag {
            b'R' => match AuthRequest::parse(&body).and_then(|r| auth.handle(r)) {
                Ok(AuthAction::Send(response)) => {
                    let mut buf = BytesMut::new();
                    response.encode(&mut buf).unwrap();
                    stream.write_all(&buf).unwrap();
                    stream.flush().unwrap();
                }
                Ok(AuthAction::Wait | AuthAction::Authenticated) => {}
                Err(e) => return Outcome::Client(e),
            },
            b'E' => {
                let code = body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C"));
                return Outcome::Refused(String::from_utf8_lossy(code.unwrap()).into_owned());
            }
            b'Z' => {
                return Outcome::Ready {
                    channel_bound: auth.channel_bound(),
                };
            }
            _ => {}
        }
    }
}

#[test]
fn logins_against_postgres() {
    let Some(cluster) = server() else {
        return;
    };
    let bound = Outcome::Ready {
        channel_bound: true,
    };
    let unbound = Outcome::Ready {
        channel_bound: false,
    };
    let scram = "user=repl password='sécret pw'";
    let login = |s: &str| login(&cluster, s);
    // SCRAM-SHA-256-PLUS over verified TLS.
    assert_eq!(
        login(&format!(
            "{scram} sslmode=verify-full channel_binding=require"
        )),
        bound
    );
    assert_eq!(login(&format!("{scram} sslmode=require")), bound);
    // Plain SCRAM: on TCP (flag n), and with binding disabled on TLS (flag n).
    assert_eq!(login(&format!("{scram} sslmode=disable")), unbound);
    assert_eq!(
        login(&format!(
            "{scram} sslmode=verify-ca channel_binding=disable"
        )),
        unbound
    );
    let refused = Outcome::Refused("28P01".into());
    assert_eq!(login("user=repl password=wrong sslmode=require"), refused);
    assert_eq!(login("user=repl password=wrong sslmode=disable"), refused);
    assert_eq!(
        login("user=repl sslmode=disable"),
        Outcome::Client(AuthError::NoPassword)
    );
    assert_eq!(
        login(&format!("{scram} sslmode=disable channel_binding=require")),
        Outcome::Client(AuthError::ChannelBindingNotOffered)
    );
    // Cleartext: sent over TLS, refused by the client on plain TCP.
    assert_eq!(
        login("user=clear password='clear pw' sslmode=require"),
        unbound
    );
    assert_eq!(
        login("user=clear password='clear pw' sslmode=disable"),
        Outcome::Client(AuthError::CleartextWithoutTls)
    );
    assert_eq!(
        login("user=clear password='clear pw' sslmode=require channel_binding=require"),
        Outcome::Client(AuthError::ChannelBindingUnsupportedRequest)
    );
    // md5.
    assert_eq!(
        login("user=md5user password='md5 pw' sslmode=disable"),
        unbound
    );
    assert_eq!(login("user=md5user password=nope sslmode=disable"), refused);
}
