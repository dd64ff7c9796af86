//! The crate's dependency rules ("rings", DESIGN.md), checked on the source text.
//!
//! A module is the first path component under `src/` (`src/service/downstream/sender.rs` is in
//! `service`, `src/statefile.rs` is `statefile`). A module may use itself and the modules listed
//! for it in [`RULES`], nothing else; no module may use `testkit`. `src/lib.rs` (re-exports
//! only) and the binary (`src/main.rs`, `src/bin/`) are not checked.
//!
//! Only production code is read: comments, doc comments, string and char literals are dropped
//! first, then every item under `#[cfg(test)]`, `#[cfg(fuzzing)]` or `#[cfg(any(fuzzing, test))]`
//! wherever it sits (`#[cfg(test)] mod fixture;` may come before production code), and
//! test-only files (`tests.rs`, `*_tests.rs`, `testdata.rs`, `fixture.rs`, `fuzzing.rs`) are
//! skipped; production code must not use them. Paths are found where they start with
//! `crate::`, `super::`, `self::` or the name of one of the file's own child modules, with `use`
//! groups expanded (`crate::{a, b::{c, d}}` uses `a`, `b::c`, `b::d`), and `super::` resolved as
//! Rust does (from `src/service/mod.rs`, `super::x` is the crate's `x`).
//!
//! Inside one module no two files may depend on each other, directly or through others. A path
//! depends on the file that defines it: the longest prefix that is a file, followed through that
//! file's `use` imports (`super::StoreError` names `error.rs` when `mod.rs` re-exports it). A
//! file that declares submodules is built of them: its paths into its own submodules are
//! structure, not dependencies, so its children may use its items. What is checked is that
//! siblings (and cousins) never depend on each other in a circle: `relay.rs` using
//! `retention.rs` while `retention.rs` uses `relay.rs` is the shape this rule forbids.
//!
//! A failure lists one entry per problem:
//! - `src/FILE:LINE: A uses B (PATHS); rule: ...`: the import at that line breaks A's rule (a
//!   module missing from the rules, such as one that should move under `testkit`, may use
//!   nothing);
//! - `src/FILE:LINE: uses test-only FILE2 (PATHS) outside cfg(test)`: production code reaching a
//!   test helper;
//! - `cycle in M: F1, F2, ...`, then every edge between those files with the line that makes it:
//!   the files depend on each other; move what they share into a file of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Each module, then the modules it may use besides itself.
const RULES: &str = "
    types:
    wire: types
    wal: types
    proto: wire wal types
    statefile: types
    storage: wal statefile types metrics
    slots: statefile types
    hub: storage slots types metrics
    service: proto wire wal hub storage slots statefile config types metrics
    config: types
    cli: config types
    metrics: types
    testkit: types wire proto";

/// The modules `module` may use, or `None` if it is not in [`RULES`].
fn rule(module: &str) -> Option<Vec<&'static str>> {
    RULES.lines().find_map(|l| {
        let (m, ok) = l.trim().split_once(':')?;
        (m == module).then(|| ok.split_whitespace().collect())
    })
}

/// A token of blanked source, with its line.
type Tok = (String, usize);

/// How a path appears: in code, a private `use`, or a `pub`/`pub(..)` `use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Code,
    Use,
    PubUse,
}

/// A path found in code, as written (`["super", "error", "io_err"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    segs: Vec<String>,
    line: usize,
    kind: Kind,
    /// The name a `use` binds (alias or last segment); `None` for code and globs.
    name: Option<String>,
}

#[test]
fn modules_import_only_along_the_rings() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &src, &mut files);
    assert!(files.len() > 10, "no sources under {}", src.display());
    let problems = check(&files);
    assert!(
        problems.is_empty(),
        "{} problem(s) with the dependency rules (see tests/architecture.rs):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Collects `(path relative to src/, text)` of every `.rs` file but the binary's.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "main.rs" || rel == "bin" {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out);
        } else if rel.ends_with(".rs") {
            out.push((rel, fs::read_to_string(&path).unwrap()));
        }
    }
}

fn is_test_only(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    ["tests.rs", "testdata.rs", "fixture.rs", "fuzzing.rs"].contains(&name)
        || name.ends_with("_tests.rs")
        || rel.split('/').any(|c| c == "tests")
}

/// `service/downstream/mod.rs` → `["service", "downstream"]`; `lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut segs: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib")) {
        segs.pop();
    }
    segs
}

/// Checks a crate given as `(path relative to src/, text)`; returns the problems found.
fn check(sources: &[(String, String)]) -> Vec<String> {
    let files: BTreeMap<Vec<String>, &str> = sources
        .iter()
        .map(|(rel, _)| (module_path(rel), rel.as_str()))
        .collect();
    let mut found: BTreeMap<&str, Vec<(Found, Vec<String>)>> = BTreeMap::new();
    let mut imports: BTreeMap<&str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (rel, text) in sources {
        if rel == "lib.rs" || is_test_only(rel) {
            continue;
        }
        let here = module_path(rel);
        let children: BTreeSet<String> = files
            .keys()
            .filter(|m| m.len() == here.len() + 1 && m.starts_with(&here))
            .map(|m| m[here.len()].clone())
            .collect();
        for f in paths(&drop_cfg_test(tokens(text)), &children) {
            let Some(abs) = absolute(&f.segs, &here) else {
                continue;
            };
            if let Some(name) = &f.name {
                imports
                    .entry(rel)
                    .or_default()
                    .insert(name.clone(), abs.clone());
            }
            found.entry(rel).or_default().push((f, abs));
        }
    }
    let file_of = |mut path: Vec<String>| -> &str {
        for _ in 0..8 {
            let k = (0..=path.len())
                .rev()
                .find(|&k| files.contains_key(&path[..k]))
                .unwrap_or(0);
            let file = files.get(&path[..k]).copied().unwrap_or("lib.rs");
            match path.get(k).and_then(|n| imports.get(file)?.get(n)) {
                Some(to) if to[..] != path[..=k] => path = [&to[..], &path[k + 1..]].concat(),
                _ => return file,
            }
        }
        "lib.rs"
    };
    // (file, line, what, rule) → the paths that do it.
    let mut bad: BTreeMap<(&str, usize, String, String), Vec<String>> = BTreeMap::new();
    let mut edges: BTreeMap<&str, BTreeMap<&str, BTreeMap<&str, usize>>> = BTreeMap::new();
    for (&rel, list) in &found {
        let here = module_path(rel);
        let from = rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs");
        for (f, abs) in list {
            let Some(to) = abs.first().map(String::as_str) else {
                continue;
            };
            let path = format!("`{}`", f.segs.join("::"));
            let ok = rule(from);
            if to != from && !ok.as_ref().is_some_and(|ok| ok.contains(&to)) {
                let rule = match ok {
                    _ if to == "testkit" => "no module may use `testkit`".to_string(),
                    Some(ok) if ok.is_empty() => format!("`{from}` may use no other module"),
                    Some(ok) => format!("`{from}` may use {}", ok.join(", ")),
                    None => format!("`{from}` is not in the rules, so it may use nothing"),
                };
                let what = format!("`{from}` uses `{to}`");
                bad.entry((rel, f.line, what, format!("; rule: {rule}")))
                    .or_default()
                    .push(path.clone());
            }
            let target = file_of(abs.clone());
            if is_test_only(target) {
                let what = format!("uses test-only src/{target}");
                bad.entry((rel, f.line, what, " outside cfg(test)".into()))
                    .or_default()
                    .push(path);
            }
            let there = module_path(target);
            let child = there.len() > here.len() && there.starts_with(&here);
            if there.first() == Some(&here[0]) && target != rel && !child {
                let e = edges.entry(from).or_default().entry(rel).or_default();
                e.entry(target).or_insert(f.line);
            }
        }
    }
    let mut problems: Vec<String> = bad
        .into_iter()
        .map(|((rel, line, what, rule), paths)| {
            format!("src/{rel}:{line}: {what} ({}){rule}", paths.join(", "))
        })
        .collect();
    for (module, graph) in &edges {
        for scc in cycles(graph) {
            let mut msg = format!("cycle in `{module}`: {}", scc.join(", "));
            for a in &scc {
                for (b, line) in &graph[a] {
                    if scc.contains(b) {
                        msg.push_str(&format!("\n    src/{a}:{line} → src/{b}"));
                    }
                }
            }
            problems.push(msg);
        }
    }
    problems
}

/// Resolves a path as written in the file of module `here` to a path from the crate root.
fn absolute(segs: &[String], here: &[String]) -> Option<Vec<String>> {
    let first = segs.first()?.as_str();
    match first {
        "crate" => Some(segs[1..].to_vec()),
        "self" => Some([here, &segs[1..]].concat()),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let base = here.get(..here.len().checked_sub(ups)?)?;
            Some([base, &segs[ups..]].concat())
        }
        _ => Some([here, segs].concat()), // a child module of this file
    }
}

/// Strongly connected groups of more than one node, each sorted.
fn cycles<'a, V>(graph: &BTreeMap<&'a str, BTreeMap<&'a str, V>>) -> Vec<Vec<&'a str>> {
    let reach = |start: &'a str| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![start]);
        while let Some(n) = todo.pop() {
            for &m in graph.get(n).into_iter().flat_map(BTreeMap::keys) {
                if seen.insert(m) {
                    todo.push(m);
                }
            }
        }
        seen
    };
    let nodes: BTreeSet<&str> = graph.keys().copied().collect();
    let reached: BTreeMap<&str, BTreeSet<&str>> = nodes.iter().map(|&n| (n, reach(n))).collect();
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for &n in &nodes {
        if done.contains(n) {
            continue;
        }
        let scc: Vec<&str> = nodes
            .iter()
            .copied()
            .filter(|&m| m == n || (reached[n].contains(m) && reached[m].contains(n)))
            .collect();
        done.extend(scc.iter().copied());
        if scc.len() > 1 {
            out.push(scc);
        }
    }
    out
}

/// Splits source into identifiers (`$crate` → `crate`), `::` and single characters, each with
/// its line. Comments and char literals are dropped; a string literal becomes `""`.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let word = |k: usize| at(k).is_alphanumeric() || at(k) == '_';
    let until =
        |k: usize, stop: &dyn Fn(usize) -> bool| (k..c.len()).find(|&k| stop(k)).unwrap_or(c.len());
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < c.len() {
        let start = i;
        let raw = match (at(i), at(i + 1)) {
            _ if i > 0 && word(i - 1) => None,
            ('r', _) => Some(i + 1),
            ('b', 'r') => Some(i + 2),
            _ => None,
        };
        let n = raw.map_or(0, |s| c[s..].iter().take_while(|&&x| x == '#').count());
        let token = if let Some(s) = raw.filter(|&s| at(s + n) == '"') {
            let end = until(s + n + 1, &|k| {
                c[k] == '"' && (1..=n).all(|h| at(k + h) == '#')
            });
            i = end + n + 1;
            Some("\"\"".to_string())
        } else if at(i) == '/' && at(i + 1) == '/' {
            i = until(i, &|k| c[k] == '\n');
            None
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                match (at(i), at(i + 1)) {
                    ('/', '*') => (depth, i) = (depth + 1, i + 2),
                    ('*', '/') => (depth, i) = (depth - 1, i + 2),
                    _ => i += 1,
                }
                if depth == 0 || i >= c.len() {
                    break None;
                }
            }
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            Some("\"\"".to_string())
        } else if at(i) == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            i = until(i + if at(i + 1) == '\\' { 3 } else { 2 }, &|k| c[k] == '\'') + 1;
            None
        } else if word(i) || (at(i) == '$' && word(i + 1)) {
            let s = i + usize::from(at(i) == '$');
            i = until(s, &|k| !word(k));
            Some(c[s..i].iter().collect())
        } else if at(i) == ':' && at(i + 1) == ':' {
            i += 2;
            Some("::".to_string())
        } else {
            i += 1;
            (!at(start).is_whitespace()).then(|| at(start).to_string())
        };
        out.extend(token.map(|t| (t, line)));
        line += c[start..i.min(c.len())]
            .iter()
            .filter(|&&x| x == '\n')
            .count();
    }
    out
}

fn tok(toks: &[Tok], i: usize) -> &str {
    toks.get(i).map_or("", |t| t.0.as_str())
}

/// The tokens of a `cfg(..)` that holds only for tests or fuzzing.
const CFG_TEST: [&str; 7] = ["test", "fuzzing", "any", "(", ")", ",", "]"];

/// Drops every item under a `cfg` that names only `test`/`fuzzing`; all of it for `#![cfg(..)]`.
fn drop_cfg_test(toks: Vec<Tok>) -> Vec<Tok> {
    let (mut out, mut i) = (Vec::new(), 0);
    while i < toks.len() {
        let inner = tok(&toks, i + 1) == "!";
        let open = if inner { i + 2 } else { i + 1 };
        let attr = tok(&toks, i) == "#" && tok(&toks, open) == "[" && tok(&toks, open + 1) == "cfg";
        let close = if attr { after_group(&toks, open) } else { open };
        let test_cfg = attr
            && toks[open + 2..close]
                .iter()
                .all(|t| CFG_TEST.contains(&t.0.as_str()));
        if test_cfg && inner {
            return Vec::new();
        } else if test_cfg {
            i = skip_item(&toks, close);
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

/// The index after the bracket group opening at `i` (or `i` if none opens there).
fn after_group(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0;
    while i < toks.len() {
        match tok(toks, i) {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ if depth == 0 => return i,
            _ => {}
        }
        i += 1;
        if depth == 0 {
            return i;
        }
    }
    i
}

/// The index after the item (or field, arm, statement) starting at `i`, attributes included.
fn skip_item(toks: &[Tok], mut i: usize) -> usize {
    while tok(toks, i) == "#" {
        i = after_group(toks, i + 1);
    }
    let mut depth = 0;
    while i < toks.len() {
        match tok(toks, i) {
            ";" | "," if depth == 0 => return i + 1,
            "}" if depth == 0 => return i,
            "{" if depth == 0 => return after_group(toks, i),
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Every path that starts with `crate`, `super`, `self` or one of `children`, `use` groups
/// expanded.
fn paths(toks: &[Tok], children: &BTreeSet<String>) -> Vec<Found> {
    let (mut out, mut kind, mut i) = (Vec::new(), Kind::Code, 0);
    while i < toks.len() {
        let t = tok(toks, i);
        let prev = if i == 0 { "" } else { tok(toks, i - 1) };
        if t == "use" {
            let open = toks[..i].iter().rposition(|x| x.0 == "(").unwrap_or(0);
            let public = prev == "pub" || (prev == ")" && tok(toks, open.wrapping_sub(1)) == "pub");
            kind = if public { Kind::PubUse } else { Kind::Use };
        } else if t == ";" {
            kind = Kind::Code;
        }
        let start = matches!(t, "crate" | "super" | "self") || children.contains(t);
        let start_ok = if kind == Kind::Code {
            prev != "::" && prev != "."
        } else {
            prev == "use"
        };
        if start && start_ok && tok(toks, i + 1) == "::" {
            i = tree(toks, i, Vec::new(), kind, &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses the path or `use` tree at `i` under `pre` into `out`; returns the index after it.
fn tree(t: &[Tok], mut i: usize, mut pre: Vec<String>, kind: Kind, out: &mut Vec<Found>) -> usize {
    loop {
        let (s, line) = (tok(t, i), t.get(i).map_or(0, |t| t.1));
        if s == "{" {
            i += 1;
            while !matches!(tok(t, i), "}" | "") {
                i = if tok(t, i) == "," {
                    i + 1
                } else {
                    tree(t, i, pre.clone(), kind, out).max(i + 1)
                };
            }
            return i + 1;
        }
        let ident = s.starts_with(|c: char| c.is_alphabetic() || c == '_');
        if ident && (s != "self" || pre.is_empty() || tok(t, i + 1) == "::") {
            pre.push(s.to_string()); // `self` alone in a group names the group's prefix
        }
        if ident && tok(t, i + 1) == "::" {
            i += 2;
            continue;
        }
        let alias = ident && tok(t, i + 1) == "as";
        let name = match () {
            _ if kind == Kind::Code || !ident => None, // code, a glob, or `crate::x::<T>`
            _ if alias => Some(tok(t, i + 2).to_string()),
            _ => pre.last().cloned(),
        };
        if !pre.is_empty() {
            out.push(Found {
                segs: pre,
                line,
                kind,
                name,
            });
        }
        return i + usize::from(ident) + 2 * usize::from(alias) + usize::from(s == "*");
    }
}

// The checker's own tests.

fn found(src: &str, children: &[&str]) -> String {
    let children = children.iter().map(|c| c.to_string()).collect();
    let text = |f: &Found| format!("{}@{}:{:?}", f.segs.join("::"), f.line, f.kind);
    let found = paths(&drop_cfg_test(tokens(src)), &children);
    found.iter().map(text).collect::<Vec<_>>().join(" ")
}

fn crate_of(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(String, String)> = files.iter().map(|&(p, s)| (p.into(), s.into())).collect();
    check(&files)
}

#[test]
fn grouped_and_nested_imports() {
    let src = "use crate::{hub::Hub, slots::{A, B as C, self}};\nuse crate::wire::*;\n\
               use std::{io, fmt::{self}};\nfn f() { crate::types::Lsn::new(x.len()); }";
    let want = "crate::hub::Hub@1:Use crate::slots::A@1:Use crate::slots::B@1:Use crate::slots@1:Use \
                crate::wire@2:Use crate::types::Lsn::new@4:Code";
    assert_eq!(found(src, &[]), want);
}

#[test]
fn comments_strings_and_test_code_are_ignored() {
    let src = "// use crate::a::X;\n/// crate::b\n//! crate::c\n/* crate::d /* crate::e */ */\n\
               const S: &str = \"crate::f \\\" crate::g\";\nconst R: &str = r#\"crate::h\"#;\n\
               const Q: char = '\"'; fn l<'a>(x: &'a str) {}\nuse crate::wire::Frame;\n\
               #[cfg(test)]\nmod fixture;\n#[cfg(any(fuzzing, test))]\npub mod fuzzing;\n\
               pub use crate::wal::X;\n#[cfg(test)]\n#[allow(dead_code)]\nfn t() { crate::i::X; }\n\
               fn u() { crate::types::Y; }\n#[cfg(test)]\nmod tests { use crate::hub::Z; }";
    let want = "crate::wire::Frame@8:Use crate::wal::X@13:PubUse crate::types::Y@17:Code";
    assert_eq!(found(src, &[]), want);
    assert_eq!(found("#![cfg(test)]\nuse crate::hub::Hub;", &[]), "");
}

#[test]
fn child_modules_and_kinds() {
    let src = "mod error;\npub use error::E;\npub(crate) use error::F;\nuse tail::Tail;\n\
               fn f() { tail::go(); tracing::error!(); std::error::Error; }";
    let want = "error::E@2:PubUse error::F@3:PubUse tail::Tail@4:Use tail::go@5:Code";
    assert_eq!(found(src, &["error", "tail"]), want);
}

#[test]
fn super_resolves_as_rust_does() {
    for (path, file, want) in [
        ("super::super::x", "service/downstream/a.rs", "service::x"),
        ("super::x", "service/a.rs", "service::x"),
        ("super::x", "service/mod.rs", "x"),
        ("self::x", "service/mod.rs", "service::x"),
        ("crate::x::y", "service/a.rs", "x::y"),
        ("tail::Tail", "hub/mod.rs", "hub::tail::Tail"),
        ("super::x", "statefile.rs", "x"),
        ("super::super::x", "statefile.rs", "(none)"),
    ] {
        let segs: Vec<String> = path.split("::").map(String::from).collect();
        let abs = absolute(&segs, &module_path(file)).map_or("(none)".into(), |v| v.join("::"));
        assert_eq!(abs, want, "{path} in {file}");
    }
}

#[test]
fn rules_are_enforced() {
    let problems = crate_of(&[
        ("lib.rs", "pub use crate::hub::Hub;"),
        (
            "service/mod.rs",
            "use super::hub::H;\nuse crate::testkit::X;",
        ),
        ("service/downstream/a.rs", "use super::super::x::Y;"),
        ("wire/mod.rs", "use super::{types::Lsn, hub::{Hub, Tail}};"),
        ("wal/mod.rs", "mod testdata;\nuse testdata::X;"),
        ("wal/testdata.rs", "use crate::hub::Hub;"),
        ("hub/mod.rs", ""),
    ]);
    let want = [
        "src/service/mod.rs:2: `service` uses `testkit` (`crate::testkit::X`); \
         rule: no module may use `testkit`",
        "src/wal/mod.rs:2: uses test-only src/wal/testdata.rs (`testdata::X`) outside cfg(test)",
        "src/wire/mod.rs:1: `wire` uses `hub` (`super::hub::Hub`, `super::hub::Tail`); \
         rule: `wire` may use types",
    ];
    assert_eq!(problems, want);
}

#[test]
fn cycles_on_a_tiny_graph() {
    let mut graph: BTreeMap<&str, BTreeMap<&str, ()>> = BTreeMap::new();
    for edge in "a>b b>c c>a c>d e>f f>e f>g".split(' ') {
        let (a, b) = edge.split_once('>').unwrap();
        graph.entry(a).or_default().insert(b, ());
    }
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"], vec!["e", "f"]]);
}

#[test]
fn file_cycles_in_a_module() {
    // a ⇄ b; `super::E` in a.rs is e.rs's (through mod.rs's re-export), and e uses a;
    // mod.rs uses c and c uses mod.rs: a parent is built of its children, no cycle.
    let problems = crate_of(&[
        (
            "x/mod.rs",
            "mod a; mod b; mod c; mod e;\npub use a::X;\npub use e::E;\nuse c::Z;",
        ),
        ("x/a.rs", "use super::{Ctx, E};\nuse crate::x::b::Y;"),
        ("x/b.rs", "fn f() { super::a::X; }"),
        ("x/c.rs", "use super::Ctx;"),
        ("x/e.rs", "use super::{Ctx, a::Q};"),
    ]);
    let want = [
        "cycle in `x`: x/a.rs, x/b.rs, x/e.rs\n    src/x/a.rs:2 → src/x/b.rs\n    \
         src/x/a.rs:1 → src/x/e.rs\n    src/x/b.rs:1 → src/x/a.rs\n    src/x/e.rs:1 → src/x/a.rs",
    ];
    assert_eq!(problems, want, "{problems:#?}");
}
