//! Tests of the parent module.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use super::*;

const FILE: &str = "/etc/pg_hba.conf";

fn no_files(_: &str) -> Result<String, String> {
    Err(String::new())
}

fn parse(text: &str) -> HbaFile {
    HbaFile::parse(text, FILE, &mut no_files).unwrap()
}

/// The error's line and message.
fn err(text: &str) -> (usize, String) {
    let e = HbaFile::parse(text, FILE, &mut no_files).unwrap_err();
    assert_eq!(e.file, FILE);
    (e.line, e.message)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(addr: &str, ssl: bool) -> Transport {
    Transport::Host {
        addr: ip(addr),
        ssl,
    }
}

fn repl<'a>(transport: Transport, user: &'a str) -> HbaRequest<'a> {
    HbaRequest {
        transport,
        user,
        replication: true,
        database: "",
        local_networks: &[],
    }
}

fn sql<'a>(transport: Transport, user: &'a str, database: &'a str) -> HbaRequest<'a> {
    HbaRequest {
        replication: false,
        database,
        ..repl(transport, user)
    }
}

/// The line of the rule that matches, if any.
fn line(hba: &HbaFile, req: &HbaRequest<'_>) -> Option<usize> {
    hba.matching(req).map(HbaRule::line)
}

#[test]
fn a_typical_file() {
    let hba = parse(
        "# TYPE  DATABASE     USER        ADDRESS          METHOD\n\
         local   replication  all                          trust\n\
         host    replication  replicator  127.0.0.1/32     trust\n\
         host    replication  replicator  ::1/128          trust\n\
         hostssl replication  replicator  10.0.0.0/8       scram-sha-256\n\
         host    all          all         0.0.0.0/0        reject\n",
    );
    assert_eq!(hba.rules().len(), 5);
    assert_eq!(line(&hba, &repl(Transport::Local, "anyone")), Some(2));
    assert_eq!(
        line(&hba, &repl(tcp("127.0.0.1", false), "replicator")),
        Some(3)
    );
    assert_eq!(
        line(&hba, &repl(tcp("::ffff:127.0.0.1", false), "replicator")),
        Some(3)
    );
    assert_eq!(line(&hba, &repl(tcp("::1", true), "replicator")), Some(4));
    assert_eq!(
        line(&hba, &repl(tcp("10.2.3.4", true), "replicator")),
        Some(5)
    );
    // Without TLS, or as another user, nothing matches: `all` is not `replication`.
    assert_eq!(
        line(&hba, &repl(tcp("10.2.3.4", false), "replicator")),
        None
    );
    assert_eq!(line(&hba, &repl(tcp("10.2.3.4", true), "postgres")), None);
    assert_eq!(
        line(&hba, &sql(tcp("10.2.3.4", true), "postgres", "app")),
        Some(6)
    );
}

#[test]
fn connection_types() {
    let hba = parse(
        "local        replication all                trust\n\
         hostssl      replication ssl   0.0.0.0/0    trust\n\
         hostnossl    replication plain 0.0.0.0/0    trust\n\
         hostgssenc   replication all   0.0.0.0/0    trust\n\
         hostnogssenc replication gss   0.0.0.0/0    trust\n\
         host         replication all   0.0.0.0/0    reject\n",
    );
    let kinds: Vec<_> = hba
        .rules()
        .iter()
        .map(|r| r.conn_type().keyword())
        .collect();
    assert_eq!(
        kinds,
        [
            "local",
            "hostssl",
            "hostnossl",
            "hostgssenc",
            "hostnogssenc",
            "host"
        ]
    );
    assert_eq!(line(&hba, &repl(Transport::Local, "x")), Some(1));
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", true), "ssl")), Some(2));
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", false), "ssl")), Some(6));
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", false), "plain")), Some(3));
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", true), "plain")), Some(6));
    // hostgssenc never matches; hostnogssenc matches with TLS or without.
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", true), "x")), Some(6));
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", true), "gss")), Some(5));
    assert_eq!(line(&hba, &repl(tcp("10.0.0.1", false), "gss")), Some(5));
    // A local rule never matches TCP, and a host rule never a socket.
    let local_only = parse("local replication all trust");
    assert_eq!(line(&local_only, &repl(tcp("127.0.0.1", false), "x")), None);
    let host_only = parse("host replication all all trust");
    assert_eq!(line(&host_only, &repl(Transport::Local, "x")), None);
    assert_eq!(host_only.rules()[0].address(), Some(&HbaAddress::All));
    assert_eq!(local_only.rules()[0].address(), None);
    // The type is compared as text, quoted or not, as in PostgreSQL.
    assert_eq!(
        parse("\"local\" replication all trust").rules()[0].conn_type(),
        ConnType::Local
    );
}

#[test]
fn replication_matches_only_the_replication_keyword() {
    let hba = parse(
        "host all         all 0.0.0.0/0 reject\n\
         host replication,\"replication\" all 10.0.0.0/8 reject\n\
         host \"replication\" all 0.0.0.0/0 reject\n\
         host sameuser,samerole,samegroup,postgres all 0.0.0.0/0 reject\n\
         host db1,replication all 0.0.0.0/0 trust\n",
    );
    assert_eq!(
        hba.rules()[1].databases(),
        [
            DatabaseSpec::Replication,
            DatabaseSpec::Name("replication".into())
        ]
    );
    assert_eq!(line(&hba, &repl(tcp("10.1.1.1", false), "u")), Some(2));
    assert_eq!(line(&hba, &repl(tcp("192.0.2.1", false), "u")), Some(5));
    // A database connection matches `all`, names and sameuser, never `replication`.
    assert_eq!(
        line(&hba, &sql(tcp("10.1.1.1", false), "u", "app")),
        Some(1)
    );
    let no_all = parse(
        "host replication all 0.0.0.0/0 reject\n\
         host samerole all 0.0.0.0/0 reject\n\
         host \"replication\" all 0.0.0.0/0 md5\n\
         host sameuser all 0.0.0.0/0 password\n\
         host db1 all 0.0.0.0/0 trust\n",
    );
    let at = tcp("192.0.2.1", false);
    assert_eq!(line(&no_all, &sql(at, "u", "replication")), Some(3));
    assert_eq!(line(&no_all, &sql(at, "alice", "alice")), Some(4));
    assert_eq!(line(&no_all, &sql(at, "alice", "db1")), Some(5));
    assert_eq!(line(&no_all, &sql(at, "alice", "db2")), None);
    assert_eq!(line(&no_all, &repl(at, "alice")), Some(1));
}

#[test]
fn users_names_lists_and_quoting() {
    let hba = parse(
        "host replication \"all\"                  0.0.0.0/0 md5\n\
         host replication alice,\"Bob Smith\", carol 0.0.0.0/0 scram-sha-256\n\
         host replication all                    0.0.0.0/0 reject\n",
    );
    assert_eq!(hba.rules()[0].users(), [UserSpec::Name("all".into())]);
    assert_eq!(
        hba.rules()[1].users(),
        [
            UserSpec::Name("alice".into()),
            UserSpec::Name("Bob Smith".into()),
            UserSpec::Name("carol".into())
        ]
    );
    let at = tcp("192.0.2.1", false);
    assert_eq!(line(&hba, &repl(at, "all")), Some(1));
    assert_eq!(line(&hba, &repl(at, "alice")), Some(2));
    assert_eq!(line(&hba, &repl(at, "Bob Smith")), Some(2));
    assert_eq!(line(&hba, &repl(at, "carol")), Some(2));
    // Names are case-sensitive.
    assert_eq!(line(&hba, &repl(at, "Alice")), Some(3));
    assert_eq!(line(&hba, &repl(at, "bob smith")), Some(3));
    // A quoted "+x" is a name.
    let plus = parse("host replication \"+x\" all trust");
    assert_eq!(line(&plus, &repl(at, "+x")), Some(1));
}

#[test]
fn address_forms() {
    let hba = parse(
        "host replication a 10.0.0.0/8       trust\n\
         host replication a 192.168.1.0 255.255.255.0 trust\n\
         host replication a ::1/128          trust\n\
         host replication a fe80::/10        trust\n\
         host replication a 2001:db8:: ffff:ffff:: trust\n\
         host replication a 172.16.0.1/32    trust\n\
         host replication a samehost         trust\n\
         host replication a samenet          trust\n",
    );
    let at = |addr: &str| line(&hba, &repl(tcp(addr, false), "a"));
    assert_eq!(at("10.255.0.1"), Some(1));
    assert_eq!(at("::ffff:10.1.2.3"), Some(1));
    assert_eq!(at("192.168.1.77"), Some(2));
    assert_eq!(at("::ffff:192.168.1.77"), Some(2));
    assert_eq!(at("::1"), Some(3));
    assert_eq!(at("fe80::abcd"), Some(4));
    assert_eq!(at("febf::1"), Some(4));
    assert_eq!(at("2001:db8:0:1::5"), Some(5));
    assert_eq!(at("172.16.0.1"), Some(6));
    assert_eq!(at("172.16.0.2"), None);
    assert_eq!(at("2001:db9::1"), None);
    let nets = [
        LocalNetwork {
            addr: ip("203.0.113.9"),
            prefix_len: 24,
        },
        LocalNetwork {
            addr: ip("2001:db9:5::1"),
            prefix_len: 48,
        },
    ];
    let with_nets = |addr: &str| {
        let req = HbaRequest {
            local_networks: &nets,
            ..repl(tcp(addr, false), "a")
        };
        line(&hba, &req)
    };
    assert_eq!(with_nets("203.0.113.9"), Some(7));
    assert_eq!(with_nets("::ffff:203.0.113.9"), Some(7));
    assert_eq!(with_nets("203.0.113.200"), Some(8));
    assert_eq!(with_nets("2001:db9:5:77::1"), Some(8));
    assert_eq!(with_nets("203.0.114.1"), None);
    assert_eq!(
        hba.rules()[1].address(),
        Some(&HbaAddress::Range {
            addr: ip("192.168.1.0"),
            mask: ip("255.255.255.0")
        })
    );
    // The method and options come after the mask column.
    let masked = parse("hostssl replication a 10.0.0.0 255.0.0.0 cert map=m");
    assert_eq!(masked.rules()[0].map(), Some("m"));
}

#[test]
fn first_match_wins() {
    let hba = parse(
        "host replication replicator 10.0.0.5/32 reject\n\
         host replication replicator 10.0.0.0/8  scram-sha-256\n\
         host replication all        0.0.0.0/0   md5\n\
         host replication replicator 0.0.0.0/0   trust\n",
    );
    let method = |addr: &str, user: &str| {
        hba.matching(&repl(tcp(addr, false), user))
            .map(|r| (r.line(), r.method()))
    };
    assert_eq!(
        method("10.0.0.5", "replicator"),
        Some((1, AuthMethod::Reject))
    );
    assert_eq!(
        method("10.0.0.6", "replicator"),
        Some((2, AuthMethod::ScramSha256))
    );
    assert_eq!(
        method("192.0.2.1", "replicator"),
        Some((3, AuthMethod::Md5))
    );
    assert_eq!(method("::1", "replicator"), None);
}

#[test]
fn methods_and_options() {
    let hba = parse(
        "local replication a trust\n\
         local replication a reject\n\
         host replication a all scram-sha-256\n\
         host replication a all md5\n\
         host replication a all password\n\
         hostssl replication a all cert\n\
         hostssl replication a all cert map=certs clientname=CN\n\
         hostssl replication a all scram-sha-256 clientcert=verify-ca\n\
         hostssl replication a all md5 clientcert=verify-full,clientname=CN\n\
         hostssl replication a all cert clientcert=verify-full map=\n\
         \"hostssl\" replication a all \"cert\" \"map=x y\"\n",
    );
    let got: Vec<_> = hba
        .rules()
        .iter()
        .map(|r| {
            (
                r.method().name(),
                r.clientcert().map(ClientCertMode::name),
                r.map(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("trust", None, None),
            ("reject", None, None),
            ("scram-sha-256", None, None),
            ("md5", None, None),
            ("password", None, None),
            ("cert", Some("verify-full"), None),
            ("cert", Some("verify-full"), Some("certs")),
            ("scram-sha-256", Some("verify-ca"), None),
            ("md5", Some("verify-full"), None),
            ("cert", Some("verify-full"), None),
            ("cert", Some("verify-full"), Some("x y")),
        ]
    );
}

#[test]
fn rules_remember_where_they_are() {
    let hba = parse(
        "# comment\n\nhost replication all 10.0.0.0/8 \\\n    scram-sha-256   # remote standbys\n",
    );
    let rule = &hba.rules()[0];
    assert_eq!((rule.file(), rule.line()), (FILE, 3));
    assert_eq!(
        rule.raw_line(),
        "host replication all 10.0.0.0/8     scram-sha-256   # remote standbys"
    );
    assert_eq!(
        rule.describe(),
        "file \"/etc/pg_hba.conf\" line 3: \
         \"host replication all 10.0.0.0/8     scram-sha-256   # remote standbys\""
    );
}

/// Refused lines and their messages, each tried as line 3 of a file.
#[rustfmt::skip]
const REFUSED: &[(&str, &str)] = &[
    ("hots replication all all trust",
     "invalid connection type \"hots\""),
    ("host,local replication all all trust",
     "multiple values specified for connection type"),
    ("host",
     "end-of-line before database specification"),
    ("local replication",
     "end-of-line before role specification"),
    ("host replication all",
     "end-of-line before IP address specification"),
    ("host replication all 10.0.0.0/8",
     "end-of-line before authentication method"),
    ("local replication all",
     "end-of-line before authentication method"),
    ("host replication all 10.0.0.1,10.0.0.2 trust",
     "multiple values specified for host address"),
    ("host replication all 10.0.0.0",
     "end-of-line before netmask specification"),
    ("host replication all 10.0.0.0 255.0.0.0,255.0.0.0 trust",
     "multiple values specified for netmask"),
    ("host replication all 10.0.0.0 trust",
     "invalid IP mask \"trust\": Name or service not known"),
    ("host replication all 10.0.0.0 ffff:: trust",
     "IP address and mask do not match"),
    ("host replication all 10.0.0.0/33 trust",
     "invalid CIDR mask in address \"10.0.0.0/33\""),
    ("host replication all ::/129 trust",
     "invalid CIDR mask in address \"::/129\""),
    ("host replication all 10.0.0.0/ trust",
     "invalid CIDR mask in address \"10.0.0.0/\""),
    ("host replication all db.example.com/24 trust",
     "specifying both host name and CIDR mask is invalid: \"db.example.com/24\""),
    ("host replication all db.example.com trust",
     "host name \"db.example.com\" is not supported by walrelay: write an IP address range"),
    ("host replication all .example.com trust",
     "host name \".example.com\" is not supported by walrelay: write an IP address range"),
    ("host replication all \"all\" trust",
     "host name \"all\" is not supported by walrelay: write an IP address range"),
    ("host replication all all trust,md5",
     "multiple values specified for authentication type"),
    ("host replication all all foo",
     "invalid authentication method \"foo\""),
    ("host replication all all Trust",
     "invalid authentication method \"Trust\""),
    ("host replication all all cert",
     "cert authentication is only supported on hostssl connections"),
    ("local replication all cert",
     "cert authentication is only supported on hostssl connections"),
    ("host replication all all md5 map",
     "authentication option not in name=value format: map"),
    ("host replication all all md5 map=x",
     "authentication option \"map\" is only valid for authentication methods ident, peer, gssapi, sspi, and cert"),
    ("host replication all all md5 clientcert=verify-ca",
     "clientcert can only be configured for \"hostssl\" rows"),
    ("hostssl replication all all md5 clientcert=no-verify",
     "invalid value for clientcert: \"no-verify\""),
    ("hostssl replication all all md5 clientcert=1",
     "invalid value for clientcert: \"1\""),
    ("hostssl replication all all md5 clientcert=0",
     "invalid value for clientcert: \"0\""),
    ("hostssl replication all all cert clientcert=verify-ca",
     "clientcert only accepts \"verify-full\" when using \"cert\" authentication"),
    ("hostnossl replication all all md5 clientname=CN",
     "clientname can only be configured for \"hostssl\" rows"),
    ("hostssl replication all all cert clientname=cn",
     "invalid value for clientname: \"cn\""),
    ("hostssl replication all all cert clientname=DN",
     "clientname=DN is not supported by walrelay: it matches the certificate's CN"),
    ("host replication all all md5 ldapserver=x",
     "authentication option \"ldapserver\" is only valid for authentication methods ldap"),
    ("host replication all all md5 krb_realm=x",
     "authentication option \"krb_realm\" is only valid for authentication methods gssapi and sspi"),
    ("host replication all all md5 colour=blue",
     "unrecognized authentication option name: \"colour\""),
    ("host replication all all md5 =x",
     "unrecognized authentication option name: \"\""),
    ("host replication +admins all trust",
     "group membership \"+admins\" is not supported by walrelay, which has no roles"),
    ("host replication alice,+admins all trust",
     "group membership \"+admins\" is not supported by walrelay, which has no roles"),
    ("host replication /^repl all trust",
     "regular expression \"/^repl\" is not supported by walrelay"),
    ("host /^db all all trust",
     "regular expression \"/^db\" is not supported by walrelay"),
    ("host replication @users all trust",
     "file inclusion \"@users\" is not supported by walrelay; list the names on the line"),
    ("host @dbs all all trust",
     "file inclusion \"@dbs\" is not supported by walrelay; list the names on the line"),
];

#[test]
fn refused_lines_name_their_line() {
    for (bad, message) in REFUSED {
        let text = format!("local replication all trust\n# two\n{bad}\nhost all all all reject\n");
        assert_eq!(err(&text), (3, (*message).to_owned()), "{bad}");
    }
}

#[test]
fn methods_the_relay_does_not_support() {
    for method in [
        "ident", "peer", "gss", "sspi", "pam", "bsd", "ldap", "radius",
    ] {
        let text = format!("\n\nhost replication all all {method} map=x\n");
        assert_eq!(
            err(&text),
            (
                3,
                format!("invalid authentication method \"{method}\": not supported by walrelay")
            )
        );
    }
}

#[test]
fn errors_display_with_their_context() {
    let e = HbaFile::parse("\n\nhost all all all foo\n", FILE, &mut no_files).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid authentication method \"foo\" (line 3 of configuration file \"/etc/pg_hba.conf\")"
    );
    let e = HbaFile::parse("# only comments\n\n", FILE, &mut no_files).unwrap_err();
    assert_eq!(e.line, 0);
    assert_eq!(
        e.to_string(),
        "configuration file \"/etc/pg_hba.conf\" contains no entries"
    );
    let too_long = format!("host replication {} all trust", "u".repeat(300));
    assert_eq!(
        err(&too_long),
        (1, "authentication file token too long".to_owned())
    );
}

#[test]
fn includes() {
    let mut files = |path: &str| match path {
        "/etc/conf.d/remote.conf" => Ok("# remote standbys\n\
                                         host replication all 10.0.0.0/8 scram-sha-256\n\
                                         include_if_exists /etc/conf.d/absent.conf\n\
                                         include more.conf\n"
            .to_owned()),
        "/etc/conf.d/more.conf" => Ok("hostssl replication all ::/0 cert".to_owned()),
        "/etc/conf.d/broken.conf" => Ok("\n\nhost replication all all kerberos".to_owned()),
        "/etc/conf.d/loop.conf" => Ok("include loop.conf".to_owned()),
        "/etc/conf.d/secret.conf" => Err("Permission denied".to_owned()),
        _ => Err(String::new()),
    };
    let text = "local replication all trust\ninclude conf.d/remote.conf\nhost replication all all reject\n";
    let hba = HbaFile::parse(text, FILE, &mut files).unwrap();
    let seen: Vec<_> = hba.rules().iter().map(|r| (r.file(), r.line())).collect();
    assert_eq!(
        seen,
        [
            (FILE, 1),
            ("/etc/conf.d/remote.conf", 2),
            ("/etc/conf.d/more.conf", 1),
            (FILE, 3)
        ]
    );
    let err = |text: &str, files: &mut dyn FnMut(&str) -> Result<String, String>| {
        let e = HbaFile::parse(text, FILE, files).unwrap_err();
        (e.file, e.line, e.message)
    };
    assert_eq!(
        err(
            "local all all trust\ninclude conf.d/broken.conf",
            &mut files
        ),
        (
            "/etc/conf.d/broken.conf".to_owned(),
            3,
            "invalid authentication method \"kerberos\"".to_owned()
        )
    );
    assert_eq!(
        err("include conf.d/loop.conf", &mut files),
        (
            "/etc/conf.d/loop.conf".to_owned(),
            1,
            "could not open file \"/etc/conf.d/loop.conf\": maximum nesting depth exceeded"
                .to_owned()
        )
    );
    assert_eq!(
        err("\ninclude /etc/conf.d/gone.conf", &mut files),
        (
            FILE.to_owned(),
            2,
            "could not open file \"/etc/conf.d/gone.conf\": No such file or directory".to_owned()
        )
    );
    assert_eq!(
        err("include_if_exists conf.d/secret.conf", &mut files).2,
        "could not open file \"/etc/conf.d/secret.conf\": Permission denied"
    );
    // A file of only skipped includes has no entries.
    assert_eq!(err("include_if_exists nothing.conf", &mut files).1, 0);
}
