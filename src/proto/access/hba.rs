//! `pg_hba.conf` rules: parsing, and the first rule that matches a connection.
//!
//! This mirrors PostgreSQL 15's `parse_hba_line`, `parse_hba_auth_opt` and `check_hba` with
//! `check_db` and `check_role` (`hba.c`), error texts included. A line is `TYPE DATABASE USER
//! [ADDRESS [MASK]] METHOD [OPTION=VALUE ...]`; the first rule whose type, address, database
//! and user match the connection decides its method, and when none matches the connection is
//! refused.
//!
//! - Types: `local`, `host`, `hostssl`, `hostnossl`; `hostgssenc` and `hostnogssenc` are
//!   read as a PostgreSQL built without GSSAPI reads them: the relay never encrypts with
//!   GSSAPI, so `hostgssenc` never matches and `hostnogssenc` matches every TCP connection.
//! - Databases: `all`, `replication`, `sameuser`, `samerole` (`samegroup`) and names. A
//!   physical replication connection matches only the keyword `replication`, never `all`
//!   nor a name, as in PostgreSQL. `samerole` never matches: the relay has no roles.
//! - Users: `all` and names. `+group` is refused (the relay has no roles, and a rule that
//!   never matched could let a later rule grant more).
//! - Addresses: see [`HbaAddress`]; host names are refused.
//! - Methods: `trust`, `reject`, `scram-sha-256`, `md5`, `password`, `cert` (on `hostssl`
//!   lines only); the others PostgreSQL knows are refused as not supported by walrelay.
//! - Options: `clientcert=verify-ca|verify-full` and `clientname=CN` on `hostssl` lines,
//!   `map=NAME` with `cert`. PostgreSQL's options of other methods get PostgreSQL's error.
//! - Regular expressions (`/…`, PostgreSQL 16) in the database and user columns are refused.

use std::net::IpAddr;

use super::HbaError;
use super::address::{HbaAddress, LocalNetwork, parse_address};
use super::token::{self, Line, Token};

#[cfg(test)]
mod tests;

/// A rule's connection type (its first column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    /// `local`: Unix-domain sockets.
    Local,
    /// `host`: TCP, with or without TLS.
    Host,
    /// `hostssl`: TCP with TLS.
    HostSsl,
    /// `hostnossl`: TCP without TLS.
    HostNoSsl,
    /// `hostgssenc`: TCP with GSSAPI encryption, which the relay never has: never matches.
    HostGssEnc,
    /// `hostnogssenc`: TCP without GSSAPI encryption, which is every TCP connection.
    HostNoGssEnc,
}

impl ConnType {
    /// The keyword as written in the file.
    pub fn keyword(self) -> &'static str {
        match self {
            ConnType::Local => "local",
            ConnType::Host => "host",
            ConnType::HostSsl => "hostssl",
            ConnType::HostNoSsl => "hostnossl",
            ConnType::HostGssEnc => "hostgssenc",
            ConnType::HostNoGssEnc => "hostnogssenc",
        }
    }
}

/// One entry of the database column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseSpec {
    /// `all`: every database, but not physical replication.
    All,
    /// `replication`: physical replication connections, and only them.
    Replication,
    /// `sameuser`: the database named as the user.
    SameUser,
    /// `samerole` or `samegroup`: a database named as a role the user is a member of; never
    /// matches, as the relay has no roles.
    SameRole,
    /// A database name (a quoted keyword is a name too).
    Name(String),
}

/// One entry of the user column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    /// `all`: every user.
    All,
    /// A user name, matched exactly (a quoted `"all"` is a user named all).
    Name(String),
}

/// The authentication methods the relay supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `trust`: no authentication.
    Trust,
    /// `reject`: refuse the connection.
    Reject,
    /// `scram-sha-256`.
    ScramSha256,
    /// `md5` (which also accepts SCRAM when the stored secret is a SCRAM one).
    Md5,
    /// `password`: the password in clear text.
    Password,
    /// `cert`: the TLS client certificate's CN names the user (through `map=` if given).
    Cert,
}

impl AuthMethod {
    /// The method's name as written in the file (`hba_authname`).
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Reject => "reject",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::Cert => "cert",
        }
    }
}

/// How a client certificate is checked (`clientcert=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertMode {
    /// `verify-ca`: a certificate signed by a trusted CA is required.
    VerifyCa,
    /// `verify-full`: also its CN must match the user (through the map, if any).
    VerifyFull,
}

impl ClientCertMode {
    /// The value as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            ClientCertMode::VerifyCa => "verify-ca",
            ClientCertMode::VerifyFull => "verify-full",
        }
    }
}

/// How a client reached the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A Unix-domain socket.
    Local,
    /// TCP from `addr`, with TLS or not.
    Host {
        /// The client's address.
        addr: IpAddr,
        /// Whether the connection uses TLS.
        ssl: bool,
    },
}

/// A connection to match against the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HbaRequest<'a> {
    /// How the client connected.
    pub transport: Transport,
    /// The user name from the startup packet.
    pub user: &'a str,
    /// Whether this is a physical replication connection (always, for the relay's clients):
    /// then only the database keyword `replication` matches.
    pub replication: bool,
    /// The database from the startup packet; only consulted when `replication` is false.
    pub database: &'a str,
    /// The machine's addresses and prefixes, for `samehost` and `samenet`.
    pub local_networks: &'a [LocalNetwork],
}

/// One parsed `pg_hba.conf` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    file: String,
    line: usize,
    raw: String,
    conn_type: ConnType,
    databases: Vec<DatabaseSpec>,
    users: Vec<UserSpec>,
    address: Option<HbaAddress>,
    method: AuthMethod,
    clientcert: Option<ClientCertMode>,
    map: Option<String>,
}

impl HbaRule {
    /// The file the rule is in (the parsed file, or an included one).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The rule's line number in its file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The line as written (continuations joined), for logs.
    pub fn raw_line(&self) -> &str {
        &self.raw
    }

    /// The connection type.
    pub fn conn_type(&self) -> ConnType {
        self.conn_type
    }

    /// The database column.
    pub fn databases(&self) -> &[DatabaseSpec] {
        &self.databases
    }

    /// The user column.
    pub fn users(&self) -> &[UserSpec] {
        &self.users
    }

    /// The address column; `None` for `local` rules.
    pub fn address(&self) -> Option<&HbaAddress> {
        self.address.as_ref()
    }

    /// The authentication method.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// The client certificate check: `clientcert=`, or `verify-full` for `cert`; `None` when
    /// no certificate is required.
    pub fn clientcert(&self) -> Option<ClientCertMode> {
        self.clientcert
    }

    /// The `map=` user-name map of a `cert` rule (an empty value counts as none).
    pub fn map(&self) -> Option<&str> {
        self.map.as_deref()
    }

    /// Where the rule is and what it says, as PostgreSQL 16 logs it after "Connection matched
    /// ": `file "/etc/pg_hba.conf" line 3: "host replication all 10.0.0.0/8 trust"`.
    pub fn describe(&self) -> String {
        format!(
            "file \"{}\" line {}: \"{}\"",
            self.file, self.line, self.raw
        )
    }

    /// Whether the rule applies to `req` (one step of `check_hba`).
    pub fn matches(&self, req: &HbaRequest<'_>) -> bool {
        let transport_ok = match req.transport {
            Transport::Local => self.conn_type == ConnType::Local,
            Transport::Host { addr, ssl } => {
                let type_ok = match self.conn_type {
                    ConnType::Host | ConnType::HostNoGssEnc => true,
                    ConnType::HostSsl => ssl,
                    ConnType::HostNoSsl => !ssl,
                    ConnType::Local | ConnType::HostGssEnc => false,
                };
                type_ok
                    && self
                        .address
                        .is_some_and(|a| a.matches(addr, req.local_networks))
            }
        };
        transport_ok && self.database_matches(req) && self.user_matches(req.user)
    }

    /// `check_db`.
    fn database_matches(&self, req: &HbaRequest<'_>) -> bool {
        self.databases.iter().any(|db| match db {
            _ if req.replication => *db == DatabaseSpec::Replication,
            DatabaseSpec::All => true,
            DatabaseSpec::SameUser => req.database == req.user,
            DatabaseSpec::SameRole | DatabaseSpec::Replication => false,
            DatabaseSpec::Name(name) => name == req.database,
        })
    }

    /// `check_role`, without group roles.
    fn user_matches(&self, user: &str) -> bool {
        self.users.iter().any(|u| match u {
            UserSpec::All => true,
            UserSpec::Name(name) => name == user,
        })
    }
}

/// A parsed `pg_hba.conf`: its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaFile {
    rules: Vec<HbaRule>,
}

impl HbaFile {
    /// Parses the text of `pg_hba.conf`; `file` is its path, for error messages and for
    /// resolving relative include paths.
    ///
    /// `include` is called with the path of each file an `include` or `include_if_exists`
    /// record names (relative paths already resolved against the including file's directory)
    /// and returns its text; `Err(String::new())` means the file does not exist (skipped by
    /// `include_if_exists`), any other `Err` is the reason it could not be read.
    ///
    /// # Errors
    /// The first line PostgreSQL 15 would refuse or that uses what the relay does not support,
    /// or a file without rules: see [`HbaError`].
    pub fn parse(
        text: &str,
        file: &str,
        include: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<HbaFile, HbaError> {
        let lines = token::tokenize(text, file, include)?;
        let rules = lines
            .iter()
            .map(parse_line)
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            return Err(HbaError::new(
                file,
                0,
                format!("configuration file \"{file}\" contains no entries"),
            ));
        }
        Ok(HbaFile { rules })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }

    /// The first rule that matches `req`, or `None`: then the connection is refused.
    pub fn matching(&self, req: &HbaRequest<'_>) -> Option<&HbaRule> {
        self.rules.iter().find(|rule| rule.matches(req))
    }
}

/// Methods PostgreSQL knows that the relay does not implement.
const UNSUPPORTED_METHODS: &[&str] = &[
    "ident", "peer", "gss", "sspi", "pam", "bsd", "ldap", "radius",
];

/// PostgreSQL's options of methods the relay does not implement, with the methods
/// `parse_hba_auth_opt` names when they are used with another.
const OTHER_METHODS_OPTIONS: &[(&str, &str)] = &[
    ("pamservice", "pam"),
    ("pam_use_hostname", "pam"),
    ("ldapurl", "ldap"),
    ("ldaptls", "ldap"),
    ("ldapscheme", "ldap"),
    ("ldapserver", "ldap"),
    ("ldapport", "ldap"),
    ("ldapbinddn", "ldap"),
    ("ldapbindpasswd", "ldap"),
    ("ldapsearchattribute", "ldap"),
    ("ldapsearchfilter", "ldap"),
    ("ldapbasedn", "ldap"),
    ("ldapprefix", "ldap"),
    ("ldapsuffix", "ldap"),
    ("krb_realm", "gssapi and sspi"),
    ("include_realm", "gssapi and sspi"),
    ("compat_realm", "sspi"),
    ("upn_username", "sspi"),
    ("radiusservers", "radius"),
    ("radiusports", "radius"),
    ("radiussecrets", "radius"),
    ("radiusidentifiers", "radius"),
];

/// `parse_hba_line`.
fn parse_line(line: &Line) -> Result<HbaRule, HbaError> {
    let mut fields = line.fields.iter();
    let conn_type = match fields.next().map(Vec::as_slice) {
        Some([token]) => conn_type(line, token)?,
        _ => return Err(line.error("multiple values specified for connection type")),
    };
    let Some(databases) = fields.next() else {
        return Err(line.error("end-of-line before database specification"));
    };
    let databases = databases
        .iter()
        .map(|t| database(line, t))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(users) = fields.next() else {
        return Err(line.error("end-of-line before role specification"));
    };
    let users = users
        .iter()
        .map(|t| user(line, t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut next = 3;
    let address = match conn_type {
        ConnType::Local => None,
        _ => Some(parse_address(line, &mut next)?),
    };
    let Some(tokens) = line.fields.get(next) else {
        return Err(line.error("end-of-line before authentication method"));
    };
    let token = line.single(tokens, "multiple values specified for authentication type")?;
    let method = method(line, token)?;
    if method == AuthMethod::Cert && conn_type != ConnType::HostSsl {
        return Err(line.error("cert authentication is only supported on hostssl connections"));
    }
    let mut rule = HbaRule {
        file: line.file.clone(),
        line: line.number,
        raw: line.raw.clone(),
        conn_type,
        databases,
        users,
        address,
        method,
        clientcert: None,
        map: None,
    };
    for token in line.fields.iter().skip(next + 1).flatten() {
        let Some((name, value)) = token.text.split_once('=') else {
            return Err(line.error(format!(
                "authentication option not in name=value format: {}",
                token.text
            )));
        };
        option(line, &mut rule, name, value)?;
    }
    if rule.method == AuthMethod::Cert {
        rule.clientcert = Some(ClientCertMode::VerifyFull);
    }
    Ok(rule)
}

fn conn_type(line: &Line, token: &Token) -> Result<ConnType, HbaError> {
    Ok(match token.text.as_str() {
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "hostgssenc" => ConnType::HostGssEnc,
        "hostnogssenc" => ConnType::HostNoGssEnc,
        other => {
            return Err(line.error(format!("invalid connection type \"{other}\"")));
        }
    })
}

fn database(line: &Line, token: &Token) -> Result<DatabaseSpec, HbaError> {
    Ok(if token.is_keyword("all") {
        DatabaseSpec::All
    } else if token.is_keyword("replication") {
        DatabaseSpec::Replication
    } else if token.is_keyword("sameuser") {
        DatabaseSpec::SameUser
    } else if token.is_keyword("samerole") || token.is_keyword("samegroup") {
        DatabaseSpec::SameRole
    } else {
        DatabaseSpec::Name(not_regex(line, token)?)
    })
}

fn user(line: &Line, token: &Token) -> Result<UserSpec, HbaError> {
    if !token.quoted && token.text.starts_with('+') {
        return Err(line.error(format!(
            "group membership \"{}\" is not supported by walrelay, which has no roles",
            token.text
        )));
    }
    Ok(if token.is_keyword("all") {
        UserSpec::All
    } else {
        UserSpec::Name(not_regex(line, token)?)
    })
}

/// The token's text, unless PostgreSQL 16 would read it as a regular expression.
fn not_regex(line: &Line, token: &Token) -> Result<String, HbaError> {
    if token.text.starts_with('/') {
        return Err(line.error(format!(
            "regular expression \"{}\" is not supported by walrelay",
            token.text
        )));
    }
    Ok(token.text.clone())
}

fn method(line: &Line, token: &Token) -> Result<AuthMethod, HbaError> {
    Ok(match token.text.as_str() {
        "trust" => AuthMethod::Trust,
        "reject" => AuthMethod::Reject,
        "scram-sha-256" => AuthMethod::ScramSha256,
        "md5" => AuthMethod::Md5,
        "password" => AuthMethod::Password,
        "cert" => AuthMethod::Cert,
        other if UNSUPPORTED_METHODS.contains(&other) => {
            return Err(line.error(format!(
                "invalid authentication method \"{other}\": not supported by walrelay"
            )));
        }
        other => {
            return Err(line.error(format!("invalid authentication method \"{other}\"")));
        }
    })
}

/// `parse_hba_auth_opt`.
fn option(line: &Line, rule: &mut HbaRule, name: &str, value: &str) -> Result<(), HbaError> {
    let hostssl = rule.conn_type == ConnType::HostSsl;
    match name {
        "map" => {
            if rule.method != AuthMethod::Cert {
                return Err(invalid_option(
                    line,
                    "map",
                    "ident, peer, gssapi, sspi, and cert",
                ));
            }
            rule.map = (!value.is_empty()).then(|| value.to_owned());
        }
        "clientcert" => {
            if !hostssl {
                return Err(line.error("clientcert can only be configured for \"hostssl\" rows"));
            }
            rule.clientcert = Some(match value {
                "verify-full" => ClientCertMode::VerifyFull,
                "verify-ca" if rule.method == AuthMethod::Cert => {
                    return Err(line.error(
                        "clientcert only accepts \"verify-full\" when using \"cert\" authentication",
                    ));
                }
                "verify-ca" => ClientCertMode::VerifyCa,
                _ => {
                    return Err(line.error(format!("invalid value for clientcert: \"{value}\"")));
                }
            });
        }
        "clientname" => {
            if !hostssl {
                return Err(line.error("clientname can only be configured for \"hostssl\" rows"));
            }
            match value {
                "CN" => {}
                "DN" => {
                    return Err(line.error(
                        "clientname=DN is not supported by walrelay: it matches the certificate's CN",
                    ));
                }
                _ => {
                    return Err(line.error(format!("invalid value for clientname: \"{value}\"")));
                }
            }
        }
        _ => {
            return Err(
                match OTHER_METHODS_OPTIONS.iter().find(|(n, _)| *n == name) {
                    Some((_, methods)) => invalid_option(line, name, methods),
                    None => line.error(format!(
                        "unrecognized authentication option name: \"{name}\""
                    )),
                },
            );
        }
    }
    Ok(())
}

/// `INVALID_AUTH_OPTION`.
fn invalid_option(line: &Line, name: &str, methods: &str) -> HbaError {
    line.error(format!(
        "authentication option \"{name}\" is only valid for authentication methods {methods}"
    ))
}
