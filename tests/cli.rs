//! The binary's command line: a relay that cannot start says why once, and exits 1.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_data_directory_that_cannot_be_opened_is_reported_once() {
    let t = tempfile::TempDir::new().unwrap();
    let file = t.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data_dir = file.join("data");
    let (code, stderr) = run(&[
        "run",
        "--upstream",
        "host=127.0.0.1 port=1",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(line.contains("could not start the relay"), "{line}");
    assert_eq!(
        line.matches("could not create directory").count(),
        1,
        "{line}"
    );
    assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
}

#[test]
fn a_bad_connection_string_or_listen_address_is_reported_once() {
    let t = tempfile::TempDir::new().unwrap();
    let data_dir = t.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let (code, stderr) = run(&["run", "--upstream", "sslmode=bogus", "--data-dir", data_dir]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("invalid sslmode value").count(),
        1,
        "{stderr}"
    );
    let upstream = "host=127.0.0.1 port=1";
    let args = [
        "run",
        "--upstream",
        upstream,
        "--data-dir",
        data_dir,
        "--listen",
        "nowhere:x",
    ];
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.matches("could not listen on").count(), 1, "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{stderr}"
    );
}
