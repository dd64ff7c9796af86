#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The deployment files under `packaging/` fit together and fit the relay.
//!
//! Every YAML file parses (several documents to a file included). In the Kubernetes
//! manifests, the probes, ports, volumes, selectors and secrets that the pod depends on name
//! each other consistently and match the configuration the ConfigMap carries. Every TOML file
//! is accepted by the relay's own configuration loader (`Settings`), apart from the two keys
//! of the HTTP endpoint, and every access rules file by its `pg_hba.conf` parser. The systemd
//! unit passes `systemd-analyze verify`, its command line is accepted by the binary, and the
//! Dockerfile builds in two stages into an unprivileged image with the data volume and both
//! ports. The standby examples stream from the relay; Patroni's builds its standby leader
//! with the built-in `basebackup` through the relay, CloudNativePG's from the primary. The example of a Patroni cluster as the upstream
//! makes the relay's slot a permanent slot and admits the relay's role.
//!
//! None of this applies a manifest to a cluster or builds the image: those need a cluster
//! and a container engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use walrelay::config::{Config, Settings};
use walrelay::proto::access::HbaFile;
use walrelay::types::SlotName;
use yaml_rust2::{Yaml, YamlLoader};

/// Keys of the HTTP endpoint (`--http-listen`, `--http-token-file`), whose values the
/// checks below use.
const HTTP_KEYS: [&str; 2] = ["http_listen", "http_token_file"];

/// The port the packaging files give the HTTP endpoint.
const HTTP_PORT: u16 = 9188;

/// The port the packaging files give downstream replication.
const REPLICATION_PORT: u16 = 5432;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_yaml(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// The string at `y`, or a panic that names `what`.
fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {y:?}"))
}

fn int(y: &Yaml, what: &str) -> i64 {
    y.as_i64()
        .unwrap_or_else(|| panic!("{what}: expected an integer, found {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {y:?}"))
}

/// A mapping of strings to strings (labels, selectors) as a map.
fn string_map(y: &Yaml, what: &str) -> BTreeMap<String, String> {
    let hash = y
        .as_hash()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, found {y:?}"));
    hash.iter()
        .map(|(k, v)| (text(k, what).to_owned(), text(v, what).to_owned()))
        .collect()
}

/// Whether every label `selector` asks for is among `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The element of `items` whose `name` is `name`.
fn named<'a>(items: &'a [Yaml], name: &str, what: &str) -> &'a Yaml {
    items
        .iter()
        .find(|i| i["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{what}: nothing named {name:?}"))
}

/// The names of a list of volumes.
fn volumes_named(volumes: &Yaml) -> impl Iterator<Item = &str> {
    list(volumes, "volumes")
        .iter()
        .map(|v| text(&v["name"], "volume name"))
}

/// The port of `HOST:PORT`.
fn port_of(addr: &str) -> u16 {
    let (_, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} is not HOST:PORT"));
    port.parse()
        .unwrap_or_else(|e| panic!("{addr:?}: bad port: {e}"))
}

/// The documents of every manifest in `packaging/kubernetes`, by kind.
fn kubernetes_objects() -> BTreeMap<String, Vec<Yaml>> {
    let mut by_kind: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for path in files_under(&packaging().join("kubernetes")) {
        if !has_extension(&path, &["yaml", "yml"]) {
            continue;
        }
        for doc in load_yaml(&path) {
            let kind = text(&doc["kind"], &path.display().to_string()).to_owned();
            by_kind.entry(kind).or_default().push(doc);
        }
    }
    by_kind
}

/// The one object of `kind`.
fn only<'a>(objects: &'a BTreeMap<String, Vec<Yaml>>, kind: &str) -> &'a Yaml {
    let found = objects
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in packaging/kubernetes"));
    assert_eq!(found.len(), 1, "expected one {kind}");
    &found[0]
}

/// A configuration file checked by the relay's loader: the settings it gives and the HTTP
/// keys it carries.
struct CheckedToml {
    config: Config,
    http: BTreeMap<String, String>,
}

/// Loads `text` with the relay's own loader, [`Settings::from_toml`], and makes a
/// [`Config`] of it. The loader refuses keys it does not know; the HTTP endpoint's keys are
/// taken out first when it does not know them yet, and are the only keys it may refuse.
fn check_toml(text: &str, what: &str) -> CheckedToml {
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{what} is not valid TOML: {e}"));
    let mut http = BTreeMap::new();
    for key in HTTP_KEYS {
        if let Some(value) = table.get(key) {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {key} must be a string"));
            http.insert(key.to_owned(), value.to_owned());
        }
    }
    let settings = Settings::from_toml(text)
        .unwrap_or_else(|e| panic!("{what}: the relay's loader refuses it: {e}"));
    let config = settings
        .into_config()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        config.http_listen.as_deref(),
        http.get("http_listen").map(String::as_str)
    );
    assert_eq!(
        config.http_token_file.as_deref(),
        http.get("http_token_file").map(Path::new)
    );
    CheckedToml { config, http }
}

/// Parses an access rules file with the relay's `pg_hba.conf` parser.
fn check_hba(text: &str, what: &str) {
    let mut no_include =
        |path: &str| -> Result<String, String> { Err(format!("unexpected include of {path}")) };
    let hba = HbaFile::parse(text, what, &mut no_include)
        .unwrap_or_else(|e| panic!("{what} is refused by the relay: {e}"));
    assert!(!hba.rules().is_empty(), "{what} has no rules");
}

/// Every YAML file under `packaging/` parses, each document of it; every Kubernetes object
/// has an `apiVersion` and a `kind`; and `packaging/README.md` describes every file.
#[test]
fn every_yaml_file_parses_and_every_file_is_described() {
    let files = files_under(&packaging());
    let yaml: Vec<&PathBuf> = files
        .iter()
        .filter(|p| has_extension(p, &["yaml", "yml"]))
        .collect();
    assert!(yaml.len() >= 9, "too few YAML files found: {yaml:?}");
    let mut documents = 0;
    for path in &yaml {
        let docs = load_yaml(path);
        assert!(!docs.is_empty(), "{} has no document", path.display());
        for doc in &docs {
            assert!(doc.as_hash().is_some(), "{}: {doc:?}", path.display());
            let dir = path.parent().unwrap().file_name().unwrap();
            if dir == "kubernetes" || dir == "cloudnativepg" {
                text(&doc["apiVersion"], &path.display().to_string());
                text(&doc["kind"], &path.display().to_string());
            }
        }
        documents += docs.len();
    }
    assert!(documents > yaml.len(), "no multi-document file was read");

    let readme = read(&packaging().join("README.md"));
    for path in &files {
        let relative = path.strip_prefix(packaging()).unwrap().to_str().unwrap();
        if relative != "README.md" {
            assert!(
                readme.contains(relative),
                "packaging/README.md does not mention {relative}"
            );
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerignore = read(&root.join(".dockerignore"));
    for excluded in ["target/", ".git"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore does not exclude {excluded}"
        );
    }
}

/// The Kubernetes manifests agree with each other: probes on the named http port, the data
/// volume where the ConfigMap's `data_dir` says, Services and the PodMonitor selecting the
/// StatefulSet's pods, and every file the configuration names mounted or made.
#[test]
fn kubernetes_manifests_agree_with_each_other_and_the_configuration() {
    let objects = kubernetes_objects();

    // The kustomization lists every manifest beside it.
    let kustomization = only(&objects, "Kustomization");
    let listed: BTreeSet<String> = list(&kustomization["resources"], "resources")
        .iter()
        .map(|r| text(r, "resources").to_owned())
        .collect();
    let present: BTreeSet<String> = files_under(&packaging().join("kubernetes"))
        .iter()
        .filter(|p| has_extension(p, &["yaml", "yml"]))
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources");

    let sts = only(&objects, "StatefulSet");
    let spec = &sts["spec"];
    assert_eq!(int(&spec["replicas"], "replicas"), 1);
    let pod_labels = string_map(&spec["template"]["metadata"]["labels"], "pod labels");
    assert!(selects(
        &string_map(&spec["selector"]["matchLabels"], "StatefulSet selector"),
        &pod_labels
    ));
    let pod = &spec["template"]["spec"];
    let containers = list(&pod["containers"], "containers");
    let relay = named(containers, "walrelay", "containers");

    // Ports by name.
    let ports: BTreeMap<String, i64> = list(&relay["ports"], "ports")
        .iter()
        .map(|p| {
            (
                text(&p["name"], "port name").to_owned(),
                int(&p["containerPort"], "containerPort"),
            )
        })
        .collect();
    assert_eq!(ports.get("http"), Some(&i64::from(HTTP_PORT)));
    assert_eq!(ports.get("replication"), Some(&i64::from(REPLICATION_PORT)));

    // Probes.
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &relay[probe]["httpGet"];
        assert_eq!(text(&get["path"], probe), path, "{probe}");
        assert_eq!(text(&get["port"], probe), "http", "{probe}");
    }

    // Security.
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(int(&pod_security["runAsUser"], "runAsUser"), 0);
    int(&pod_security["fsGroup"], "fsGroup");
    for container in containers
        .iter()
        .chain(list(&pod["initContainers"], "initContainers"))
    {
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    }

    // The configuration, through the relay's loader.
    let configmap = only(&objects, "ConfigMap");
    let checked = check_toml(
        text(&configmap["data"]["walrelay.toml"], "walrelay.toml"),
        "the ConfigMap's walrelay.toml",
    );
    check_hba(
        text(&configmap["data"]["hba.conf"], "hba.conf"),
        "the ConfigMap's hba.conf",
    );
    let config = &checked.config;
    assert_eq!(
        config.listen.as_deref().map(port_of),
        Some(REPLICATION_PORT)
    );
    assert_eq!(port_of(&checked.http["http_listen"]), HTTP_PORT);

    // The data directory is the volume claim template's volume.
    let mounts = list(&relay["volumeMounts"], "volumeMounts");
    let claims = list(&spec["volumeClaimTemplates"], "volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    let claim = text(&claims[0]["metadata"]["name"], "claim name");
    let data_mount = named(mounts, claim, "volumeMounts");
    assert!(
        volumes_named(&pod["volumes"]).all(|v| v != claim),
        "a pod volume shadows the claim template {claim}"
    );
    assert_eq!(
        Path::new(text(&data_mount["mountPath"], "mountPath")),
        config.data_dir,
        "the data volume is not mounted at the ConfigMap's data_dir"
    );

    // The TOML's --config path is where the ConfigMap is projected.
    let args: Vec<&str> = list(&relay["args"], "args")
        .iter()
        .map(|a| text(a, "args"))
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];

    // Every file the configuration names exists in the pod: projected from the ConfigMap
    // or the Secret, or copied into the in-memory directory by the init container.
    let secret = only(&objects, "Secret");
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| text(k, "Secret key"))
        .collect();
    let configmap_keys: BTreeSet<&str> = configmap["data"]
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| text(k, "ConfigMap key"))
        .collect();
    let volumes = list(&pod["volumes"], "volumes");
    let mut pod_files: BTreeMap<PathBuf, String> = BTreeMap::new();
    for mount in mounts {
        let name = text(&mount["name"], "mount name");
        if name == claim {
            continue;
        }
        let volume = named(volumes, name, "volumes");
        let at = Path::new(text(&mount["mountPath"], "mountPath"));
        let Some(sources) = volume["projected"]["sources"].as_vec() else {
            continue;
        };
        for source in sources {
            let (from, keys) = if source["configMap"].is_hash() {
                (&source["configMap"], &configmap_keys)
            } else {
                (&source["secret"], &secret_keys)
            };
            for item in list(&from["items"], "items") {
                let key = text(&item["key"], "item key");
                assert!(keys.contains(key), "projected key {key} does not exist");
                pod_files.insert(at.join(text(&item["path"], "item path")), key.to_owned());
            }
        }
    }
    let init = list(&pod["initContainers"], "initContainers");
    let init_command: Vec<&str> = init
        .iter()
        .flat_map(|c| list(&c["command"], "command"))
        .map(|a| text(a, "command"))
        .collect();
    let init_command = init_command.join(" ");
    assert!(
        pod_files.contains_key(Path::new(config_path)),
        "--config {config_path} is not projected"
    );
    let access = &config.access;
    let mut named_files: Vec<PathBuf> = [
        &access.ssl_cert_file,
        &access.ssl_key_file,
        &access.hba_file,
        &access.auth_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    named_files.push(PathBuf::from(&checked.http["http_token_file"]));
    for cert in config
        .upstream
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("sslrootcert="))
    {
        named_files.push(PathBuf::from(cert));
    }
    for file in &named_files {
        let copied = format!(" {}", file.display());
        assert!(
            pod_files.contains_key(file) || init_command.contains(&copied),
            "{} is named by the configuration but neither projected nor made by the init container",
            file.display()
        );
    }
    assert!(
        access
            .auth_file
            .as_ref()
            .is_some_and(|f| init_command.contains(&format!(
                "install -m 0600 /etc/walrelay/users {}",
                f.display()
            ))),
        "the auth file must be copied with mode 0600 (the relay refuses a group-readable one)"
    );

    // Environment from the Secret.
    for var in list(&relay["env"], "env") {
        if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert!(
                secret_keys.contains(key),
                "env from missing Secret key {key}"
            );
        }
    }

    // Services select the pods and name its ports; the governing one is headless.
    let services = &objects["Service"];
    assert!(!services.is_empty());
    for service in services {
        let name = text(&service["metadata"]["name"], "Service name");
        assert!(
            selects(&string_map(&service["spec"]["selector"], name), &pod_labels),
            "Service {name} does not select the StatefulSet's pods"
        );
        let mut service_ports = BTreeSet::new();
        for port in list(&service["spec"]["ports"], name) {
            let target = text(&port["targetPort"], name);
            assert_eq!(
                Some(&int(&port["port"], name)),
                ports.get(target),
                "Service {name} port {target}"
            );
            service_ports.insert(target);
        }
        assert!(service_ports.contains("replication"), "{name}");
    }
    let governing = services
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == spec["serviceName"].as_str())
        .expect("the StatefulSet's serviceName names no Service");
    assert_eq!(governing["spec"]["clusterIP"].as_str(), Some("None"));

    // The PodMonitor scrapes /metrics on the http port with the token of the Secret.
    let monitor = only(&objects, "PodMonitor");
    assert_eq!(
        text(&monitor["apiVersion"], "PodMonitor"),
        "monitoring.coreos.com/v1"
    );
    assert!(selects(
        &string_map(&monitor["spec"]["selector"]["matchLabels"], "PodMonitor"),
        &pod_labels
    ));
    let endpoints = list(
        &monitor["spec"]["podMetricsEndpoints"],
        "podMetricsEndpoints",
    );
    assert!(endpoints.iter().any(|e| {
        e["port"].as_str() == Some("http")
            && e["path"].as_str() == Some("/metrics")
            && e["authorization"]["credentials"]["name"].as_str()
                == secret["metadata"]["name"].as_str()
            && e["authorization"]["credentials"]["key"]
                .as_str()
                .is_some_and(|k| secret_keys.contains(k) && k == "http-token")
    }));
}

/// Every TOML file under `packaging/` (and the ConfigMap's) is accepted by the relay's own
/// configuration loader, which refuses unknown keys, apart from the HTTP endpoint's two; the
/// access rules files parse with the relay's `pg_hba.conf` parser.
#[test]
fn configuration_files_load_with_the_relays_own_parsers() {
    let files = files_under(&packaging());
    let tomls: Vec<&PathBuf> = files
        .iter()
        .filter(|p| has_extension(p, &["toml"]))
        .collect();
    assert!(tomls.len() >= 2, "{tomls:?}");
    for path in tomls {
        let checked = check_toml(&read(path), &path.display().to_string());
        assert_eq!(checked.config.data_dir, Path::new("/var/lib/walrelay"));
        assert_eq!(
            checked.config.listen.as_deref().map(port_of),
            Some(REPLICATION_PORT),
            "{}",
            path.display()
        );
        assert_eq!(
            checked.http.get("http_listen").map(|a| port_of(a)),
            Some(HTTP_PORT),
            "{}",
            path.display()
        );
        assert!(checked.http.contains_key("http_token_file"));
    }
    let hbas: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "hba.conf"))
        .collect();
    assert!(!hbas.is_empty());
    for path in hbas {
        check_hba(&read(path), &path.display().to_string());
    }
}

/// The directives of a unit file section by section: `(section, key, value)`.
fn unit_directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((section.clone(), key.to_owned(), value.to_owned()));
        }
    }
    out
}

/// The systemd unit passes `systemd-analyze verify` (with `ExecStart` pointed at this build's
/// binary), has the directives the relay relies on, writes where its configuration's
/// `data_dir` is, and its command line is one the binary accepts.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit_path = packaging().join("systemd/walrelay.service");
    let unit = read(&unit_path);
    let directives = unit_directives(&unit);
    let get = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("Type", "notify"),
        ("User", "walrelay"),
        (
            "ExecStart",
            "/usr/local/bin/walrelay run --config /etc/walrelay/walrelay.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ReadWritePaths", "/var/lib/walrelay"),
    ] {
        assert_eq!(get(key), [value], "{key}");
    }
    for key in ["WatchdogSec", "LimitNOFILE", "TimeoutStopSec"] {
        assert_eq!(get(key).len(), 1, "{key}");
    }

    // The example configuration's data directory is where the unit may write.
    let config = check_toml(
        &read(&packaging().join("systemd/walrelay.toml")),
        "packaging/systemd/walrelay.toml",
    )
    .config;
    assert_eq!(config.data_dir, Path::new("/var/lib/walrelay"));
    assert_eq!(get("StateDirectory"), ["walrelay"]);

    // The binary accepts ExecStart's arguments: with a configuration file that does not
    // exist it gets as far as reading it.
    let exec: Vec<&str> = get("ExecStart")[0].split_whitespace().collect();
    let tmp = tempfile::TempDir::new().unwrap();
    let missing = tmp.path().join("missing.toml");
    let args: Vec<&str> = exec[1..]
        .iter()
        .map(|a| {
            if *a == "/etc/walrelay/walrelay.toml" {
                missing.to_str().unwrap()
            } else {
                a
            }
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(&args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not read configuration file"),
        "{stderr}"
    );

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        if std::env::var_os("CI").is_some() {
            panic!("systemd-analyze is missing (install the systemd package)");
        }
        eprintln!("SKIP systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());

    // A copy whose ExecStart names an existing binary; User= stays (verify does not
    // resolve it), and the unit keeps its name, which verify reports errors under.
    let copy = tmp.path().join("walrelay.service");
    let rewritten = unit.replace(
        "ExecStart=/usr/local/bin/walrelay ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_walrelay")),
    );
    assert_ne!(rewritten, unit);
    std::fs::write(&copy, rewritten).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        !stderr.contains("walrelay.service"),
        "systemd-analyze verify complained: {stderr}"
    );
}

/// The Dockerfile's instructions, continuation lines joined: `(INSTRUCTION, arguments)`.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current.split_once(char::is_whitespace).unwrap();
        out.push((instruction.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The Dockerfile builds the binary in one stage and copies it into a second, where it runs
/// as a user other than root, with a volume for the data directory and both ports exposed.
#[test]
fn dockerfile_builds_in_two_stages_into_an_unprivileged_image() {
    let instructions = dockerfile_instructions(&read(&packaging().join("docker/Dockerfile")));
    let of = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let from = of("FROM");
    assert_eq!(from.len(), 2, "{from:?}");
    let (builder, stage) = from[0].split_once(" AS ").expect("a named build stage");
    assert_eq!(builder, "rust:1-bookworm");
    assert!(
        of("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked --bin walrelay"))
    );
    let from_build = format!("--from={stage} ");
    assert!(of("COPY").iter().any(|c| c.starts_with(&from_build)));

    // Everything after the second FROM is the runtime image.
    let runtime_start = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let runtime = &instructions[runtime_start..];
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .expect("the runtime stage sets no USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "USER {user}");
    assert!(of("VOLUME").iter().any(|v| {
        v.split_whitespace()
            .any(|p| p.trim_matches(['[', ']', '"', ',']) == "/var/lib/walrelay")
    }));
    let exposed: BTreeSet<&str> = of("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    for port in [REPLICATION_PORT, HTTP_PORT] {
        assert!(exposed.contains(port.to_string().as_str()), "EXPOSE {port}");
    }
    assert!(of("ENTRYPOINT")[0].contains("/usr/local/bin/walrelay"));
}

/// The Swarm stack publishes both ports, mounts its volume at its configuration's
/// `data_dir`, gives the relay its secrets owned by its user and readable by it alone, and
/// checks /healthz on the HTTP port.
#[test]
fn swarm_stack_agrees_with_its_configuration() {
    let dir = packaging().join("swarm");
    let docs = load_yaml(&dir.join("walrelay-stack.yml"));
    assert_eq!(docs.len(), 1);
    let stack = &docs[0];
    assert_eq!(stack["version"].as_str(), Some("3.8"));
    let service = &stack["services"]["walrelay"];
    let config = check_toml(&read(&dir.join("walrelay.toml")), "swarm/walrelay.toml");

    let targets: BTreeSet<i64> = list(&service["ports"], "ports")
        .iter()
        .map(|p| int(&p["target"], "target"))
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([i64::from(REPLICATION_PORT), i64::from(HTTP_PORT)])
    );
    let volumes = list(&service["volumes"], "volumes");
    let data = volumes
        .iter()
        .find(|v| Path::new(text(&v["target"], "target")) == config.config.data_dir)
        .expect("no volume at data_dir");
    let source = text(&data["source"], "source");
    assert!(stack["volumes"][source].is_hash(), "volume {source}");

    // Configs from files beside the stack exist; the --config file is one of them.
    for (name, def) in stack["configs"].as_hash().unwrap() {
        if let Some(file) = def["file"].as_str() {
            assert!(dir.join(file).is_file(), "config {name:?}: {file}");
        }
    }
    let mounted: BTreeSet<&str> = list(&service["configs"], "configs")
        .iter()
        .map(|c| text(&c["target"], "config target"))
        .collect();
    assert!(mounted.contains("/etc/walrelay/walrelay.toml"));

    // Secrets: owned by the image's user, mode 0400.
    let mut secret_files = BTreeSet::new();
    for secret in list(&service["secrets"], "secrets") {
        assert_eq!(secret["uid"].as_str(), Some("10001"));
        assert_eq!(int(&secret["mode"], "mode"), 0o400);
        assert!(stack["secrets"][text(&secret["source"], "source")].is_hash());
        secret_files.insert(format!(
            "/run/secrets/{}",
            text(&secret["target"], "secret target")
        ));
    }
    let access = &config.config.access;
    for file in [&access.auth_file, &access.ssl_key_file]
        .into_iter()
        .flatten()
    {
        assert!(
            secret_files.contains(file.to_str().unwrap()),
            "{}",
            file.display()
        );
    }
    assert!(secret_files.contains(&config.http["http_token_file"]));

    // The healthcheck asks the HTTP port for /healthz.
    let test: Vec<&str> = list(&service["healthcheck"]["test"], "healthcheck")
        .iter()
        .map(|t| text(t, "healthcheck"))
        .collect();
    let test = test.join(" ");
    let http_port = port_of(&config.http["http_listen"]);
    assert!(
        test.contains(&format!("/{http_port} ")) && test.contains("GET /healthz "),
        "{test}"
    );
}

/// The Patroni and CloudNativePG examples stream from the relay, on a slot of the relay's
/// when they use one. Patroni's standby leader is built with its built-in `basebackup`
/// through the relay (tests/patroni.rs runs it); CloudNativePG's bootstrap, which cannot be
/// run here, takes its base backup from the primary.
#[test]
fn standby_examples_stream_from_the_relay() {
    // Patroni.
    let docs = load_yaml(&packaging().join("patroni/standby_cluster.yml"));
    let patroni = &docs[0];
    let standby = &patroni["bootstrap"]["dcs"]["standby_cluster"];
    let relay_host = text(&standby["host"], "standby_cluster.host");
    assert_eq!(
        int(&standby["port"], "standby_cluster.port"),
        i64::from(REPLICATION_PORT)
    );
    SlotName::new(text(&standby["primary_slot_name"], "primary_slot_name"))
        .expect("primary_slot_name is not a valid slot name");
    // No create_replica_methods: Patroni's default, `basebackup` against the host above.
    assert!(
        standby["create_replica_methods"].is_badvalue(),
        "{standby:?}"
    );
    assert!(!relay_host.is_empty());

    // CloudNativePG.
    let docs = load_yaml(&packaging().join("cloudnativepg/replica-cluster.yaml"));
    let cluster = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Cluster"))
        .unwrap();
    assert_eq!(
        text(&cluster["apiVersion"], "apiVersion"),
        "postgresql.cnpg.io/v1"
    );
    let spec = &cluster["spec"];
    assert_eq!(spec["replica"]["enabled"].as_bool(), Some(true));
    let externals = list(&spec["externalClusters"], "externalClusters");
    let streaming = named(
        externals,
        text(&spec["replica"]["source"], "replica.source"),
        "externalClusters",
    );
    let bootstrap = named(
        externals,
        text(
            &spec["bootstrap"]["pg_basebackup"]["source"],
            "pg_basebackup.source",
        ),
        "externalClusters",
    );
    let host = |c: &Yaml| text(&c["connectionParameters"]["host"], "host").to_owned();
    // The relay as packaging/kubernetes names it: the Service "walrelay" in some namespace.
    assert!(
        host(streaming).starts_with("walrelay."),
        "{}",
        host(streaming)
    );
    assert_eq!(
        text(&streaming["connectionParameters"]["port"], "port"),
        REPLICATION_PORT.to_string()
    );
    assert_ne!(
        host(bootstrap),
        host(streaming),
        "the base backup must come from the primary"
    );
    for external in externals {
        if let Some(secret) = external["password"]["name"].as_str() {
            assert!(
                docs.iter().any(|d| d["kind"].as_str() == Some("Secret")
                    && d["metadata"]["name"].as_str() == Some(secret)),
                "Secret {secret}"
            );
        }
    }
}

/// The Patroni example for a cluster the relay streams from: the relay's default upstream
/// slot is a permanent physical slot, and the first `replication` line of `pg_hba` is the
/// relay's role's.
#[test]
fn patroni_example_keeps_the_relays_slot_and_admits_its_role() {
    let docs = load_yaml(&packaging().join("patroni/permanent_slot.yml"));
    let patroni = &docs[0];
    let config = check_toml(
        "upstream = \"host=db1 user=walrelay\"\ndata_dir = \"/var/lib/walrelay\"\n",
        "a minimal configuration",
    )
    .config;
    let slot = config.upstream_slot.as_str();
    let slots = &patroni["bootstrap"]["dcs"]["slots"];
    assert_eq!(
        text(&slots[slot]["type"], "slots.<relay slot>.type"),
        "physical",
        "the relay's slot {slot:?} is not a permanent physical slot"
    );
    let hba: Vec<&str> = list(&patroni["postgresql"]["pg_hba"], "postgresql.pg_hba")
        .iter()
        .map(|line| text(line, "postgresql.pg_hba"))
        .collect();
    let first_replication = hba
        .iter()
        .find(|line| line.split_whitespace().nth(1) == Some("replication"))
        .expect("no replication line in postgresql.pg_hba");
    assert_eq!(
        first_replication.split_whitespace().nth(2),
        Some("walrelay"),
        "{first_replication}"
    );
}
