//! Peering: turns the signalling client's events into authenticated links
//! for the sync loop. For every online member the device with the smaller
//! key dials (offer in a signed envelope), the other answers; both check the
//! envelope against the roster, the SDP fingerprint against the pinned one,
//! then run the signed hello. Only then does the link reach the sync loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use psync_signal::dtls::DtlsCertificate;
use psync_signal::net::{ClientEvent, SignalClient};
use psync_signal::{DeviceKey, Envelope, PublicKey, ReplayGuard, Role, Roster};
use tokio::sync::{mpsc, oneshot};

use crate::status::{SharedLive, SignallingState};
use crate::sync_loop::{wall_ms, Control};
use crate::transport::{offers_to, IceConfig, Negotiation, PeerSignal};

/// How long a dialing device waits for the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long ICE, DTLS and the data channel may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often online peers without a link are looked at again.
const REDIAL_TICK: Duration = Duration::from_secs(2);
/// Waits between failed attempts to reach one peer: doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What this device brings to every connection.
#[derive(Debug, Clone)]
pub struct Me {
    /// Signs envelopes and hellos.
    pub key: Arc<DeviceKey>,
    /// Presented in DTLS; pinned in the roster.
    pub certificate: Arc<DtlsCertificate>,
    /// Bind addresses and ICE servers.
    pub ice: IceConfig,
}

/// The group as the sync core needs it: all active devices, and the read-only ones.
fn group_of(roster: &Roster) -> Control {
    let active = || roster.members().filter(|m| !m.removed);
    Control::Group {
        devices: active().map(|m| m.key.device_id()).collect(),
        read_only: active().filter(|m| m.role == Role::ReadOnly).map(|m| m.key.device_id()).collect(),
    }
}

/// Attempts to reach one peer: at most one at a time, with growing waits
/// between failures.
#[derive(Debug, Default)]
struct Attempts {
    running: HashSet<PublicKey>,
    failures: HashMap<PublicKey, (u32, tokio::time::Instant)>,
}

impl Attempts {
    fn may_start(&self, peer: &PublicKey, now: tokio::time::Instant) -> bool {
        !self.running.contains(peer) && self.failures.get(peer).is_none_or(|(_, retry_at)| now >= *retry_at)
    }

    fn finished(&mut self, peer: PublicKey, ok: bool, now: tokio::time::Instant) {
        self.running.remove(&peer);
        if ok {
            self.failures.remove(&peer);
        } else {
            let count = self.failures.get(&peer).map_or(0, |(n, _)| *n);
            let wait = FIRST_BACKOFF.saturating_mul(1 << count.min(6)).min(MAX_BACKOFF);
            self.failures.insert(peer, (count + 1, now + wait));
        }
    }
}

/// Runs until the signalling client or the sync loop goes away. `live`
/// shows what peering knows (for `psync status`, and the links the sync
/// loop holds); `on_roster` is called with each newer verified roster.
pub async fn run(
    me: Me,
    mut roster: Roster,
    mut client: SignalClient,
    sync: mpsc::Sender<Control>,
    live: SharedLive,
    on_roster: Box<dyn Fn(&Roster) + Send>,
) {
    let group = roster.group_id();
    let mut replay = ReplayGuard::default();
    let mut waiting_answers: HashMap<(PublicKey, u64), oneshot::Sender<String>> = HashMap::new();
    let (relay_tx, mut relay_rx) = mpsc::unbounded_channel::<Envelope>();
    let (answer_slot_tx, mut answer_slot_rx) = mpsc::unbounded_channel::<((PublicKey, u64), oneshot::Sender<String>)>();
    let (attempt_tx, mut attempt_rx) = mpsc::unbounded_channel::<(PublicKey, bool)>();
    let mut attempts = Attempts::default();
    let mut online: HashSet<PublicKey> = HashSet::new();
    let mut tick = tokio::time::interval(REDIAL_TICK);
    live.update(|l| l.roster = Some(roster.clone()));
    let _ = sync.send(group_of(&roster)).await;
    loop {
        let event = tokio::select! {
            event = client.events.recv() => match event { Some(e) => e, None => return },
            Some(envelope) = relay_rx.recv() => { client.relay(envelope); continue }
            Some((slot, tx)) = answer_slot_rx.recv() => { waiting_answers.insert(slot, tx); continue }
            Some((peer, ok)) = attempt_rx.recv() => {
                attempts.finished(peer, ok, tokio::time::Instant::now());
                continue
            }
            _ = tick.tick() => {
                // Links lost or attempts failed: try again those still online.
                let linked = live.read(|l| l.linked.clone());
                let now = tokio::time::Instant::now();
                for peer in online.iter().copied() {
                    if !linked.contains(&peer.device_id())
                        && offers_to(&me.key.public(), &peer)
                        && roster.is_active(&peer)
                        && attempts.may_start(&peer, now)
                    {
                        attempts.running.insert(peer);
                        spawn_dial(&me, &roster, peer, &sync, &relay_tx, &answer_slot_tx, &attempt_tx);
                    }
                }
                continue
            }
        };
        if sync.is_closed() {
            return;
        }
        let dial = |peer: PublicKey, roster: &Roster, attempts: &mut Attempts| {
            if peer != me.key.public()
                && roster.is_active(&peer)
                && offers_to(&me.key.public(), &peer)
                && !attempts.running.contains(&peer)
            {
                // The peer just appeared: no waiting out earlier failures.
                attempts.failures.remove(&peer);
                attempts.running.insert(peer);
                spawn_dial(&me, roster, peer, &sync, &relay_tx, &answer_slot_tx, &attempt_tx);
            }
        };
        match event {
            ClientEvent::LoggedIn { roster: entries, online: now_online } => {
                match Roster::from_entries(entries) {
                    Ok(fresh) if fresh.group_id() == group && fresh.entries().len() >= roster.entries().len() => {
                        if fresh.entries().len() > roster.entries().len() {
                            on_roster(&fresh);
                        }
                        roster = fresh;
                        let _ = sync.send(group_of(&roster)).await;
                    }
                    Ok(_) => tracing::warn!("the server's roster is older or for another group; keeping ours"),
                    Err(e) => tracing::warn!("the server's roster does not verify; keeping ours: {e}"),
                }
                online = now_online.iter().copied().filter(|p| *p != me.key.public()).collect();
                live.update(|l| {
                    l.signalling = SignallingState::Connected;
                    l.online = online.iter().map(PublicKey::device_id).collect();
                    l.roster = Some(roster.clone());
                });
                for peer in now_online {
                    dial(peer, &roster, &mut attempts);
                }
            }
            ClientEvent::Online(peer) => {
                online.insert(peer);
                live.update(|l| l.online.insert(peer.device_id()));
                dial(peer, &roster, &mut attempts)
            }
            ClientEvent::Offline(peer) => {
                online.remove(&peer);
                live.update(|l| l.online.remove(&peer.device_id()));
            }
            ClientEvent::RosterAppended(entry) => match roster.apply(entry) {
                Ok(()) => {
                    on_roster(&roster);
                    live.update(|l| l.roster = Some(roster.clone()));
                    let _ = sync.send(group_of(&roster)).await;
                }
                Err(e) => tracing::warn!("refused a roster entry: {e}"),
            },
            ClientEvent::Relayed(envelope) => {
                let payload = match envelope.open(&roster, &me.key.public(), wall_ms(), &mut replay) {
                    Ok(payload) => payload.to_vec(),
                    Err(e) => {
                        tracing::warn!(from = %envelope.from.device_id(), "refused an envelope: {e}");
                        continue;
                    }
                };
                match PeerSignal::decode(&payload) {
                    Ok(PeerSignal::Offer(offer)) => {
                        let (me, roster, sync, relay) = (me.clone(), roster.clone(), sync.clone(), relay_tx.clone());
                        let (peer, session) = (envelope.from, envelope.session);
                        tokio::spawn(async move {
                            if let Err(e) = answer(me, roster, peer, session, offer, sync, relay).await {
                                tracing::warn!(peer = %peer.device_id(), "could not accept a connection: {e:#}");
                            }
                        });
                    }
                    Ok(PeerSignal::Answer(sdp)) => match waiting_answers.remove(&(envelope.from, envelope.session)) {
                        Some(slot) => {
                            let _ = slot.send(sdp);
                        }
                        None => tracing::warn!(from = %envelope.from.device_id(), "an answer nobody waits for"),
                    },
                    Err(e) => tracing::warn!(from = %envelope.from.device_id(), "{e:#}"),
                }
            }
            ClientEvent::Disconnected(why) => {
                tracing::info!("signalling server connection lost: {why}");
                online.clear();
                live.update(|l| {
                    l.signalling = SignallingState::Lost(why);
                    l.online.clear();
                });
            }
            ClientEvent::Refused(why) => {
                tracing::warn!("signalling server refused: {why}");
                live.update(|l| l.signalling = SignallingState::Refused(why));
            }
            ClientEvent::InviteOpened(_) | ClientEvent::InviteMsg { .. } => {}
        }
    }
}

fn spawn_dial(
    me: &Me,
    roster: &Roster,
    peer: PublicKey,
    sync: &mpsc::Sender<Control>,
    relay: &mpsc::UnboundedSender<Envelope>,
    slots: &mpsc::UnboundedSender<((PublicKey, u64), oneshot::Sender<String>)>,
    done: &mpsc::UnboundedSender<(PublicKey, bool)>,
) {
    let (me, roster, sync, relay, slots, done) =
        (me.clone(), roster.clone(), sync.clone(), relay.clone(), slots.clone(), done.clone());
    tokio::spawn(async move {
        let result = dial(me, roster, peer, sync, relay, slots).await;
        if let Err(e) = &result {
            tracing::warn!(peer = %peer.device_id(), "could not connect: {e:#}");
        }
        let _ = done.send((peer, result.is_ok()));
    });
}

fn pinned(roster: &Roster, peer: &PublicKey) -> Result<String> {
    roster.fingerprint(peer).map(str::to_string).ok_or_else(|| anyhow!("no DTLS fingerprint pinned for the peer"))
}

async fn dial(
    me: Me,
    roster: Roster,
    peer: PublicKey,
    sync: mpsc::Sender<Control>,
    relay: mpsc::UnboundedSender<Envelope>,
    slots: mpsc::UnboundedSender<((PublicKey, u64), oneshot::Sender<String>)>,
) -> Result<()> {
    let pinned = pinned(&roster, &peer)?;
    let mut negotiation = Negotiation::new(&me.certificate, &me.ice).await?;
    let offer = negotiation.offer().await?;
    let session = rand::random::<u64>();
    let (answer_tx, answer_rx) = oneshot::channel();
    slots.send(((peer, session), answer_tx)).map_err(|_| anyhow!("peering stopped"))?;
    let payload = PeerSignal::Offer(offer).encode()?;
    relay.send(Envelope::seal(&me.key, roster.group_id(), peer, session, 1, wall_ms(), payload)).ok();
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, answer_rx)
        .await
        .context("no answer in time")?
        .map_err(|_| anyhow!("peering stopped"))?;
    negotiation.accept(&answer, &pinned).await?;
    finish(me, roster, peer, pinned, negotiation, sync).await
}

async fn answer(
    me: Me,
    roster: Roster,
    peer: PublicKey,
    session: u64,
    offer: String,
    sync: mpsc::Sender<Control>,
    relay: mpsc::UnboundedSender<Envelope>,
) -> Result<()> {
    let pinned = pinned(&roster, &peer)?;
    let mut negotiation = Negotiation::new(&me.certificate, &me.ice).await?;
    let sdp = negotiation.answer(&offer, &pinned).await?;
    let payload = PeerSignal::Answer(sdp).encode()?;
    relay.send(Envelope::seal(&me.key, roster.group_id(), peer, session, 1, wall_ms(), payload)).ok();
    finish(me, roster, peer, pinned, negotiation, sync).await
}

async fn finish(
    me: Me,
    roster: Roster,
    peer: PublicKey,
    pinned: String,
    negotiation: Negotiation,
    sync: mpsc::Sender<Control>,
) -> Result<()> {
    let mut link = negotiation.connect(CONNECT_TIMEOUT).await?;
    let mine = me.certificate.fingerprint();
    if let Err(e) = link.hello(&me.key, peer, &roster, (&mine, &pinned)).await {
        link.close().await;
        return Err(e);
    }
    tracing::info!(peer = %peer.device_id(), "connected");
    sync.send(Control::Connected(peer.device_id(), link)).await.map_err(|_| anyhow!("the sync loop stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync_loop::mono_ms;
    use crate::sync_storage::tests::{read, write};
    use crate::sync_storage::StoreSync;
    use psync_signal::net::register;
    use psync_signal::{Role, RosterOp};
    use psync_store::{Store, ROOT_INO};
    use psync_sync::{SyncConfig, SyncCore};

    /// Everything `psync mount` will run for sync, minus FUSE: a real
    /// signalling server on loopback, two devices each with a RocksDB store,
    /// a sync loop, a signalling client and peering. The devices find each
    /// other, connect over WebRTC and converge.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_devices_find_each_other_and_converge() {
        let (_server_dir, url) = crate::transport::tests::signal_server().await;

        let keys = [Arc::new(DeviceKey::generate()), Arc::new(DeviceKey::generate())];
        let certs = [Arc::new(DtlsCertificate::generate().unwrap()), Arc::new(DtlsCertificate::generate().unwrap())];
        let mut roster = Roster::create(&keys[0], "notes", "laptop", &certs[0].fingerprint(), 1);
        let add = RosterOp::Add {
            key: keys[1].public(),
            name: "desktop".into(),
            role: Role::Full,
            dtls_fingerprint: certs[1].fingerprint(),
        };
        let entry = roster.sign_next(&keys[0], add, 2);
        roster.apply(entry).unwrap();
        let group = register(&url, &roster).await.unwrap();
        let ids: Vec<_> = keys.iter().map(|k| k.public().device_id()).collect();

        let mut stores = Vec::new();
        let mut controls = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open_or_create(dir.path(), ids[i]).unwrap());
            let core = SyncCore::new(StoreSync::new(store.clone()), SyncConfig::new(ids.clone()), i as u64, mono_ms());
            let (control, control_rx) = mpsc::channel(16);
            let live = SharedLive::default();
            tokio::spawn(crate::sync_loop::run(core, control_rx, mpsc::unbounded_channel().0, live.clone()));
            let client = SignalClient::spawn(url.clone(), group, keys[i].clone());
            let me = Me { key: keys[i].clone(), certificate: certs[i].clone(), ice: IceConfig::loopback() };
            tokio::spawn(run(me, roster.clone(), client, control.clone(), live, Box::new(|_| {})));
            stores.push(store);
            controls.push(control);
            dirs.push(dir);
        }

        write(&stores[0], ROOT_INO, "hello.md", b"# written on the laptop");
        controls[0].send(Control::LocalChanged).await.unwrap();
        write(&stores[1], ROOT_INO, "other.md", b"# written on the desktop");
        controls[1].send(Control::LocalChanged).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while read(&stores[1], "hello.md").is_none() || read(&stores[0], "other.md").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "the devices did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(read(&stores[1], "hello.md").unwrap(), b"# written on the laptop");
        assert_eq!(read(&stores[0], "other.md").unwrap(), b"# written on the desktop");
    }
}
