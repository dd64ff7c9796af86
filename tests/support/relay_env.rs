//! The relay binary started with extra environment variables, and the preloaded libfaketime
//! that ACCEPTANCE.md's clock-jump row (J1) runs it under.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::RelayProcess;

/// Debian's libfaketime (package `faketime`, installed by `scripts/system-tools --tests`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl RelayProcess {
    /// [`RelayProcess::start_bare`] (`walrelay run --upstream UPSTREAM --data-dir DATA_DIR
    /// ARGS…`, none of the test intervals of [`RelayProcess::start`]) with `env` added to the
    /// relay's environment.
    pub fn start_with_env(
        upstream: &str,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RelayProcess {
        let data = data_dir.to_str().unwrap();
        let mut all = vec!["--upstream", upstream, "--data-dir", data];
        all.extend_from_slice(args);
        RelayProcess::start_run_env(
            Path::new(env!("CARGO_BIN_EXE_walrelay")),
            data_dir,
            &all,
            env,
        )
    }

    /// [`RelayProcess::start_run`] with `env` added to the relay's environment.
    pub fn start_run_env(
        binary: &Path,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RelayProcess {
        fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let log = data_dir.with_extension("log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary)
            .arg("run")
            .args(args)
            .env("WALRELAY_LOG", "info,walrelay=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start walrelay");
        RelayProcess {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            log,
        }
    }
}

/// The libfaketime library, or `None` after a `SKIP` line when it is missing. Under CI
/// (`CI=true`) a missing library fails the test instead.
pub fn require_faketime() -> Option<PathBuf> {
    let lib = PathBuf::from(LIBFAKETIME);
    if lib.is_file() {
        return Some(lib);
    }
    let why = format!("{LIBFAKETIME} is missing (install the faketime package)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {why}");
    }
    eprintln!("SKIP: {why}");
    None
}

/// Removes the shared memory and semaphore libfaketime made for process `pid`, which a
/// process that did not exit normally leaves in /dev/shm (and a later process with the same
/// pid would then trip over).
pub fn remove_faketime_shm(pid: u32) {
    let _ = fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
    let _ = fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
}
