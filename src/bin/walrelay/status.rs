//! `walrelay status`: a running relay's upstream, store and standbys, read from its HTTP
//! endpoint's `/status` and printed as the demo prints them, once or every second.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints the relay's status from `url`, every second with `watch`.
///
/// # Errors
/// The URL is not `http://HOST:PORT`, the relay cannot be reached, or it answers with an
/// error or something that is not its status.
pub async fn run(url: &str, token_file: Option<&Path>, watch: bool) -> anyhow::Result<()> {
    let address = address_of(url)?;
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("could not read {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    loop {
        let status = fetch(&address, token.as_deref()).await?;
        print!("{}", render(&status));
        if !watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => println!(),
        }
    }
}

/// `HOST:PORT` of `http://HOST:PORT[/]` or `HOST:PORT`.
fn address_of(url: &str) -> anyhow::Result<String> {
    if url.starts_with("https://") {
        bail!("{url}: the relay's HTTP endpoint speaks plain HTTP");
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
        bail!("{url}: expected http://HOST:PORT");
    }
    Ok(host_port.to_owned())
}

async fn fetch(address: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("could not connect to {address}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(conn);
        let mut request = Request::get("/status").header("Host", address);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await
            .context("sending the request")?;
        let code = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !code.is_success() {
            bail!(
                "{address} answered {code}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        serde_json::from_slice::<Value>(&body).context("the answer is not the relay's status")
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{address} did not answer within {REQUEST_TIMEOUT:?}"))?
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seconds(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |s| format!("{s:.3}s"))
}

/// The status as the demo's table: the upstream, the store, a row per standby.
fn render(s: &Value) -> String {
    let up = &s["upstream"];
    let store = &s["store"];
    let mut out = format!(
        "upstream {} ({}, PostgreSQL {})   end {}   relay durable {}   lag {} bytes, {}\n",
        if up["connected"] == true {
            "connected"
        } else {
            "not connected"
        },
        text(&up["system_identifier"]),
        text(&up["server_version"]),
        text(&up["end_lsn"]),
        text(&up["flush_lsn"]),
        text(&up["lag_bytes"]),
        seconds(&up["lag_seconds"]),
    );
    out.push_str(&format!(
        "store {} segments, {} bytes, from {}{}\n",
        text(&store["segments"]),
        text(&store["bytes"]),
        text(&store["oldest_lsn"]),
        store["failure"]
            .as_str()
            .map(|f| format!("   FAILED: {f}"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "  {:<12} {:<16} {:<15} {:>14} {:>14} {:>14} {:>10} {:>11}\n",
        "application", "slot", "client", "sent", "flushed", "replayed", "flush lag", "replay lag"
    ));
    for r in s["replication"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {:<16} {:<15} {:>14} {:>14} {:>14} {:>10} {:>11}\n",
            text(&r["application_name"]),
            text(&r["slot_name"]),
            text(&r["client_addr"]),
            text(&r["sent_lsn"]),
            text(&r["flush_lsn"]),
            text(&r["replay_lsn"]),
            seconds(&r["flush_lag"]),
            seconds(&r["replay_lag"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            address_of("http://127.0.0.1:9188/").unwrap(),
            "127.0.0.1:9188"
        );
        assert_eq!(address_of("[::1]:9188").unwrap(), "[::1]:9188");
        assert!(address_of("https://relay:9188").is_err());
        assert!(address_of("http://relay:9188/status").is_err());
        assert!(address_of("relay").is_err());
    }

    #[test]
    fn renders_a_row_per_standby() {
        let status = serde_json::json!({
            "upstream": {"connected": true, "system_identifier": "7", "server_version": "15.18",
                         "end_lsn": "0/3000000", "flush_lsn": "0/3000000", "lag_bytes": 0,
                         "lag_seconds": 0.0},
            "store": {"segments": 2, "bytes": 33554432, "oldest_lsn": "0/1000000", "failure": null},
            "replication": [{"application_name": "s1", "slot_name": "s1", "client_addr": "127.0.0.1",
                             "sent_lsn": "0/3000000", "flush_lsn": "0/3000000",
                             "replay_lsn": "0/2FFFF00", "flush_lag": 0.0015, "replay_lag": null}],
        });
        let text = render(&status);
        assert!(
            text.starts_with("upstream connected (7, PostgreSQL 15.18)"),
            "{text}"
        );
        assert!(text.contains("  s1 "), "{text}");
        assert!(
            text.contains("0.002s") && text.contains("0/2FFFF00"),
            "{text}"
        );
    }
}
