//! Tests of the parent module.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.
use super::*;

fn env() -> Env {
    Env::default().with_os_user("osuser").with_home("/home/u")
}

fn parse(s: &str) -> ConnInfo {
    ConnInfo::parse(s, &env()).unwrap()
}

fn err(s: &str) -> String {
    ConnInfo::parse(s, &env()).unwrap_err().to_string()
}

fn name(h: &str, port: u16) -> Endpoint {
    Endpoint {
        host: Some(Host::Name(h.into())),
        hostaddr: None,
        port,
    }
}

#[test]
fn defaults() {
    let c = parse("");
    assert_eq!(c.hosts(), &[name("localhost", 5432)]);
    assert_eq!((c.user.as_str(), c.dbname.as_str()), ("osuser", "osuser"));
    assert_eq!(c.password, None);
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.channel_binding, ChannelBindingMode::Prefer);
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Any);
    assert_eq!(
        c.sslrootcert,
        Some(PathBuf::from("/home/u/.postgresql/root.crt"))
    );
    assert_eq!(
        c.sslcert,
        Some(PathBuf::from("/home/u/.postgresql/postgresql.crt"))
    );
    assert_eq!(
        c.sslkey,
        Some(PathBuf::from("/home/u/.postgresql/postgresql.key"))
    );
    assert_eq!(c.passfile, Some(PathBuf::from("/home/u/.pgpass")));
    assert_eq!(c.connect_timeout, None);
    assert!(c.keepalives.enabled);
    let none = ConnInfo::parse("", &Env::default().with_os_user("u")).unwrap();
    assert_eq!((none.sslrootcert, none.passfile), (None, None));
    assert_eq!(
        ConnInfo::parse("", &Env::default()),
        Err(ConnInfoError::NoUser)
    );
}

#[test]
fn keyword_value_examples() {
    // libpq docs, 34.1.1.1.
    let c = parse("host=localhost port=5432 dbname=mydb connect_timeout=10");
    assert_eq!(c.hosts(), &[name("localhost", 5432)]);
    assert_eq!(c.dbname, "mydb");
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
    let c = parse("host = db1  port =6543\tuser= alice  application_name='my app'");
    assert_eq!(c.hosts(), &[name("db1", 6543)]);
    assert_eq!(c.user, "alice");
    assert_eq!(c.application_name.as_deref(), Some("my app"));
    let c = parse(r"password='it\'s a \\ secret' user=a\ b dbname=''");
    assert_eq!(c.password.as_ref().unwrap().expose(), r"it's a \ secret");
    assert_eq!(c.user, "a b");
    assert_eq!(c.dbname, "a b", "an empty dbname falls back to the user");
    // Blanks after '=' are skipped, so an empty unquoted value eats the next word.
    assert_eq!(parse("dbname= user=x").dbname, "user=x");
    // Later settings win.
    assert_eq!(parse("user=a user=b").user, "b");
}

#[test]
fn keyword_value_errors() {
    assert_eq!(
        err("host"),
        "missing \"=\" after \"host\" in connection info string"
    );
    assert_eq!(
        err("host localhost"),
        "missing \"=\" after \"host\" in connection info string"
    );
    assert_eq!(
        err("password='abc"),
        "unterminated quoted string in connection info string"
    );
    assert_eq!(err("x=1"), "invalid connection option \"x\"");
    assert_eq!(err("=1"), "invalid connection option \"\"");
    assert_eq!(err("sslmode=x"), "invalid sslmode value: \"x\"");
    assert_eq!(err("sslmode=''"), "invalid sslmode value: \"\"");
    assert_eq!(
        err("channel_binding=on"),
        "invalid channel_binding value: \"on\""
    );
    assert_eq!(
        err("target_session_attrs=master"),
        "invalid target_session_attrs value: \"master\""
    );
    assert_eq!(
        err("connect_timeout=ten"),
        "invalid integer value \"ten\" for connection option \"connect_timeout\""
    );
    assert_eq!(
        err("keepalives_idle=-1"),
        "invalid integer value \"-1\" for connection option \"keepalives_idle\""
    );
    assert_eq!(err("port=0"), "invalid port number: \"0\"");
    assert_eq!(err("port=65536"), "invalid port number: \"65536\"");
    assert_eq!(
        err("hostaddr=db.example"),
        "could not parse network address \"db.example\""
    );
    assert_eq!(
        err("service=prod"),
        "connection option \"service\" is not supported"
    );
    assert_eq!(
        err("sslcrl=/x"),
        "connection option \"sslcrl\" is not supported"
    );
    assert!(ConnInfo::parse("sslcrl='' sslpassword=''", &env()).is_ok());
}

#[test]
fn ignored_options_and_basebackup_output() {
    // What `pg_basebackup -R` writes into primary_conninfo.
    let c = parse(
        "user=postgres passfile='/root/.pgpass' channel_binding=prefer host=10.0.0.1 \
         port=5432 sslmode=prefer sslcompression=0 sslcertmode=allow sslsni=1 \
         ssl_min_protocol_version=TLSv1.2 gssencmode=prefer krbsrvname=postgres \
         gssdelegation=0 target_session_attrs=any load_balance_hosts=disable",
    );
    assert_eq!(c.hosts(), &[name("10.0.0.1", 5432)]);
    assert_eq!(c.passfile, Some(PathBuf::from("/root/.pgpass")));
    assert_eq!(parse("requiressl=1").sslmode, SslMode::Require);
    assert_eq!(parse("requiressl=0").sslmode, SslMode::Prefer);
}

#[test]
fn host_choice_options() {
    let c = parse("host=a,b target_session_attrs=read-write load_balance_hosts=random");
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
    assert_eq!(c.load_balance_hosts, LoadBalanceHosts::Random);
    assert_eq!(
        parse("host=a").load_balance_hosts,
        LoadBalanceHosts::Disable
    );
    assert_eq!(
        err("load_balance_hosts=sometimes"),
        "invalid load_balance_hosts value: \"sometimes\""
    );
    let from_env = ConnInfo::parse(
        "host=a",
        &env()
            .with_var("PGTARGETSESSIONATTRS", "prefer-standby")
            .with_var("PGLOADBALANCEHOSTS", "random"),
    )
    .unwrap();
    assert_eq!(
        from_env.target_session_attrs,
        TargetSessionAttrs::PreferStandby
    );
    assert_eq!(from_env.load_balance_hosts, LoadBalanceHosts::Random);
}

#[test]
fn environment_fallbacks() {
    let env = env()
        .with_var("PGHOST", "h1,h2")
        .with_var("PGPORT", "7000")
        .with_var("PGUSER", "envuser")
        .with_var("PGPASSWORD", "envpw")
        .with_var("PGAPPNAME", "app")
        .with_var("PGSSLMODE", "verify-full")
        .with_var("PGSSLROOTCERT", "/etc/ca.pem")
        .with_var("PGPASSFILE", "/etc/pgpass")
        .with_var("PGCONNECT_TIMEOUT", "1")
        .with_var("PGCHANNELBINDING", "require")
        .with_var("PGDATABASE", "envdb");
    let c = ConnInfo::parse("", &env).unwrap();
    assert_eq!(c.hosts(), &[name("h1", 7000), name("h2", 7000)]);
    assert_eq!(c.user, "envuser");
    assert_eq!(c.password.as_ref().unwrap().expose(), "envpw");
    assert_eq!(c.application_name.as_deref(), Some("app"));
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(c.passfile, Some(PathBuf::from("/etc/pgpass")));
    assert_eq!(
        c.connect_timeout,
        Some(Duration::from_secs(2)),
        "libpq's 2 s floor"
    );
    assert_eq!(c.channel_binding, ChannelBindingMode::Require);
    assert_eq!(c.dbname, "envdb");
    // The string beats the environment, even with an empty value.
    let c = ConnInfo::parse("user=u sslmode=disable host='' port=''", &env).unwrap();
    assert_eq!((c.user.as_str(), c.sslmode), ("u", SslMode::Disable));
    assert_eq!(c.hosts(), &[name("localhost", 5432)]);
    let lookup = Env::from_lookup(|k| (k == "PGHOST").then(|| "fromfn".to_owned()));
    let c = ConnInfo::parse("", &lookup.with_os_user("x")).unwrap();
    assert_eq!(c.hosts(), &[name("fromfn", 5432)]);
    assert_eq!(
        parse("fallback_application_name=fb")
            .application_name
            .as_deref(),
        Some("fb")
    );
    assert_eq!(parse("connect_timeout=0").connect_timeout, None);
}

#[test]
fn multiple_hosts_and_hostaddr() {
    let c = parse("host=a,b,c port=1,,3");
    assert_eq!(c.hosts(), &[name("a", 1), name("b", 5432), name("c", 3)]);
    let c = parse("host=a,,/var/run/postgresql port=6000");
    assert_eq!(c.hosts()[1], name("localhost", 6000));
    assert_eq!(
        c.hosts()[2].host,
        Some(Host::UnixSocket("/var/run/postgresql".into()))
    );
    let c = parse("host=db.example,other hostaddr=192.0.2.1,::1");
    assert_eq!(c.hosts()[0].hostaddr, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(c.hosts()[1].hostaddr, Some("::1".parse().unwrap()));
    assert_eq!(c.hosts()[0].pgpass_host(), "db.example");
    let c = parse("hostaddr=192.0.2.7");
    assert_eq!(c.hosts()[0].host, None);
    assert_eq!(c.hosts()[0].pgpass_host(), "192.0.2.7");
    assert_eq!(
        err("host=a,b port=1,2,3"),
        "could not match 3 port numbers to 2 hosts"
    );
    assert_eq!(
        err("host=a,b hostaddr=192.0.2.1"),
        "could not match 2 host names to 1 hostaddr values"
    );
}

#[test]
fn uri_examples() {
    // libpq docs, 34.1.1.2.
    assert_eq!(parse("postgresql://").hosts(), &[name("localhost", 5432)]);
    assert_eq!(
        parse("postgresql://localhost").hosts(),
        &[name("localhost", 5432)]
    );
    assert_eq!(
        parse("postgresql://localhost:5433").hosts(),
        &[name("localhost", 5433)]
    );
    assert_eq!(parse("postgresql://localhost/mydb").dbname, "mydb");
    let c = parse("postgresql://user@localhost");
    assert_eq!(c.user, "user");
    let c = parse("postgresql://user:secret@localhost");
    assert_eq!(c.password.unwrap().expose(), "secret");
    let c = parse("postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp");
    assert_eq!((c.user.as_str(), c.dbname.as_str()), ("other", "otherdb"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.application_name.as_deref(), Some("myapp"));
    let c = parse(
        "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
    );
    assert_eq!(c.hosts(), &[name("host1", 123), name("host2", 456)]);
    assert_eq!(c.dbname, "somedb");
    let c = parse("postgres://[2001:db8::1234]:6000,[::1]/db");
    assert_eq!(
        c.hosts(),
        &[name("2001:db8::1234", 6000), name("::1", 5432)]
    );
    let c = parse("postgresql:///mydb?host=localhost&port=5433");
    assert_eq!(c.hosts(), &[name("localhost", 5433)]);
    let c = parse("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname");
    assert_eq!(
        c.hosts()[0].host,
        Some(Host::UnixSocket("/var/lib/postgresql".into()))
    );
    let c =
        parse("postgresql://us%40er:p%3Aw%2F@h?ssl=true&sslmode=verify-full&gssencmode=disable");
    assert_eq!(
        (c.user.as_str(), c.password.unwrap().expose()),
        ("us@er", "p:w/")
    );
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(parse("postgresql://h?ssl=true").sslmode, SslMode::Require);
    assert_eq!(
        parse("postgresql://h?application_name=x&")
            .application_name
            .as_deref(),
        Some("x")
    );
    assert_eq!(parse("postgresql://u:@h").password, None);
}

#[test]
fn uri_errors_never_show_the_password() {
    assert_eq!(
        err("postgresql://h?foo=1"),
        "invalid URI query parameter: \"foo\""
    );
    assert_eq!(
        err("postgresql://h?a"),
        "missing key/value separator \"=\" in URI query parameter: \"a\""
    );
    assert_eq!(
        err("postgresql://h?a=1=2"),
        "extra key/value separator \"=\" in URI query parameter: \"a=1=2\""
    );
    assert_eq!(err("postgresql://h?port=1&&"), err("postgresql://h?&"));
    assert!(err("postgresql://[::1").contains("no matching"));
    assert!(err("postgresql://[]:5432").contains("empty"));
    assert!(err("postgresql://[::1]x").contains("expected"));
    assert_eq!(
        err("postgresql://h/%zz"),
        "invalid percent-encoded token: \"%zz\""
    );
    assert_eq!(
        err("postgresql://h/a%00"),
        "forbidden value %00 in percent-encoded value: \"a%00\""
    );
    assert_eq!(
        err("postgresql://h:99999"),
        "invalid port number: \"99999\""
    );
    assert_eq!(
        err("postgresql://h?password=a=hunter2"),
        "extra key/value separator \"=\" in URI query parameter: \"password=********\""
    );
    for bad in [
        "postgresql://u:hunter2%zz@h",
        "postgresql://h?password=hunter2%00",
    ] {
        let e = err(bad);
        assert!(!e.contains("hunter2") && e.contains("********"), "{e}");
    }
}

#[test]
fn debug_and_display_hide_the_password() {
    let c = parse("host=h password=hunter2 application_name='a b'");
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("********"),
        "{debug}"
    );
    let shown = c.to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(
        shown,
        "host=h port=5432 user=osuser password=******** dbname=osuser \
         application_name='a b' sslmode=prefer channel_binding=prefer"
    );
    // The display form parses back to the same settings.
    let again = parse(&shown.replace("password=******** ", "password=hunter2 "));
    assert_eq!(again, c);
    let c = parse("hostaddr=::1,192.0.2.1 host=,x");
    assert!(
        c.to_string()
            .starts_with("host=,x hostaddr=::1,192.0.2.1 port=5432,5432 ")
    );
}
