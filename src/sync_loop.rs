//! The daemon's sync loop: one task owns the [`SyncCore`]; each connected
//! peer has a reader task (frames in) and a writer task (frames out, bounded
//! so a slow peer pushes back on the core instead of filling memory). The
//! loop itself only translates: links and timers become core inputs, core
//! outputs become frames, dropped links and installed paths.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use psync_base::DeviceId;
use psync_sync::message::{decode_frame, encode_frame};
use psync_sync::{Change, Input, Millis, Output, PeerProgress, SyncCore, SyncStorage};
use tokio::sync::mpsc;

use crate::status::SharedLive;
use crate::transport::{Link, LinkProbe, LinkSender, LinkStats};

/// Frames queued for one peer before the core waits.
const OUTBOUND_QUEUE: usize = 64;
/// Longest sleep when the core has no timer (it always has a heartbeat).
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// How long `psync status` waits for one link's counters.
const STATS_TIMEOUT: Duration = Duration::from_millis(200);

/// What the rest of the daemon tells the loop.
#[derive(Debug)]
pub enum Control {
    /// A link to this device passed the hello; it replaces any earlier one.
    Connected(DeviceId, Link),
    /// The filesystem committed a change.
    LocalChanged,
    /// The roster changed: the group's devices and the read-only ones.
    Group { devices: Vec<DeviceId>, read_only: Vec<DeviceId> },
    /// `psync status` asks where sync stands.
    Status(std::sync::mpsc::Sender<SyncSnapshot>),
}

/// Where sync stands, for `psync status`.
#[derive(Debug, Clone, Default)]
pub struct SyncSnapshot {
    /// Every peer with a link, and how far each side is.
    pub peers: Vec<PeerProgress>,
    /// When each peer was last heard from, connected or not (this run).
    pub last_seen: HashMap<DeviceId, Millis>,
    /// Records waiting for blocks, from all peers.
    pub waiting_records: usize,
    /// Blocks still to fetch.
    pub wanted_blocks: usize,
    /// Peers' versions held back while the local file is open for writing.
    pub held_records: usize,
    /// Each current link's counters.
    pub links: HashMap<DeviceId, LinkStats>,
}

enum Inbound {
    Frame(DeviceId, u64, Vec<u8>),
    Closed(DeviceId, u64),
}

struct Peer {
    generation: u64,
    outbound: mpsc::Sender<Vec<u8>>,
    probe: LinkProbe,
}

/// Wall-clock milliseconds; the core only compares them.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// Runs until `control` is closed. Paths installed from peers go to
/// `installed` (for the filesystem to show); an error means the store failed.
/// `live.linked` is kept equal to the peers with a link.
pub async fn run<S: SyncStorage>(
    mut core: SyncCore<S>,
    mut control: mpsc::Receiver<Control>,
    installed: mpsc::UnboundedSender<Vec<Change>>,
    live: SharedLive,
) -> anyhow::Result<SyncCore<S>> {
    let (inbound_tx, mut inbound) = mpsc::channel::<Inbound>(OUTBOUND_QUEUE);
    let mut peers: HashMap<DeviceId, Peer> = HashMap::new();
    let mut generation = 0u64;
    let mut last_seen: HashMap<DeviceId, Millis> = HashMap::new();
    loop {
        let wait = core.poll_timeout().map_or(IDLE_WAKEUP, |at| Duration::from_millis(at.saturating_sub(now_ms())));
        tokio::select! {
            event = control.recv() => match event {
                None => break,
                Some(Control::LocalChanged) => core.handle(now_ms(), Input::LocalChanged)?,
                Some(Control::Group { devices, read_only }) => core.set_group(devices, read_only),
                Some(Control::Status(reply)) => {
                    let mut links = HashMap::new();
                    for (device, peer) in &peers {
                        if let Ok(stats) = tokio::time::timeout(STATS_TIMEOUT, peer.probe.stats()).await {
                            links.insert(*device, stats);
                        }
                    }
                    let snapshot = SyncSnapshot {
                        links,
                        peers: core.peer_progress()?,
                        last_seen: last_seen.clone(),
                        waiting_records: core.pending_count(),
                        wanted_blocks: core.wanted_blocks(),
                        held_records: core.held_count(),
                    };
                    let _ = reply.send(snapshot);
                }
                Some(Control::Connected(device, link)) => {
                    generation += 1;
                    if peers.remove(&device).is_some() {
                        core.handle(now_ms(), Input::Disconnected(device))?;
                    }
                    peers.insert(device, start_peer(device, generation, link, inbound_tx.clone()));
                    live.update(|l| l.linked.insert(device));
                    core.handle(now_ms(), Input::Connected(device))?;
                }
            },
            Some(event) = inbound.recv() => match event {
                Inbound::Frame(device, generation, frame) => {
                    if peers.get(&device).is_some_and(|p| p.generation == generation) {
                        last_seen.insert(device, now_ms());
                        match decode_frame(&frame) {
                            Ok(message) => core.handle(now_ms(), Input::Message(device, message))?,
                            Err(e) => {
                                tracing::warn!(peer = %device, "malformed frame, dropping the connection: {e}");
                                drop_peer(&mut core, &mut peers, device, &live)?;
                            }
                        }
                    }
                }
                Inbound::Closed(device, generation) => {
                    if peers.get(&device).is_some_and(|p| p.generation == generation) {
                        tracing::info!(peer = %device, "connection closed");
                        drop_peer(&mut core, &mut peers, device, &live)?;
                    }
                }
            },
            _ = tokio::time::sleep(wait) => core.handle_timeout(now_ms())?,
        }
        while let Some(output) = core.poll_output() {
            match output {
                Output::Send(device, message) => {
                    let Some(peer) = peers.get(&device) else { continue };
                    match encode_frame(&message) {
                        // A closed writer shows up as Closed from the reader.
                        Ok(frame) => {
                            let _ = peer.outbound.send(frame).await;
                        }
                        Err(e) => tracing::error!(peer = %device, "cannot encode a message: {e}"),
                    }
                }
                Output::Installed(paths) => {
                    let _ = installed.send(paths);
                }
                Output::Violation(device, why) => {
                    tracing::warn!(peer = %device, "protocol violation, dropping the connection: {why}");
                    drop_peer(&mut core, &mut peers, device, &live)?;
                }
                Output::Inactive(device) => {
                    tracing::info!(peer = %device, "peer silent too long, dropping the connection");
                    drop_peer(&mut core, &mut peers, device, &live)?;
                }
            }
        }
    }
    Ok(core)
}

/// Forgets a peer's link (its writer ends and closes it) and tells the core.
fn drop_peer<S: SyncStorage>(
    core: &mut SyncCore<S>,
    peers: &mut HashMap<DeviceId, Peer>,
    device: DeviceId,
    live: &SharedLive,
) -> anyhow::Result<()> {
    peers.remove(&device);
    live.update(|l| l.linked.remove(&device));
    Ok(core.handle(now_ms(), Input::Disconnected(device))?)
}

/// Spawns the reader and writer of one link. Dropping the returned
/// [`Peer`] ends the writer, which closes the link, which ends the reader.
fn start_peer(device: DeviceId, generation: u64, link: Link, inbound: mpsc::Sender<Inbound>) -> Peer {
    let probe = link.probe();
    let (sender, mut receiver) = link.split();
    let (outbound, mut frames) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        write_frames(&sender, &mut frames).await;
        sender.close().await;
    });
    tokio::spawn(async move {
        while let Some(frame) = receiver.recv().await {
            if inbound.send(Inbound::Frame(device, generation, frame)).await.is_err() {
                return;
            }
        }
        let _ = inbound.send(Inbound::Closed(device, generation)).await;
    });
    Peer { generation, outbound, probe }
}

async fn write_frames(sender: &LinkSender, frames: &mut mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = sender.send(&frame).await {
            tracing::info!("peer link failed: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync_storage::tests::{devices, read, write};
    use psync_store::ROOT_INO;

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Two RocksDB stores, each with its own sync loop, over a real WebRTC
    /// link on loopback: a file written on one appears on the other, an edit
    /// comes back, and after the link drops and a new one is made the devices
    /// catch up on what changed meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_converge_over_webrtc() {
        let mut devs = devices(2);
        let b = devs.pop().unwrap();
        let a = devs.pop().unwrap();
        let (a_id, b_id) = (a.store.device(), b.store.device());
        let (a_store, b_store) = (a.store.clone(), b.store.clone());
        let (a_ctl, a_rx) = mpsc::channel(16);
        let (b_ctl, b_rx) = mpsc::channel(16);
        let (installed_tx, mut installed) = mpsc::unbounded_channel();
        let a_loop = tokio::spawn(run(a.core, a_rx, mpsc::unbounded_channel().0, SharedLive::default()));
        let b_loop = tokio::spawn(run(b.core, b_rx, installed_tx, SharedLive::default()));

        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
        write(&a_store, ROOT_INO, "note.md", b"# from a");
        write(&a_store, ROOT_INO, "paper.pdf", &big);
        a_ctl.send(Control::LocalChanged).await.unwrap();

        let (la, lb) = crate::transport::tests::pair().await;
        a_ctl.send(Control::Connected(b_id, la)).await.unwrap();
        b_ctl.send(Control::Connected(a_id, lb)).await.unwrap();
        eventually("a's files on b", || read(&b_store, "paper.pdf").as_deref() == Some(&big[..])).await;
        assert_eq!(read(&b_store, "note.md").unwrap(), b"# from a");
        assert!(installed.recv().await.is_some(), "installed paths are reported for the filesystem");

        write(&b_store, ROOT_INO, "note.md", b"# edited on b");
        b_ctl.send(Control::LocalChanged).await.unwrap();
        eventually("b's edit on a", || read(&a_store, "note.md").as_deref() == Some(&b"# edited on b"[..])).await;

        // A new link replaces the old one; changes made in between arrive.
        write(&a_store, ROOT_INO, "later.md", b"while reconnecting");
        a_ctl.send(Control::LocalChanged).await.unwrap();
        let (la, lb) = crate::transport::tests::pair().await;
        a_ctl.send(Control::Connected(b_id, la)).await.unwrap();
        b_ctl.send(Control::Connected(a_id, lb)).await.unwrap();
        eventually("later.md on b", || read(&b_store, "later.md").is_some()).await;

        drop((a_ctl, b_ctl));
        a_loop.await.unwrap().unwrap();
        b_loop.await.unwrap().unwrap();
    }
}
