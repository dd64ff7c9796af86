//! Protocol logic without I/O: the two sessions of the relay, and what they are built of.
//!
//! - [`downstream`]: one client of the relay (a standby, `pg_receivewal`, another relay) as a
//!   walsender serves it: login, commands, streaming;
//! - [`upstream`]: the relay as a client of its upstream server, as a walreceiver is: login,
//!   replication commands and their results, the received stream;
//! - [`liveness`]: the silence rule both ends of a stream follow;
//! - [`basebackup`]: the boundaries of a relayed BASE_BACKUP answer;
//! - [`auth`]: PostgreSQL authentication: the client side (SCRAM, MD5, cleartext) and the
//!   server side for the relay's own clients (secrets and the auth file, SCRAM, MD5, cleartext);
//! - [`certificate`]: the channel-binding hash, serial and common name of an X.509 certificate;
//! - [`access`]: who may connect downstream: `pg_hba.conf` rules and `pg_ident.conf` maps;
//! - [`conninfo`] and [`pgpass`]: libpq connection strings, the `PG*` environment and
//!   `.pgpass`;
//! - [`query`]: the results of the replication commands the relay sends upstream, checked;
//! - [`syncrep`]: which downstreams are synchronous standbys, and what they let the relay
//!   acknowledge upstream.
//!
//! Nothing here reads a socket, a file or the clock: callers pass what arrived and the time,
//! and send what comes out.

pub mod access;
pub mod auth;
pub mod basebackup;
pub mod certificate;
pub mod conninfo;
pub mod downstream;
pub mod liveness;
pub mod pgpass;
pub mod query;
pub mod syncrep;
pub mod upstream;
