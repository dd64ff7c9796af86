//! The connection driver over in-memory sockets: status updates keep flowing while the slot
//! file is being synced on a disk that stalls.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::access::Access;
use super::connection::Connection;
use super::context::{DownstreamConfig, ServerContext};
use crate::hub::Hub;
use crate::proto::downstream::{DownstreamSession, Peer};
use crate::service::conn::FrameReader;
use crate::slots::{Persistency, SlotError, SlotFile, SlotPersister, SlotRegistry, SlotSnapshot};
use crate::types::{
    BackendPid, Lsn, PgTimestamp, SlotName, SystemId, TimelineId, UpstreamInfo, WalSegmentSize,
};
use crate::wire::frontend::FrontendMessage;
use crate::wire::replication::{ClientCopyData, ServerCopyData, StandbyStatusUpdate};
use crate::wire::{BackendMessage, StartupMessage, StartupPacket};

/// A disk whose writes wait until the test lets them go, and say when they started; while
/// `failing`, they then fail.
struct StallingDisk {
    file: SlotFile,
    entered: Mutex<std_mpsc::Sender<()>>,
    released: (Mutex<bool>, Condvar),
    failing: std::sync::atomic::AtomicBool,
}

impl StallingDisk {
    fn release(&self) {
        let (lock, cv) = &self.released;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

impl SlotPersister for StallingDisk {
    fn write(&self, snapshot: &SlotSnapshot) -> Result<(), SlotError> {
        let _ = self.entered.lock().unwrap().send(());
        let (lock, cv) = &self.released;
        let mut released = lock.lock().unwrap();
        while !*released {
            released = cv.wait(released).unwrap();
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SlotError::Io {
                op: "write file",
                path: "slots.state".into(),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            });
        }
        self.file.write(snapshot)
    }
}

/// A client on the other end of an in-memory socket.
struct Client {
    rd: FrameReader<ReadHalf<DuplexStream>>,
    wr: WriteHalf<DuplexStream>,
}

impl Client {
    async fn send(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        let mut out = BytesMut::new();
        encode(&mut out);
        self.wr.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> BackendMessage {
        let frame = tokio::time::timeout(Duration::from_secs(20), self.rd.frame(1 << 20))
            .await
            .expect("the relay stopped answering")
            .unwrap();
        BackendMessage::parse(frame).unwrap()
    }

    /// Reads until ReadyForQuery, or the first message of `tag`.
    async fn until(&mut self, tag: u8) -> BackendMessage {
        loop {
            let m = self.recv().await;
            if m.tag() == tag {
                return m;
            }
        }
    }
}

/// Everything the relay's side of the test is made of.
struct Relay {
    /// The writer's end of the hub: streams end when it goes.
    _feed: crate::hub::HubFeed,
    ctx: Arc<ServerContext>,
    disk: Arc<StallingDisk>,
    entered: std_mpsc::Receiver<()>,
    start: Lsn,
}

fn relay(dir: &std::path::Path) -> Relay {
    let size = WalSegmentSize::new(1 << 20).unwrap();
    let (hub, feed) = Hub::new(dir.join("wal"), 1 << 20);
    feed.set_segment_size(size);
    let start = Lsn(0x300_0000);
    feed.switch_timeline(TimelineId::ONE, start);
    let mut registry = SlotRegistry::open(dir, 8).unwrap();
    let d1 = SlotName::new("d1").unwrap();
    let pending = registry.create(&d1, Persistency::Persistent, Some(start));
    SlotFile::new(dir)
        .write(pending.unwrap().unwrap().snapshot())
        .unwrap();
    let (entered_tx, entered) = std_mpsc::channel();
    let disk = Arc::new(StallingDisk {
        file: SlotFile::new(dir),
        entered: Mutex::new(entered_tx),
        released: (Mutex::new(false), Condvar::new()),
        failing: Default::default(),
    });
    let info = UpstreamInfo::new(SystemId(7), size, "15.18".into());
    let (info_tx, info_rx) = watch::channel(Some(Arc::new(info)));
    std::mem::forget(info_tx);
    let (horizon, _) = watch::channel(Default::default());
    let config = DownstreamConfig {
        max_wal_senders: 4,
        max_base_backups: 2,
        sender_timeout: Duration::from_secs(60),
        authentication_timeout: Duration::from_secs(60),
    };
    let persister: Arc<dyn SlotPersister> = Arc::clone(&disk) as _;
    let ctx = ServerContext::new(
        config,
        info_rx,
        hub,
        registry,
        persister,
        horizon,
        Access::default(),
    );
    Relay {
        _feed: feed,
        ctx: Arc::new(ctx),
        disk,
        entered,
        start,
    }
}

/// Logs in, starts streaming from slot `d1`, has the relay save its slots on the stalled
/// disk (on the relay's runtime), then sends 50 status updates asking for replies: each must
/// get its keepalive while the disk stalls. Runs on a runtime of its own, so that it times
/// out even if the relay's runtime were stuck.
async fn client(
    ours: DuplexStream,
    ctx: Arc<ServerContext>,
    relay_runtime: tokio::runtime::Handle,
    entered: std_mpsc::Receiver<()>,
    start: Lsn,
) -> tokio::task::JoinHandle<Result<(), SlotError>> {
    let (rd, wr) = tokio::io::split(ours);
    let mut client = Client {
        rd: FrameReader::new(rd, 8192),
        wr,
    };
    let params = [("user", "postgres"), ("replication", "true")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
    let startup = StartupMessage {
        minor_version: 0,
        params,
    };
    client
        .send(|out| StartupPacket::Startup(startup).write(out).unwrap())
        .await;
    client.until(b'Z').await;
    let sql = format!("START_REPLICATION SLOT d1 PHYSICAL {start}");
    client
        .send(|out| FrontendMessage::Query(sql).write(out).unwrap())
        .await;
    assert_eq!(client.recv().await.tag(), b'W');
    // A position moves, so the registry has something to save; the save stalls in fsync.
    ctx.slots().confirm_flush("d1", Lsn(0x200_0000)).unwrap();
    let saving = relay_runtime.spawn({
        let ctx = Arc::clone(&ctx);
        async move { ctx.save_slots().await }
    });
    entered
        .recv_timeout(Duration::from_secs(20))
        .expect("the slot file write never started");
    for _ in 0..50 {
        client.send(status(start, true)).await;
        let BackendMessage::CopyData(payload) = client.recv().await else {
            panic!("not a keepalive");
        };
        let ServerCopyData::Keepalive(k) = ServerCopyData::parse(payload).unwrap() else {
            panic!("not a keepalive");
        };
        assert!(!k.reply_requested);
    }
    assert!(!saving.is_finished(), "the save finished on a stalled disk");
    assert_eq!(ctx.slots().get("d1").unwrap().restart_lsn, Some(start));
    client
        .send(|out| FrontendMessage::Terminate.write(out).unwrap())
        .await;
    saving
}

fn status(at: Lsn, reply_requested: bool) -> impl FnOnce(&mut BytesMut) {
    let r = StandbyStatusUpdate {
        write: at,
        flush: at,
        apply: Lsn(0),
        send_time: PgTimestamp(0),
        reply_requested,
    };
    move |out: &mut BytesMut| ClientCopyData::StatusUpdate(r).write(out)
}

/// Lets a stalled disk go when dropped, so that a failing test never leaves a thread stuck.
struct ReleaseOnDrop(Arc<StallingDisk>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_updates_flow_while_the_slot_file_syncs_on_a_stalled_disk() {
    let t = tempfile::TempDir::new().unwrap();
    let Relay {
        _feed,
        ctx,
        disk,
        entered,
        start,
    } = relay(t.path());
    let _release = ReleaseOnDrop(Arc::clone(&disk));
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let session = DownstreamSession::new(
        ctx.session_config(
            &Access::default(),
            Peer::Tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ),
        Peer::Tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Arc::default(),
        [3; 18],
    );
    let conn = Connection::new(
        theirs,
        session,
        Arc::clone(&ctx),
        None,
        CancellationToken::new(),
    );
    let served = tokio::spawn(conn.run());
    let relay_runtime = tokio::runtime::Handle::current();
    let client_ctx = Arc::clone(&ctx);
    let exchange = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client(ours, client_ctx, relay_runtime, entered, start))
    });
    let saving = tokio::task::spawn_blocking(move || exchange.join())
        .await
        .unwrap();
    let saving = saving.expect("status updates stopped flowing while the slot file was synced");
    disk.release();
    saving.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .unwrap()
        .unwrap();
}

/// A CancelRequest wakes the backup of the connection it names only with that connection's
/// key, and names nothing once the backup is over.
#[tokio::test]
async fn a_cancel_request_reaches_a_backup_only_with_its_key() {
    let t = tempfile::TempDir::new().unwrap();
    let relay = relay(t.path());
    let ctx = relay.ctx;
    let (pid, key) = (BackendPid(42), 0x1234);
    let watch = ctx.watch_cancel(pid, key);
    let woken = || {
        let cancelled = std::pin::pin!(watch.cancelled());
        futures_now(cancelled)
    };
    ctx.cancel(pid, key + 1);
    ctx.cancel(BackendPid(43), key);
    assert!(!woken(), "a wrong key or pid");
    ctx.cancel(pid, key);
    assert!(woken());
    drop(watch);
    ctx.cancel(pid, key);
    let again = ctx.watch_cancel(pid, key);
    assert!(
        !futures_now(std::pin::pin!(again.cancelled())),
        "a request for a finished backup is not kept for the next"
    );
}

/// Retention's floor is the slots' oldest position in memory or on disk: a position that
/// moved counts once it is written, and not while the disk refuses it.
#[tokio::test]
async fn the_slots_hold_wal_back_to_their_positions_on_disk_until_those_are_written() {
    let t = tempfile::TempDir::new().unwrap();
    let relay = relay(t.path());
    relay.disk.release();
    let (ctx, start) = (relay.ctx, relay.start);
    assert_eq!(ctx.slots_floor(), Some(start));
    let later = Lsn(start.0 + 0x10_0000);
    ctx.slots().confirm_flush("d1", later).unwrap();
    assert_eq!(ctx.slots().min_restart_lsn(), Some(later));
    assert_eq!(ctx.slots_floor(), Some(start), "not written yet");
    relay
        .disk
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(ctx.save_slots().await.is_err());
    assert_eq!(ctx.slots_floor(), Some(start), "the disk refused it");
    relay
        .disk
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ctx.save_slots().await.unwrap();
    assert_eq!(ctx.slots_floor(), Some(later));
}

/// Whether `f` is ready at its first poll.
fn futures_now<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    f.poll(&mut cx).is_ready()
}
