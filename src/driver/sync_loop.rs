//! The daemon's sync loop: one task owns the [`SyncCore`]; each connected
//! peer has a reader task (frames in) and a writer task (frames out). The
//! loop never waits for one peer: frames for a peer queue up to a bound in
//! bytes, the core is told when a peer's queue is full (it stops bulk
//! sending to it) and when it has drained, and a peer whose queue passes the
//! hard bound is dropped. The loop only translates: links and timers become
//! core inputs, core outputs become frames, dropped links and installed
//! paths. An error the core reports is logged and sync goes on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use psync_base::DeviceId;
use psync_sync::message::{decode_frame, encode_frame};
use psync_sync::{Change, Input, Millis, Output, SyncCore, SyncError, SyncStorage};
use tokio::sync::mpsc;

use super::inbox::{Control, SyncSnapshot};
use crate::clock::{mono_ms, wall_ms};
use crate::live::SharedLive;
use crate::net::transport::{Link, LinkProbe, LinkSender};

/// Frames (count) read from all links and not yet handled; a fast sender
/// then waits in its reader task, never the loop.
const INBOUND_QUEUE: usize = 64;
/// Bytes queued for one peer past which the core stops bulk sending to it.
const CONGESTED_BYTES: usize = 8 << 20;
/// Bytes queued for one peer under which bulk sending resumes.
const DRAINED_BYTES: usize = 2 << 20;
/// Bytes queued for one peer past which it is dropped (it does not read).
const MAX_QUEUED_BYTES_PER_PEER: usize = 64 << 20;
/// Longest sleep when the core has no timer (it always has a heartbeat).
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// How long `psync status` waits for one link's counters.
const STATS_TIMEOUT: Duration = Duration::from_millis(200);

enum Inbound {
    Frame(DeviceId, u64, Vec<u8>),
    Closed(DeviceId, u64),
    /// The peer's queue drained below [`DRAINED_BYTES`].
    Drained(DeviceId, u64),
}

/// Frames waiting for one peer's writer, counted in bytes.
struct Outbound {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    congested: Arc<AtomicBool>,
}

struct Peer {
    generation: u64,
    outbound: Outbound,
    probe: LinkProbe,
}

/// Runs until `control` is closed. Paths installed from peers go to
/// `installed` (for the filesystem to show). `live.linked` is kept equal
/// to the peers with a link.
pub async fn run<S: SyncStorage>(
    mut core: SyncCore<S>,
    mut control: mpsc::Receiver<Control>,
    installed: mpsc::UnboundedSender<Vec<Change>>,
    live: SharedLive,
) -> SyncCore<S> {
    let (inbound_tx, mut inbound) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let mut peers: HashMap<DeviceId, Peer> = HashMap::new();
    let mut generation = 0u64;
    let mut last_seen: HashMap<DeviceId, Millis> = HashMap::new();
    let mut last_error: Option<String> = None;
    core.set_wall_clock(wall_ms());
    loop {
        let wait = core.poll_timeout().map_or(IDLE_WAKEUP, |at| Duration::from_millis(at.saturating_sub(mono_ms())));
        let result = tokio::select! {
            event = control.recv() => match event {
                None => break,
                Some(Control::LocalChanged) => core.handle(mono_ms(), Input::LocalChanged),
                Some(Control::Group { devices, read_only }) => {
                    core.set_group(devices, read_only);
                    Ok(())
                }
                Some(Control::Status(reply)) => {
                    let mut links = HashMap::new();
                    for (device, peer) in &peers {
                        if let Ok(stats) = tokio::time::timeout(STATS_TIMEOUT, peer.probe.stats()).await {
                            links.insert(*device, stats);
                        }
                    }
                    let snapshot = SyncSnapshot {
                        links,
                        peers: core.peer_progress().unwrap_or_default(),
                        last_seen: last_seen.clone(),
                        waiting_records: core.pending_count(),
                        wanted_blocks: core.wanted_blocks(),
                        held: core.held(),
                        disk_full: core.disk_full(),
                        last_error: last_error.clone(),
                        read_only: core.is_read_only(),
                        own_changes: core.own_changes().unwrap_or_default(),
                    };
                    let _ = reply.send(snapshot);
                    Ok(())
                }
                Some(Control::Restored(changes)) => {
                    let _ = installed.send(changes);
                    core.handle(mono_ms(), Input::LocalChanged)
                }
                Some(Control::Relayed(writer, bundle, reply)) => {
                    let result = core.handle(mono_ms(), Input::Relayed(writer, *bundle));
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    result
                }
                Some(Control::Revert(paths, reply)) => {
                    let result = core.revert(mono_ms(), paths);
                    let _ = reply.send(result.as_ref().map(|n| *n).map_err(|e| e.to_string()));
                    result.map(|_| ())
                }
                Some(Control::SetLimits { debounce_ms, upload, download }) => {
                    core.set_limits(mono_ms(), debounce_ms, upload, download);
                    // Work waiting on the old limits goes on under the new ones.
                    core.handle_timeout(mono_ms())
                }
                Some(Control::BetweenSteps(job)) => {
                    (job.0)(core.objects_in_waiting());
                    Ok(())
                }
                Some(Control::Connected(device, link)) => {
                    generation += 1;
                    let mut result = Ok(());
                    if peers.remove(&device).is_some() {
                        result = core.handle(mono_ms(), Input::Disconnected(device));
                    }
                    peers.insert(device, start_peer(device, generation, link, inbound_tx.clone()));
                    live.update(|l| l.linked.insert(device));
                    result.and(core.handle(mono_ms(), Input::Connected(device)))
                }
            },
            Some(event) = inbound.recv() => match event {
                Inbound::Frame(device, generation, frame) => {
                    if peers.get(&device).is_some_and(|p| p.generation == generation) {
                        last_seen.insert(device, mono_ms());
                        match decode_frame(&frame) {
                            Ok(message) => core.handle(mono_ms(), Input::Message(device, message)),
                            Err(e) => {
                                tracing::warn!(peer = %device, "malformed frame, dropping the connection: {e}");
                                drop_peer(&mut core, &mut peers, device, &live)
                            }
                        }
                    } else {
                        Ok(())
                    }
                }
                Inbound::Closed(device, generation) => {
                    if peers.get(&device).is_some_and(|p| p.generation == generation) {
                        tracing::info!(peer = %device, "connection closed");
                        drop_peer(&mut core, &mut peers, device, &live)
                    } else {
                        Ok(())
                    }
                }
                Inbound::Drained(device, generation) => {
                    if peers.get(&device).is_some_and(|p| p.generation == generation) {
                        core.handle(mono_ms(), Input::Congested(device, false))
                    } else {
                        Ok(())
                    }
                }
            },
            _ = tokio::time::sleep(wait) => {
                core.set_wall_clock(wall_ms());
                core.handle_timeout(mono_ms())
            }
        };
        if let Err(e) = result {
            report(&mut last_error, e);
        }
        while let Some(output) = core.poll_output() {
            let result = match output {
                Output::Send(device, message) => {
                    let Some(peer) = peers.get(&device) else { continue };
                    match encode_frame(&message) {
                        Ok(frame) => match queue(peer, frame) {
                            Queued::Fine => Ok(()),
                            Queued::Congested => core.handle(mono_ms(), Input::Congested(device, true)),
                            Queued::Overflow(bytes) => {
                                tracing::warn!(
                                    peer = %device,
                                    "the peer does not read ({} MiB queued), dropping the connection",
                                    bytes >> 20
                                );
                                drop_peer(&mut core, &mut peers, device, &live)
                            }
                        },
                        Err(e) => {
                            tracing::error!(peer = %device, "cannot encode a message: {e}");
                            Ok(())
                        }
                    }
                }
                Output::Installed(paths) => {
                    let _ = installed.send(paths);
                    Ok(())
                }
                Output::Violation(device, why) => {
                    tracing::warn!(peer = %device, "dropping the connection: {why}");
                    drop_peer(&mut core, &mut peers, device, &live)
                }
                Output::Inactive(device) => {
                    tracing::info!(peer = %device, "peer silent too long, dropping the connection");
                    drop_peer(&mut core, &mut peers, device, &live)
                }
            };
            if let Err(e) = result {
                report(&mut last_error, e);
            }
        }
    }
    core
}

/// Logs an error the core reported; sync goes on (what failed is retried
/// by the core's timers, or at the peer's next message).
fn report(last_error: &mut Option<String>, error: SyncError) {
    let text = error.to_string();
    if last_error.as_deref() != Some(&text) {
        tracing::error!("sync: {text}; going on");
    }
    *last_error = Some(text);
}

enum Queued {
    Fine,
    /// Past [`CONGESTED_BYTES`] just now.
    Congested,
    /// Past [`MAX_QUEUED_BYTES_PER_PEER`].
    Overflow(usize),
}

fn queue(peer: &Peer, frame: Vec<u8>) -> Queued {
    let out = &peer.outbound;
    let queued = out.queued.fetch_add(frame.len(), Ordering::SeqCst) + frame.len();
    if queued > MAX_QUEUED_BYTES_PER_PEER {
        return Queued::Overflow(queued);
    }
    // A closed writer shows up as Closed from the reader.
    let _ = out.frames.send(frame);
    if queued > CONGESTED_BYTES && !out.congested.swap(true, Ordering::SeqCst) {
        return Queued::Congested;
    }
    Queued::Fine
}

/// Forgets a peer's link (its writer ends and closes it) and tells the core.
fn drop_peer<S: SyncStorage>(
    core: &mut SyncCore<S>,
    peers: &mut HashMap<DeviceId, Peer>,
    device: DeviceId,
    live: &SharedLive,
) -> Result<(), SyncError> {
    peers.remove(&device);
    live.update(|l| l.linked.remove(&device));
    core.handle(mono_ms(), Input::Disconnected(device))
}

/// Spawns the reader and writer of one link. Dropping the returned
/// [`Peer`] ends the writer, which closes the link, which ends the reader.
fn start_peer(device: DeviceId, generation: u64, link: Link, inbound: mpsc::Sender<Inbound>) -> Peer {
    let probe = link.probe();
    let (sender, mut receiver) = link.split();
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let congested = Arc::new(AtomicBool::new(false));
    let outbound = Outbound { frames: frames_tx, queued: queued.clone(), congested: congested.clone() };
    let drained = inbound.clone();
    tokio::spawn(async move {
        write_frames(&sender, &mut frames, &queued, &congested, || {
            let _ = drained.try_send(Inbound::Drained(device, generation));
        })
        .await;
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

async fn write_frames(
    sender: &LinkSender,
    frames: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    queued: &AtomicUsize,
    congested: &AtomicBool,
    on_drained: impl Fn(),
) {
    while let Some(frame) = frames.recv().await {
        let len = frame.len();
        if let Err(e) = sender.send(&frame).await {
            tracing::info!("peer link failed: {e}");
            return;
        }
        let left = queued.fetch_sub(len, Ordering::SeqCst).saturating_sub(len);
        if left < DRAINED_BYTES && congested.swap(false, Ordering::SeqCst) {
            on_drained();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::storage::tests::{devices, read, write};
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

        let (la, lb) = crate::net::transport::tests::pair().await;
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
        let (la, lb) = crate::net::transport::tests::pair().await;
        a_ctl.send(Control::Connected(b_id, la)).await.unwrap();
        b_ctl.send(Control::Connected(a_id, lb)).await.unwrap();
        eventually("later.md on b", || read(&b_store, "later.md").is_some()).await;

        // A roster change that removes b: a drops the live link at once and
        // b's changes stop arriving.
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        a_ctl.send(Control::Group { devices: vec![a_id], read_only: vec![] }).await.unwrap();
        a_ctl.send(Control::Status(status_tx)).await.unwrap();
        let snapshot = tokio::task::spawn_blocking(move || status_rx.recv().unwrap()).await.unwrap();
        assert!(snapshot.peers.is_empty(), "the removed device's link is gone: {:?}", snapshot.peers);

        drop((a_ctl, b_ctl));
        a_loop.await.unwrap();
        b_loop.await.unwrap();
    }
}
