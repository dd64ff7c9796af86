//! libpq connection strings: `key=value` lists and `postgresql://` URIs, parsed into a
//! [`ConnInfo`] for the upstream connection.
//!
//! This mirrors libpq's `fe-connect.c` (`conninfo_parse`, `conninfo_uri_parse_options`,
//! `conninfo_add_defaults`, `pqConnectOptions2`): the same quoting and escaping rules, the same
//! `PG*` environment fallbacks, the same defaults and the same error texts. The parser is pure:
//! the environment comes in as an [`Env`] snapshot, and no file is opened here.
//!
//! Options libpq knows but the relay does not act on are split in two lists: harmless ones
//! (`gssencmode`, `sslsni`, …, see [`IGNORED_OPTIONS`]) are accepted and ignored; ones whose
//! silent loss would weaken security or change the target (`service`, `sslcrl`, …, see
//! [`UNSUPPORTED_OPTIONS`]) are refused when set to a non-empty value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The libpq default port.
pub const DEFAULT_PORT: u16 = 5432;

/// Options libpq accepts that the relay parses and ignores (they change nothing it does).
#[rustfmt::skip]
pub const IGNORED_OPTIONS: &[&str] = &[
    "client_encoding", "gssencmode", "gssdelegation", "gsslib", "krbsrvname",
    "replication", "ssl_max_protocol_version", "ssl_min_protocol_version", "sslcertmode",
    "sslcompression", "sslnegotiation", "sslsni", "tcp_user_timeout",
];

/// Options libpq accepts that the relay refuses when they are set to a non-empty value.
#[rustfmt::skip]
pub const UNSUPPORTED_OPTIONS: &[&str] = &[
    "require_auth", "requirepeer", "scram_client_key", "scram_server_key", "service", "sslcrl",
    "sslcrldir", "sslpassword",
];

/// The options the relay acts on, with the environment variable libpq falls back to.
#[rustfmt::skip]
const OPTIONS: &[(&str, Option<&str>)] = &[
    ("application_name", Some("PGAPPNAME")), ("channel_binding", Some("PGCHANNELBINDING")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")), ("dbname", Some("PGDATABASE")),
    ("fallback_application_name", None), ("host", Some("PGHOST")), ("hostaddr", Some("PGHOSTADDR")),
    ("keepalives", None), ("keepalives_count", None), ("keepalives_idle", None),
    ("keepalives_interval", None), ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("options", Some("PGOPTIONS")), ("passfile", Some("PGPASSFILE")),
    ("password", Some("PGPASSWORD")), ("port", Some("PGPORT")), ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")), ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")), ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("user", Some("PGUSER")),
];

/// Why a connection string was refused. Texts follow libpq's; none ever contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// A key with no `=` after it.
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    /// A quoted value with no closing quote.
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    /// A key libpq does not know.
    #[error("invalid connection option \"{0}\"")]
    InvalidOption(String),
    /// A key libpq knows that the relay refuses (see [`UNSUPPORTED_OPTIONS`]).
    #[error("connection option \"{0}\" is not supported")]
    Unsupported(String),
    /// A URI query parameter that is not a connection option.
    #[error("invalid URI query parameter: \"{0}\"")]
    InvalidUriParameter(String),
    /// A URI query parameter without `=`, or with two.
    #[error("{problem} key/value separator \"=\" in URI query parameter: \"{param}\"")]
    UriSeparator {
        /// `missing` or `extra`.
        problem: &'static str,
        /// The parameter as written.
        param: String,
    },
    /// A bracketed IPv6 address that is empty or never closed, or junk after it.
    #[error("malformed IPv6 host address in URI: {0}")]
    UriIpv6(&'static str),
    /// A bad `%xx` sequence (the value is shown unless it is the password).
    #[error("invalid percent-encoded token: \"{0}\"")]
    PercentEncoding(String),
    /// `%00` in a URI part.
    #[error("forbidden value %00 in percent-encoded value: \"{0}\"")]
    PercentNul(String),
    /// A value outside an option's allowed set, e.g. `invalid sslmode value: "x"`.
    #[error("invalid {key} value: \"{value}\"")]
    InvalidValue {
        /// The option.
        key: &'static str,
        /// The value as given.
        value: String,
    },
    /// A value that is not an integer.
    #[error("invalid integer value \"{value}\" for connection option \"{key}\"")]
    InvalidInteger {
        /// The option.
        key: &'static str,
        /// The value as given.
        value: String,
    },
    /// A port outside 1..=65535.
    #[error("invalid port number: \"{0}\"")]
    InvalidPort(String),
    /// A `hostaddr` entry that is not a numeric IP address.
    #[error("could not parse network address \"{0}\"")]
    InvalidHostaddr(String),
    /// The port list does not pair with the host list.
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    PortCount {
        /// Ports given.
        ports: usize,
        /// Hosts given.
        hosts: usize,
    },
    /// The host list does not pair with the hostaddr list.
    #[error("could not match {names} host names to {addrs} hostaddr values")]
    HostCount {
        /// Host names given.
        names: usize,
        /// Addresses given.
        addrs: usize,
    },
    /// No `user`, no `PGUSER` and no operating-system user name to fall back to.
    #[error("no user name given and the local user name is unknown")]
    NoUser,
}

/// A password; `Debug` and `Display` print `********`, never the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Password(text.into())
    }

    /// The password text, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

macro_rules! keyword_enum {
    ($(#[$doc:meta])* $name:ident, $key:literal, { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The libpq spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

        }

        impl std::str::FromStr for $name {
            type Err = ConnInfoError;

            fn from_str(value: &str) -> Result<Self, ConnInfoError> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ConnInfoError::InvalidValue { key: $key, value: value.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// `sslmode`: whether TLS is used and how the server certificate is checked.
    SslMode, "sslmode", {
        /// Plain TCP only.
        Disable = "disable",
        /// Plain first, TLS if the server insists.
        Allow = "allow",
        /// TLS if the server offers it (the default).
        Prefer = "prefer",
        /// TLS or fail; the chain is checked only if a root certificate file exists.
        Require = "require",
        /// TLS with the chain checked against the root certificates.
        VerifyCa = "verify-ca",
        /// TLS with the chain and the host name checked.
        VerifyFull = "verify-full",
    }
);

keyword_enum!(
    /// `channel_binding`: whether SCRAM must bind to the TLS channel.
    ChannelBindingMode, "channel_binding", {
        /// Never use channel binding.
        Disable = "disable",
        /// Use it when the server offers it over TLS (the default).
        Prefer = "prefer",
        /// Fail unless the exchange is channel-bound.
        Require = "require",
    }
);

keyword_enum!(
    /// `target_session_attrs`: which kind of server is acceptable.
    TargetSessionAttrs, "target_session_attrs", {
        /// Any server (the default).
        Any = "any",
        /// A server that accepts writes.
        ReadWrite = "read-write",
        /// A server in read-only mode.
        ReadOnly = "read-only",
        /// A server not in hot standby.
        Primary = "primary",
        /// A server in hot standby.
        Standby = "standby",
        /// A standby if there is one, else any server.
        PreferStandby = "prefer-standby",
    }
);

keyword_enum!(
    /// `load_balance_hosts`: the order the hosts are tried in.
    LoadBalanceHosts, "load_balance_hosts", {
        /// As listed (the default).
        Disable = "disable",
        /// In a random order, drawn again for every connection attempt.
        Random = "random",
    }
);

/// Where one `host` entry points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name or a literal IP address.
    Name(String),
    /// A Unix socket directory (the entry starts with `/`); the service decides what to do.
    UnixSocket(PathBuf),
}

/// One server to try: a `host` entry, a `hostaddr` entry and a port, as libpq pairs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The host entry; `None` when only `hostaddr` was given for this slot.
    pub host: Option<Host>,
    /// The numeric address to connect to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    /// The TCP port (or socket file suffix).
    pub port: u16,
}

impl Endpoint {
    /// The host key libpq uses for `.pgpass` lookups: `host` if given, else `hostaddr`.
    pub fn pgpass_host(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Some(Host::Name(name)), _) => name.clone(),
            (Some(Host::UnixSocket(dir)), _) => dir.display().to_string(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "localhost".to_owned(),
        }
    }
}

/// TCP keepalive settings (`keepalives`, `keepalives_idle`, `_interval`, `_count`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalives {
    /// Whether keepalives are on (libpq default: on).
    pub enabled: bool,
    /// Seconds of idleness before the first probe.
    pub idle: Option<u32>,
    /// Seconds between probes.
    pub interval: Option<u32>,
    /// Probes lost before the connection is dead.
    pub count: Option<u32>,
}

/// A snapshot of what libpq reads from the process environment, so parsing stays pure.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    os_user: Option<String>,
    home: Option<PathBuf>,
}

impl Env {
    /// Reads every `PG*` variable the parser consults through `lookup`
    /// (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let vars = OPTIONS
            .iter()
            .filter_map(|(_, var)| *var)
            .filter_map(|name| lookup(name).map(|v| (name.to_owned(), v)))
            .collect();
        Env {
            vars,
            ..Env::default()
        }
    }

    /// Sets one variable.
    pub fn with_var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Sets the operating-system user name, the last fallback for `user`.
    pub fn with_os_user(mut self, user: impl Into<String>) -> Self {
        self.os_user = Some(user.into());
        self
    }

    /// Sets the home directory, where `.pgpass` and `.postgresql/` are found.
    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// A parsed connection string with libpq's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    hosts: Vec<Endpoint>,
    /// The role to log in as.
    pub user: String,
    /// The password, if given in the string or `PGPASSWORD` (else `.pgpass` may have one).
    pub password: Option<Password>,
    /// The database name (the user name by default; replication connections ignore it).
    pub dbname: String,
    /// `application_name`, else `PGAPPNAME`, else `fallback_application_name`.
    pub application_name: Option<String>,
    /// `connect_timeout`: `None` waits forever; values below 2 s become 2 s, as in libpq.
    pub connect_timeout: Option<Duration>,
    /// The TLS policy.
    pub sslmode: SslMode,
    /// Root certificates (default `~/.postgresql/root.crt`).
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (default `~/.postgresql/postgresql.crt`).
    pub sslcert: Option<PathBuf>,
    /// Client key (default `~/.postgresql/postgresql.key`).
    pub sslkey: Option<PathBuf>,
    /// The password file (default `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    /// The SCRAM channel-binding policy.
    pub channel_binding: ChannelBindingMode,
    /// Command-line options for the server (`-c name=value …`).
    pub options: Option<String>,
    /// TCP keepalive settings.
    pub keepalives: Keepalives,
    /// Which kind of server is acceptable.
    pub target_session_attrs: TargetSessionAttrs,
    /// The order the hosts are tried in.
    pub load_balance_hosts: LoadBalanceHosts,
}

impl ConnInfo {
    /// Parses a `key=value` string or a `postgresql://` / `postgres://` URI, then fills in the
    /// defaults from `env` as libpq does.
    ///
    /// # Errors
    /// Any [`ConnInfoError`]: syntax, unknown or unsupported options, invalid values.
    pub fn parse(conninfo: &str, env: &Env) -> Result<Self, ConnInfoError> {
        let pairs = if let Some(rest) = strip_uri_prefix(conninfo) {
            parse_uri(rest)?
        } else {
            parse_keyword_value(conninfo)?
        };
        let mut settings = Settings {
            explicit: BTreeMap::new(),
            env,
        };
        for (key, value) in pairs {
            settings.store(&key, value)?;
        }
        settings.resolve()
    }

    /// The servers to try, in order, each with its port.
    pub fn hosts(&self) -> &[Endpoint] {
        &self.hosts
    }
}

impl fmt::Display for ConnInfo {
    /// A connection string for logs: the password is shown as `********`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |part: &dyn Fn(&Endpoint) -> String| {
            self.hosts.iter().map(part).collect::<Vec<_>>().join(",")
        };
        let host = join(&|e| match &e.host {
            Some(Host::Name(name)) => name.clone(),
            Some(Host::UnixSocket(dir)) => dir.display().to_string(),
            None => String::new(),
        });
        let hostaddr = join(&|e| e.hostaddr.map(|a| a.to_string()).unwrap_or_default());
        write!(f, "host={} ", quote(&host))?;
        if self.hosts.iter().any(|e| e.hostaddr.is_some()) {
            write!(f, "hostaddr={} ", quote(&hostaddr))?;
        }
        let port = join(&|e| e.port.to_string());
        write!(f, "port={port} user={} ", quote(&self.user))?;
        if self.password.is_some() {
            f.write_str("password=******** ")?;
        }
        write!(f, "dbname={} ", quote(&self.dbname))?;
        if let Some(name) = &self.application_name {
            write!(f, "application_name={} ", quote(name))?;
        }
        write!(
            f,
            "sslmode={} channel_binding={}",
            self.sslmode, self.channel_binding
        )
    }
}

/// Quotes a value for a `key=value` string when it needs it.
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| is_space(c) || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let escaped: String = value
        .chars()
        .flat_map(|c| match c {
            '\'' | '\\' => vec!['\\', c],
            _ => vec![c],
        })
        .collect();
    format!("'{escaped}'")
}

/// C's `isspace` in the "C" locale, which libpq uses.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn strip_uri_prefix(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// `conninfo_parse`: `key = value` pairs separated by spaces, values optionally single-quoted,
/// a backslash taking the next character literally.
fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut it = s.chars().peekable();
    let skip_spaces = |it: &mut Chars<'_>| while it.next_if(|c| is_space(*c)).is_some() {};
    loop {
        skip_spaces(&mut it);
        if it.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !is_space(*c)) {
            key.push(c);
        }
        skip_spaces(&mut it);
        if it.next_if_eq(&'=').is_none() {
            return Err(ConnInfoError::MissingEquals(key));
        }
        skip_spaces(&mut it);
        let quoted = it.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match it.next() {
                None if quoted => return Err(ConnInfoError::UnterminatedQuote),
                None => break,
                Some('\'') if quoted => break,
                Some(c) if !quoted && is_space(c) => break,
                Some('\\') => value.extend(it.next()),
                Some(c) => value.push(c),
            }
        }
        pairs.push((key, value));
    }
}

/// Splits `s` around the one-byte delimiter at `pos`.
fn cut(s: &str, pos: usize) -> (&str, &str) {
    (s.get(..pos).unwrap_or(""), s.get(pos + 1..).unwrap_or(""))
}

/// Splits `s` before the first of `stops` (the delimiter stays in the second part).
fn until<'a>(s: &'a str, stops: &[char]) -> (&'a str, &'a str) {
    let end = s.find(stops).unwrap_or(s.len());
    (s.get(..end).unwrap_or(s), s.get(end..).unwrap_or(""))
}

/// `conninfo_uri_parse_options`:
/// `[user[:password]@][host][:port][,host[:port]…][/dbname][?key=value&…]`.
fn parse_uri(rest: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut rest = parse_userinfo(rest, &mut pairs)?;
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    loop {
        let (host, after) = match rest.strip_prefix('[') {
            Some(bracketed) => ipv6_netloc(bracketed)?,
            None => until(rest, &[':', '/', '?', ',']),
        };
        hosts.push(host);
        rest = after;
        let (port, after) = match rest.strip_prefix(':') {
            Some(after_colon) => until(after_colon, &['/', '?', ',']),
            None => ("", rest),
        };
        ports.push(port);
        rest = after;
        match rest.strip_prefix(',') {
            Some(after) => rest = after,
            None => break,
        }
    }
    for (key, list) in [("host", hosts.join(",")), ("port", ports.join(","))] {
        if !list.is_empty() {
            pairs.push((key.to_owned(), percent_decode(&list, false)?));
        }
    }
    let query = match rest.strip_prefix('/') {
        Some(path) => {
            let (dbname, query) = path.split_once('?').unwrap_or((path, ""));
            if !dbname.is_empty() {
                pairs.push(("dbname".to_owned(), percent_decode(dbname, false)?));
            }
            query
        }
        None => rest.strip_prefix('?').unwrap_or(""),
    };
    parse_uri_query(query, &mut pairs)?;
    Ok(pairs)
}

/// `user[:password]@`, if there is an `@` before the first `/`; returns what follows.
fn parse_userinfo<'a>(
    uri: &'a str,
    pairs: &mut Vec<(String, String)>,
) -> Result<&'a str, ConnInfoError> {
    let Some(pos) = uri
        .find(['@', '/'])
        .filter(|&p| uri.get(p..=p) == Some("@"))
    else {
        return Ok(uri);
    };
    let (userinfo, after) = cut(uri, pos);
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    if !user.is_empty() {
        pairs.push(("user".to_owned(), percent_decode(user, false)?));
    }
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        pairs.push(("password".to_owned(), percent_decode(password, true)?));
    }
    Ok(after)
}

/// After `[`: the address up to `]`, then what follows it, which must start a port, a path,
/// a query or the next host.
fn ipv6_netloc(s: &str) -> Result<(&str, &str), ConnInfoError> {
    let (addr, after) = s
        .split_once(']')
        .ok_or(ConnInfoError::UriIpv6("no matching \"]\""))?;
    if addr.is_empty() {
        return Err(ConnInfoError::UriIpv6("the address is empty"));
    }
    if !after.is_empty() && !after.starts_with([':', '/', '?', ',']) {
        return Err(ConnInfoError::UriIpv6(
            "expected \":\" or \"/\" after \"]\"",
        ));
    }
    Ok((addr, after))
}

/// `conninfo_uri_parse_params`: `key=value` pairs separated by `&`.
fn parse_uri_query(query: &str, pairs: &mut Vec<(String, String)>) -> Result<(), ConnInfoError> {
    if query.is_empty() {
        return Ok(());
    }
    for param in query.strip_suffix('&').unwrap_or(query).split('&') {
        let separator = |problem, param: &str| ConnInfoError::UriSeparator {
            problem,
            param: param.to_owned(),
        };
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| separator("missing", param))?;
        let secret = key == "password";
        if value.contains('=') {
            return Err(separator(
                "extra",
                if secret { "password=********" } else { param },
            ));
        }
        let key = percent_decode(key, false)?;
        let value = percent_decode(value, secret || key == "password")?;
        match (key.as_str(), value.as_str()) {
            ("ssl", "true") => pairs.push(("sslmode".to_owned(), "require".to_owned())),
            (k, _) if is_known_option(k) => pairs.push((key, value)),
            _ => return Err(ConnInfoError::InvalidUriParameter(key)),
        }
    }
    Ok(())
}

/// Whether libpq knows `key` (whether or not the relay acts on it).
fn is_known_option(key: &str) -> bool {
    OPTIONS.iter().any(|(name, _)| *name == key)
        || IGNORED_OPTIONS.contains(&key)
        || UNSUPPORTED_OPTIONS.contains(&key)
        || key == "requiressl"
}

/// `conninfo_uri_decode`. With `secret`, errors show `********` instead of the text.
fn percent_decode(s: &str, secret: bool) -> Result<String, ConnInfoError> {
    let shown = || {
        if secret {
            "********".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |b: Option<u8>| b.and_then(|b| char::from(b).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.next()), hex(bytes.next())) else {
            return Err(ConnInfoError::PercentEncoding(shown()));
        };
        let byte =
            u8::try_from(hi * 16 + lo).map_err(|_| ConnInfoError::PercentEncoding(shown()))?;
        if byte == 0 {
            return Err(ConnInfoError::PercentNul(shown()));
        }
        out.push(byte);
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::PercentEncoding(shown()))
}

/// The options as given, then the environment: `conninfo_add_defaults` and
/// `pqConnectOptions2`.
struct Settings<'a> {
    explicit: BTreeMap<&'static str, String>,
    env: &'a Env,
}

impl Settings<'_> {
    /// `conninfo_storeval`: later values override earlier ones.
    fn store(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        if key == "requiressl" {
            let mode = if value.starts_with('1') {
                "require"
            } else {
                "prefer"
            };
            self.explicit.insert("sslmode", mode.to_owned());
        } else if let Some((name, _)) = OPTIONS.iter().find(|(name, _)| *name == key) {
            self.explicit.insert(name, value);
        } else if let Some(name) = UNSUPPORTED_OPTIONS.iter().find(|name| **name == key) {
            if !value.is_empty() {
                return Err(ConnInfoError::Unsupported((*name).to_owned()));
            }
        } else if !IGNORED_OPTIONS.contains(&key) {
            return Err(ConnInfoError::InvalidOption(key.to_owned()));
        }
        Ok(())
    }

    /// The explicit value (even empty), else the environment variable.
    fn raw(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.explicit.get(key) {
            return Some(value);
        }
        let (_, var) = OPTIONS.iter().find(|(name, _)| *name == key)?;
        self.env.var((*var)?)
    }

    /// A non-empty value: libpq treats an empty one as unset.
    fn text(&self, key: &str) -> Option<String> {
        self.raw(key).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    fn int(&self, key: &'static str) -> Result<Option<i32>, ConnInfoError> {
        let Some(value) = self.text(key) else {
            return Ok(None);
        };
        let parsed = value.trim_matches(is_space).parse();
        parsed
            .map(Some)
            .map_err(|_| ConnInfoError::InvalidInteger { key, value })
    }

    fn uint(&self, key: &'static str) -> Result<Option<u32>, ConnInfoError> {
        let Some(v) = self.int(key)? else {
            return Ok(None);
        };
        let value = v.to_string();
        u32::try_from(v)
            .map(Some)
            .map_err(|_| ConnInfoError::InvalidInteger { key, value })
    }

    /// An explicit path, else `~/<default>`.
    fn path(&self, key: &str, default: &str) -> Option<PathBuf> {
        let home_default = || self.env.home.as_ref().map(|home| home.join(default));
        self.text(key).map(PathBuf::from).or_else(home_default)
    }

    fn resolve(&self) -> Result<ConnInfo, ConnInfoError> {
        let user = self
            .text("user")
            .or_else(|| self.env.os_user.clone())
            .ok_or(ConnInfoError::NoUser)?;
        let timeout = self.int("connect_timeout")?.filter(|&t| t > 0);
        Ok(ConnInfo {
            hosts: self.endpoints()?,
            password: self.text("password").map(Password),
            dbname: self.text("dbname").unwrap_or_else(|| user.clone()),
            user,
            application_name: self
                .text("application_name")
                .or_else(|| self.text("fallback_application_name")),
            connect_timeout: timeout.map(|t| Duration::from_secs(t.max(2).unsigned_abs().into())),
            sslmode: self.raw("sslmode").unwrap_or("prefer").parse()?,
            sslrootcert: self.path("sslrootcert", ".postgresql/root.crt"),
            sslcert: self.path("sslcert", ".postgresql/postgresql.crt"),
            sslkey: self.path("sslkey", ".postgresql/postgresql.key"),
            passfile: self.path("passfile", ".pgpass"),
            channel_binding: self.raw("channel_binding").unwrap_or("prefer").parse()?,
            options: self.text("options"),
            keepalives: Keepalives {
                enabled: self.int("keepalives")?.is_none_or(|k| k != 0),
                idle: self.uint("keepalives_idle")?,
                interval: self.uint("keepalives_interval")?,
                count: self.uint("keepalives_count")?,
            },
            target_session_attrs: self.raw("target_session_attrs").unwrap_or("any").parse()?,
            load_balance_hosts: self
                .raw("load_balance_hosts")
                .unwrap_or("disable")
                .parse()?,
        })
    }

    /// Pairs the comma-separated `host`, `hostaddr` and `port` lists as `pqConnectOptions2`
    /// does: the slot count comes from `hostaddr` if given, else `host`; one port serves all.
    fn endpoints(&self) -> Result<Vec<Endpoint>, ConnInfoError> {
        let list = |key| {
            self.text(key)
                .map(|v| v.split(',').map(str::to_owned).collect())
        };
        let hosts: Option<Vec<String>> = list("host");
        let addrs: Option<Vec<String>> = list("hostaddr");
        let ports: Vec<String> = list("port").unwrap_or_default();
        let count = addrs.as_ref().or(hosts.as_ref()).map_or(1, Vec::len);
        if let (Some(hosts), Some(addrs)) = (&hosts, &addrs)
            && hosts.len() != addrs.len()
        {
            let (names, addrs) = (hosts.len(), addrs.len());
            return Err(ConnInfoError::HostCount { names, addrs });
        }
        if ports.len() > 1 && ports.len() != count {
            return Err(ConnInfoError::PortCount {
                ports: ports.len(),
                hosts: count,
            });
        }
        (0..count)
            .map(|i| {
                let at = |list: &Option<Vec<String>>| {
                    list.as_ref()
                        .and_then(|l| l.get(i))
                        .filter(|v| !v.is_empty())
                        .cloned()
                };
                let port = ports.get(i).or(ports.first()).map_or("", String::as_str);
                endpoint(at(&hosts), at(&addrs), port)
            })
            .collect()
    }
}

fn endpoint(
    host: Option<String>,
    addr: Option<String>,
    port: &str,
) -> Result<Endpoint, ConnInfoError> {
    let hostaddr = addr
        .map(|a| a.parse().map_err(|_| ConnInfoError::InvalidHostaddr(a)))
        .transpose()?;
    let host = match host {
        Some(h) if h.starts_with('/') => Some(Host::UnixSocket(PathBuf::from(h))),
        Some(h) => Some(Host::Name(h)),
        None if hostaddr.is_some() => None,
        None => Some(Host::Name("localhost".to_owned())),
    };
    let port = if port.is_empty() {
        DEFAULT_PORT
    } else {
        port.trim_matches(is_space)
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| ConnInfoError::InvalidPort(port.to_owned()))?
    };
    Ok(Endpoint {
        host,
        hostaddr,
        port,
    })
}

#[cfg(test)]
mod tests;
