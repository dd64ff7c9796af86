//! `upstream.state`: what the relay last learnt about its upstream, kept so that after a
//! restart it can serve its standbys before the upstream is reachable again.
//!
//! The system identifier and segment size are the store's own (`walrelay.state`); this file
//! adds the `server_version` that downstream clients read (PROTOCOL.md §1.4, §4.5 item 1).

use std::path::Path;

use tracing::warn;

use super::StoreIdentity;
use crate::statefile::{self, StateFormat};
use crate::types::UpstreamInfo;

/// The file's name inside the data directory.
pub const UPSTREAM_STATE_FILE: &str = "upstream.state";

const FORMAT: StateFormat = StateFormat {
    what: "walrelay upstream state",
    magic: "walrelay upstream",
    version: "1",
    max_len: 4096,
};

/// What was saved, for a store of `identity`; `None` when nothing usable is there.
pub fn load_upstream_info(data_dir: &Path, identity: StoreIdentity) -> Option<UpstreamInfo> {
    let text = match FORMAT.read(&data_dir.join(UPSTREAM_STATE_FILE)) {
        Ok(text) => text?,
        Err(e) => {
            warn!(error = %e, "ignoring {UPSTREAM_STATE_FILE}");
            return None;
        }
    };
    let body = match FORMAT.parse(&text) {
        Ok(body) => body,
        Err(e) => {
            warn!(error = %e, "ignoring {UPSTREAM_STATE_FILE}");
            return None;
        }
    };
    let server_version = body
        .lines()
        .find_map(|l| l.strip_prefix("server_version "))?;
    Some(UpstreamInfo::new(
        identity.system_id,
        identity.segment_size,
        server_version.to_owned(),
    ))
}

/// Saves `info` durably.
///
/// # Errors
/// The I/O error.
pub fn save_upstream_info(data_dir: &Path, info: &UpstreamInfo) -> std::io::Result<()> {
    let version: String = info
        .server_version
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let text = FORMAT.render(&format!("server_version {version}\n"));
    statefile::replace(data_dir, UPSTREAM_STATE_FILE, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SystemId, WalSegmentSize};

    #[test]
    fn saved_info_comes_back_for_the_same_store() {
        let t = tempfile::TempDir::new().unwrap();
        let identity = StoreIdentity {
            system_id: SystemId(7),
            segment_size: WalSegmentSize::DEFAULT,
        };
        assert_eq!(load_upstream_info(t.path(), identity), None);
        let info = UpstreamInfo {
            system_id: SystemId(7),
            segment_size: WalSegmentSize::DEFAULT,
            server_version: "15.18 (Debian 15.18-0+deb12u1)".into(),
            version_num: 150_018,
        };
        save_upstream_info(t.path(), &info).unwrap();
        assert_eq!(load_upstream_info(t.path(), identity), Some(info));
        std::fs::write(t.path().join(UPSTREAM_STATE_FILE), b"garbage").unwrap();
        assert_eq!(load_upstream_info(t.path(), identity), None);
    }
}
