//! What the relay knows of the server it streams from, and how far the WAL it may serve
//! reaches.

use super::{Lsn, SystemId, TimelineId, WalSegmentSize};

/// The upstream server's identity as the relay last learnt it: what downstream clients read
/// through `IDENTIFY_SYSTEM`, `SHOW` and the `server_version` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// The system identifier.
    pub system_id: SystemId,
    /// The WAL segment size.
    pub segment_size: WalSegmentSize,
    /// `server_version` as the upstream reported it.
    pub server_version: String,
    /// The same as a number (150018).
    pub version_num: u32,
}

impl UpstreamInfo {
    /// The identity of a server reporting `server_version`.
    pub fn new(
        system_id: SystemId,
        segment_size: WalSegmentSize,
        server_version: String,
    ) -> UpstreamInfo {
        UpstreamInfo {
            system_id,
            segment_size,
            version_num: server_version_num(&server_version),
            server_version,
        }
    }
}

/// The end of the WAL the relay may serve: durable and checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableEnd {
    /// The timeline being written; `None` before anything was published.
    pub timeline: Option<TimelineId>,
    /// Every byte of `timeline` below this is durable and checked.
    pub lsn: Lsn,
}

/// `PQserverVersion` of a `server_version` string.
///
/// ```
/// use walrelay::types::server_version_num;
/// assert_eq!(server_version_num("15.18 (Debian 15.18-0+deb12u1)"), 150_018);
/// assert_eq!(server_version_num("9.6.3"), 90_603);
/// ```
pub fn server_version_num(text: &str) -> u32 {
    let mut parts = text
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if major >= 10 {
        major.saturating_mul(10_000).saturating_add(minor)
    } else {
        let patch = parts.next().unwrap_or(0);
        major
            .saturating_mul(10_000)
            .saturating_add(minor.saturating_mul(100))
            .saturating_add(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_version_numbers() {
        assert_eq!(
            server_version_num("15.18 (Debian 15.18-0+deb12u1)"),
            150_018
        );
        assert_eq!(server_version_num("17.2"), 170_002);
        assert_eq!(server_version_num("18beta1"), 180_000);
        assert_eq!(server_version_num("9.6.3"), 90_603);
        assert_eq!(server_version_num("garbage"), 0);
    }
}
