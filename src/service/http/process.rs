//! The process's own figures, as Prometheus client libraries export them
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), read from `/proc/self` on Linux.

use std::fs;

/// One reading of the process's figures; `None` where `/proc` does not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessStats {
    /// Resident memory in bytes.
    pub resident_bytes: Option<f64>,
    /// User and system CPU time in seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// The soft limit on file descriptors.
    pub max_fds: Option<f64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads the figures now (a few small files; cheap enough for every scrape).
pub(crate) fn read() -> ProcessStats {
    let stat = fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which may hold spaces, start after its ')'.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // In proc(5) numbering, utime is field 14, stime 15 and starttime 22; `fields` starts
    // at field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let boot_time = fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    ProcessStats {
        resident_bytes: fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kb| kb * 1024.0)
        }),
        cpu_seconds: field(14).zip(field(15)).map(|(u, s)| (u + s) / USER_HZ),
        open_fds: fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64),
        max_fds: fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        }),
        start_time_seconds: field(22)
            .zip(boot_time)
            .map(|(start, boot)| boot + start / USER_HZ),
    }
}

/// `/proc` counts CPU time in `USER_HZ` ticks, a constant of the kernel's user interface:
/// 100 on every architecture Linux runs walrelay on (`sysconf(_SC_CLK_TCK)` says the same,
/// but the library uses no `unsafe`).
const USER_HZ: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read();
        assert!(s.resident_bytes.is_some_and(|b| b > 1e5), "{s:?}");
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(s.open_fds.is_some_and(|n| n >= 3.0));
        assert!(s.max_fds.is_some_and(|n| n >= 64.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86400.0 * 365.0)
        );
    }
}
