//! The `walrelay` binary: parse the command line, build the configuration, run.
#![deny(unsafe_code)]
// `localpg`'s unit tests come along with it; `cargo clippy --all-targets` checks them here too.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use walrelay::Relay;
use walrelay::cli::{Cli, Command, LogFormat};
// `localpg` names the relay's types as `crate::types`, as it does inside the library.
use walrelay::types;

mod demo;
mod notify;
mod passwd;
mod status;
// The library's `testkit::localpg`, compiled into the binary for `walrelay demo` so that the
// library does not have to export it: one copy of the source, two crates. The demo uses only
// part of it.
#[path = "../../testkit/localpg.rs"]
#[allow(dead_code, unused_imports)]
mod localpg;

/// Makes glibc's malloc keep one arena for every thread. By default each thread that allocates
/// may get an arena of its own (up to eight a core) that keeps what was freed in it; the
/// relay's WAL buffers are allocated on one thread and freed on another, so its memory then
/// grew with its threads: 41 MB peak RSS against 23 MB with one arena in the end-to-end
/// benchmark, at the same CPU time (README, "Performance").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets a malloc parameter, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

/// Threads for blocking work. Disk reads for lagging standbys take at most four at once (the
/// hub's read pool); the rest (slot files, the upstream's state file) are short writes. With
/// tokio's default of 512, a burst of new slots would start a thread for each.
const BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    // The demo prints its own progress table; only warnings interrupt it.
    let set_log_level = init_logging(
        match cli.command {
            Command::Demo(_) | Command::Passwd(_) | Command::Status(_) => "warn",
            Command::Run(_) => "info",
        },
        cli.log_format,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args, set_log_level).await,
            Command::Passwd(args) => passwd::run(&args.user, args.iterations),
            Command::Status(args) => {
                status::run(&args.http, args.token_file.as_deref(), args.watch).await
            }
            Command::Demo(args) => {
                let opts = demo::DemoOptions {
                    segment_size_mb: args.segment_size_mb,
                    dir: args.dir,
                    duration: (args.duration > 0)
                        .then(|| std::time::Duration::from_secs(args.duration)),
                };
                demo::run(opts).await.map_err(anyhow::Error::from)
            }
        }
    });
    runtime.shutdown_timeout(Relay::SHUTDOWN_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a cause whose text an outer message already
/// quotes is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

async fn run(
    args: walrelay::cli::RunArgs,
    set_log_level: Option<SetLogLevel>,
) -> anyhow::Result<()> {
    let config = args.clone().settings()?.into_config()?;
    if let (Some(set), Some(level)) = (&set_log_level, &config.log_level) {
        set(level).map_err(|e| anyhow::anyhow!("invalid log_level \"{level}\": {e}"))?;
    }
    let relay = Relay::open(&config).context("could not start the relay")?;
    let reloader = relay.reloader();
    let shutdown = CancellationToken::new();
    let mut relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let notifier = notify::Notifier::from_env();
    if let Some(n) = &notifier {
        n.send("READY=1");
    }
    let watchdog = notifier
        .as_ref()
        .and(notify::Notifier::watchdog_interval())
        .map(|every| {
            let pinger = notify::Notifier::from_env();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Some(n) = &pinger {
                        n.send("WATCHDOG=1");
                    }
                }
            })
        });
    tokio::select! {
        joined = &mut relay_task => return Ok(joined??),
        signalled = wait_for_signal(&reloader, notifier.as_ref(), &args, set_log_level.as_ref()) => signalled?,
    }
    tracing::info!("received shutdown signal, stopping");
    if let Some(n) = &notifier {
        n.send("STOPPING=1");
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    shutdown.cancel();
    match tokio::time::timeout(Relay::SHUTDOWN_GRACE, relay_task).await {
        Ok(joined) => Ok(joined??),
        Err(_) => anyhow::bail!("shutdown did not finish within {:?}", Relay::SHUTDOWN_GRACE),
    }
}

/// Waits for SIGTERM or SIGINT; on SIGHUP, reads the certificate and access files again.
async fn wait_for_signal(
    reloader: &walrelay::Reloader,
    notifier: Option<&notify::Notifier>,
    args: &walrelay::cli::RunArgs,
    set_log_level: Option<&SetLogLevel>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("received SIGHUP, reloading the configuration");
                if let Some(n) = notifier {
                    n.send("RELOADING=1");
                }
                reload(reloader, args, set_log_level);
                if let Some(n) = notifier {
                    n.send("READY=1");
                }
            }
        }
    }
}

/// Reads the configuration again (the `--config` file, then the flags over it) and applies
/// it; a configuration with an error is reported and the running one stays.
fn reload(
    reloader: &walrelay::Reloader,
    args: &walrelay::cli::RunArgs,
    set_log_level: Option<&SetLogLevel>,
) {
    let new = match args.clone().settings().and_then(|s| s.into_config()) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "configuration not reloaded: the running settings stay");
            return;
        }
    };
    let level = new.log_level.clone().unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        tracing::error!(error = %e, log_level = %level, "configuration not reloaded: invalid log_level; the running settings stay");
        return;
    }
    match reloader.apply(&new) {
        Ok(changes) => {
            if changes.applied.contains(&"log_level")
                && let Some(set) = set_log_level
                && let Err(e) = set(&level)
            {
                tracing::error!(error = %e, "could not change the log level");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration not reloaded: the running settings stay");
        }
    }
}

/// Changes what is logged, from a `log_level` setting.
type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Logs go to stderr, filtered by `WALRELAY_LOG` (tracing's `EnvFilter` syntax) or
/// `default_level`; colours only on a terminal. The filter can be changed later (the
/// `log_level` setting) unless `WALRELAY_LOG` is set, which always wins.
fn init_logging(default_level: &str, format: LogFormat) -> Option<SetLogLevel> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_env("WALRELAY_LOG").ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let set: SetLogLevel = match format {
        LogFormat::Text => {
            let builder = builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_env_filter(filter)
                .with_filter_reloading();
            let set = level_setter(builder.reload_handle());
            builder.init();
            set
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_env_filter(filter)
                .with_filter_reloading();
            let set = level_setter(builder.reload_handle());
            builder.init();
            set
        }
    };
    (!pinned).then_some(set)
}

/// A [`SetLogLevel`] through the subscriber's reload `handle`.
fn level_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> SetLogLevel {
    Box::new(move |level| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}
