//! Protocol logic without I/O: the upstream connection's configuration (libpq connection
//! strings, `.pgpass`), the client side of PostgreSQL authentication, the results of
//! replication commands, and the receiving side of a replication stream.

pub mod auth;
pub mod conninfo;
pub mod pgpass;
pub mod query;
pub mod stream;
pub mod walsender;
