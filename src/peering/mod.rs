//! Peering: turns the signalling client's events into authenticated links
//! for the sync loop. For every online member the device with the smaller
//! key dials (offer in a signed envelope), the other answers; both check the
//! envelope against the roster, the SDP fingerprint against the pinned one,
//! then run the signed hello. Only then does the link reach the sync loop.
//!
//! The roster only ever grows along its own chain: a copy from the server
//! that is shorter or forks is refused loudly; a peer whose hello shows a
//! roster head this device does not know is refused until the server gives
//! that head (asked for at once). One member cannot exhaust this device:
//! one connection attempt per peer at a time, and a bounded rate of offers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use psync_base::ContentHash;
use psync_signal::dtls::DtlsCertificate;
use psync_signal::ice::IceServer;
use psync_signal::net::{ClientEvent, SignalClient};
use psync_signal::{DeviceKey, Envelope, PublicKey, ReplayGuard, Roster};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::wall_ms;
use crate::config::IceConfig;
use crate::driver::inbox::Control;
use crate::live::{SharedLive, SignallingState};
use crate::net::ice::{usable_addresses, IceSetup};
use crate::net::path::PathKind;
use crate::net::transport::{Negotiation, PeerSignal};

mod state;

use state::{Adopted, PeeringState};

/// How long a dialing device waits for the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long ICE, DTLS and the data channel may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often online peers without a link are looked at again.
const REDIAL_TICK: Duration = Duration::from_secs(2);
/// How often the local addresses are compared with the last look (a
/// laptop that changed networks or woke up redials within this).
const NETWORK_POLL: Duration = Duration::from_secs(2);

/// What this device brings to every connection.
#[derive(Debug, Clone)]
pub struct Me {
    /// Signs envelopes and hellos.
    pub key: Arc<DeviceKey>,
    /// Presented in DTLS; pinned in the roster.
    pub certificate: Arc<DtlsCertificate>,
    /// Bind addresses and ICE servers.
    pub ice: IceConfig,
    /// The STUN/TURN servers the signalling server handed out last.
    pub handed: Arc<std::sync::Mutex<Vec<IceServer>>>,
}

impl Me {
    /// This device with these ICE settings.
    pub fn new(key: Arc<DeviceKey>, certificate: Arc<DtlsCertificate>, ice: IceConfig) -> Self {
        Self { key, certificate, ice, handed: Arc::default() }
    }

    /// `signal` for `peer`, signed into an envelope of `roster`'s group.
    fn seal(&self, roster: &Roster, peer: PublicKey, session: u64, signal: PeerSignal) -> Result<Envelope> {
        Ok(Envelope::seal(&self.key, roster.group_id(), peer, session, 1, wall_ms(), signal.encode()?))
    }

    /// What the next connection attempt binds and asks.
    fn ice_setup(&self) -> IceSetup {
        let handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        IceSetup::resolve(&self.ice, &handed)
    }
}

/// The group as the sync core needs it.
fn group_of(state: &PeeringState) -> Control {
    let (devices, read_only) = state.group();
    Control::Group { devices, read_only }
}

/// Channels the connection tasks use to reach the peering loop.
#[derive(Clone)]
struct Tasks {
    relay: mpsc::UnboundedSender<Envelope>,
    answer_slots: mpsc::UnboundedSender<((PublicKey, u64), oneshot::Sender<String>)>,
    /// An attempt ended: how the link goes if one was made.
    done: mpsc::UnboundedSender<(PublicKey, Result<PathKind, ()>)>,
    /// A peer showed a roster head we do not know: ask the server.
    unknown_head: mpsc::UnboundedSender<ContentHash>,
    sync: mpsc::Sender<Control>,
}

/// The shell around [`PeeringState`]: the signalling client, the tasks
/// that connect, and what `psync status` sees.
struct Peering {
    me: Me,
    state: PeeringState,
    client: SignalClient,
    live: SharedLive,
    on_roster: Box<dyn Fn(&Roster) + Send>,
    tasks: Tasks,
    /// The answer being built for each peer's latest offer.
    answering: HashMap<PublicKey, tokio::task::AbortHandle>,
    replay: ReplayGuard,
    waiting_answers: HashMap<(PublicKey, u64), oneshot::Sender<String>>,
}

/// Runs until the signalling client or the sync loop goes away. `live`
/// shows what peering knows (for `psync status`, and the links the sync
/// loop holds); `on_roster` is called with each newer verified roster.
pub async fn run(
    me: Me,
    roster: Roster,
    client: SignalClient,
    sync: mpsc::Sender<Control>,
    live: SharedLive,
    on_roster: Box<dyn Fn(&Roster) + Send>,
) {
    let (relay, mut relay_rx) = mpsc::unbounded_channel();
    let (answer_slots, mut slots_rx) = mpsc::unbounded_channel();
    let (done, mut done_rx) = mpsc::unbounded_channel();
    let (unknown_head, mut unknown_rx) = mpsc::unbounded_channel();
    let tasks = Tasks { relay, answer_slots, done, unknown_head, sync };
    let mut p = Peering {
        state: PeeringState::new(me.key.public(), roster),
        me,
        client,
        live,
        on_roster,
        tasks,
        answering: HashMap::new(),
        replay: ReplayGuard::default(),
        waiting_answers: HashMap::new(),
    };
    let mut tick = tokio::time::interval(REDIAL_TICK);
    let mut network_poll = tokio::time::interval(NETWORK_POLL);
    let mut addresses = usable_addresses();
    p.live.update(|l| l.roster = Some(p.state.roster().clone()));
    let _ = p.tasks.sync.send(group_of(&p.state)).await;
    loop {
        tokio::select! {
            event = p.client.events.recv() => match event {
                Some(event) => p.on_event(event).await,
                None => return,
            },
            Some(envelope) = relay_rx.recv() => p.client.relay(envelope),
            Some((slot, tx)) = slots_rx.recv() => { p.waiting_answers.insert(slot, tx); }
            Some((peer, result)) = done_rx.recv() => {
                let now = Instant::now().into_std();
                p.state.finished(peer, result.is_ok(), now);
                if let Ok(kind) = result {
                    // A relay-only device's links are relayed by its own
                    // choice: trying to go direct would only cost allocations.
                    let upgradable = kind == PathKind::Relayed && !p.me.ice.relay_only;
                    p.state.linked(peer, upgradable, now);
                }
            }
            Some(head) = unknown_rx.recv() => {
                if !p.state.roster().has_entry(&head) {
                    p.roster_warning(format!(
                        "a peer's roster has an entry ({head}) the server has not shown this device; \
                         asking the server (no sync with that peer until then)"
                    ));
                    p.client.refresh_roster();
                }
            }
            _ = tick.tick() => p.redial(),
            _ = network_poll.tick() => {
                let now_addresses = usable_addresses();
                if now_addresses != addresses {
                    tracing::info!(
                        "the network changed (addresses now {:?}); reconnecting to the server and peers",
                        now_addresses
                    );
                    addresses = now_addresses;
                    p.network_changed();
                }
            }
        }
        if p.tasks.sync.is_closed() {
            return;
        }
    }
}

impl Peering {
    /// Links lost or attempts failed: try again those still online; and
    /// relayed links try to go direct.
    fn redial(&mut self) {
        let linked = self.live.read(|l| l.linked.clone());
        let now = Instant::now().into_std();
        for peer in self.state.due_redials(&linked, now) {
            self.dial(peer);
        }
        for peer in self.state.due_upgrades(&linked, now) {
            tracing::debug!(peer = %peer.device_id(), "trying to replace the relayed link with a direct one");
            spawn_dial(&self.me, self.state.roster(), peer, &self.tasks, Attempt::Upgrade);
        }
    }

    fn dial(&self, peer: PublicKey) {
        spawn_dial(&self.me, self.state.roster(), peer, &self.tasks, Attempt::Link);
    }

    /// This device's addresses changed: its links may be dead without
    /// knowing it. A new server connection, and new links to every linked
    /// peer (the dialing side offers; the other asks it to).
    fn network_changed(&mut self) {
        self.client.reconnect();
        let linked = self.live.read(|l| l.linked.clone());
        let peers: Vec<PublicKey> =
            self.state.roster().members().filter(|m| linked.contains(&m.key.device_id())).map(|m| m.key).collect();
        for peer in peers {
            if let Some(peer) = self.state.dial_now(peer) {
                self.dial(peer);
            } else if !crate::net::transport::offers_to(&self.me.key.public(), &peer) {
                self.send_signal(peer, rand::random(), PeerSignal::Redial);
            }
        }
    }

    fn send_signal(&self, peer: PublicKey, session: u64, signal: PeerSignal) {
        match self.me.seal(self.state.roster(), peer, session, signal) {
            Ok(envelope) => self.client.relay(envelope),
            Err(e) => tracing::warn!("cannot encode a signal: {e:#}"),
        }
    }

    /// Takes a copy of the roster from the server if it extends ours; a
    /// shorter or forked one is refused loudly.
    async fn adopt(&mut self, entries: Vec<psync_signal::RosterEntry>) {
        match self.state.adopt(entries) {
            Adopted::Same => {}
            Adopted::Newer => self.roster_changed(true).await,
            Adopted::Refused(why) => self.roster_warning(why),
        }
    }

    /// The roster in force changed: saved, shown, and told to the sync loop.
    async fn roster_changed(&mut self, clear_warning: bool) {
        let roster = self.state.roster().clone();
        (self.on_roster)(&roster);
        self.live.update(|l| {
            l.roster = Some(roster);
            if clear_warning {
                l.roster_warning = None;
            }
        });
        let _ = self.tasks.sync.send(group_of(&self.state)).await;
    }

    fn roster_warning(&self, warning: String) {
        tracing::error!("{warning}");
        self.live.update(|l| l.roster_warning = Some(warning));
    }

    async fn on_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::LoggedIn { roster: entries, online: now_online } => {
                self.adopt(entries).await;
                let dial = self.state.logged_in(now_online);
                let online = self.state.online_devices();
                self.live.update(|l| {
                    l.signalling = SignallingState::Connected;
                    l.online = online;
                });
                for peer in dial {
                    self.dial(peer);
                }
            }
            ClientEvent::Roster(entries) => self.adopt(entries).await,
            ClientEvent::Online(peer) => {
                let dial = self.state.came_online(peer);
                let online = self.state.online_devices();
                self.live.update(|l| l.online = online);
                if let Some(peer) = dial {
                    self.dial(peer);
                }
            }
            ClientEvent::Offline(peer) => {
                self.state.went_offline(&peer);
                self.live.update(|l| l.online.remove(&peer.device_id()));
            }
            ClientEvent::RosterAppended(entry) => match self.state.append(entry) {
                Ok(()) => self.roster_changed(false).await,
                Err(e) => {
                    tracing::warn!("refused a roster entry ({e}); asking the server for the whole roster");
                    self.client.refresh_roster();
                }
            },
            ClientEvent::Relayed(envelope) => self.on_envelope(envelope),
            ClientEvent::Disconnected(why) => {
                tracing::info!("signalling server connection lost: {why}");
                self.state.disconnected();
                self.live.update(|l| {
                    l.signalling = SignallingState::Lost(why);
                    l.online.clear();
                });
            }
            ClientEvent::Refused(why) => {
                tracing::warn!("signalling server refused: {why}");
                self.live.update(|l| l.signalling = SignallingState::Refused(why));
            }
            ClientEvent::IceServers { servers, expires_ms } => {
                let urls: Vec<&str> = servers.iter().flat_map(|s| s.urls.iter().map(String::as_str)).collect();
                tracing::info!(
                    "the signalling server hands out ICE servers {urls:?} (credentials until {})",
                    crate::clock::local_time(expires_ms)
                );
                *self.me.handed.lock().unwrap_or_else(|p| p.into_inner()) = servers;
            }
            ClientEvent::InviteOpened(_) | ClientEvent::InviteMsg { .. } => {}
        }
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        let from = envelope.from;
        let payload = match envelope.open(self.state.roster(), &self.me.key.public(), wall_ms(), &mut self.replay) {
            Ok(payload) => payload.to_vec(),
            Err(e) => {
                tracing::warn!(from = %from.device_id(), "refused an envelope: {e}");
                return;
            }
        };
        match PeerSignal::decode(&payload) {
            Ok(PeerSignal::Offer(offer)) => self.take_offer(from, envelope.session, offer, Attempt::Link),
            Ok(PeerSignal::Upgrade(offer)) => self.take_offer(from, envelope.session, offer, Attempt::Upgrade),
            Ok(PeerSignal::Redial) => {
                if !self.state.offer_allowed(from, Instant::now().into_std()) {
                    tracing::warn!(from = %from.device_id(), "too many redial requests; ignoring this one");
                } else if let Some(peer) = self.state.dial_now(from) {
                    tracing::info!(peer = %peer.device_id(), "the peer's network changed; dialing it again");
                    self.dial(peer);
                }
            }
            Ok(PeerSignal::Answer(sdp)) => match self.waiting_answers.remove(&(from, envelope.session)) {
                Some(slot) => {
                    let _ = slot.send(sdp);
                }
                None => tracing::warn!(from = %from.device_id(), "an answer nobody waits for"),
            },
            Err(e) => tracing::warn!(from = %from.device_id(), "{e:#}"),
        }
    }
}

/// Why a connection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// To have a link.
    Link,
    /// To replace a relayed link with a direct one: a relayed result is
    /// dropped and the old link kept.
    Upgrade,
}

impl Peering {
    /// Answers a peer's offer (one attempt per peer: a newer offer replaces
    /// the answer still being built for an older one).
    fn take_offer(&mut self, from: PublicKey, session: u64, offer: String, attempt: Attempt) {
        if !self.state.offer_allowed(from, Instant::now().into_std()) {
            tracing::warn!(from = %from.device_id(), "too many connection offers; ignoring this one");
            return;
        }
        if let Some(previous) = self.answering.remove(&from) {
            previous.abort();
        }
        let (me, roster, tasks) = (self.me.clone(), self.state.roster().clone(), self.tasks.clone());
        let handle = tokio::spawn(async move {
            match answer(me, roster, from, session, offer, attempt, &tasks).await {
                Ok(kind) => {
                    let _ = tasks.done.send((from, Ok(kind)));
                }
                Err(e) => tracing::warn!(peer = %from.device_id(), "could not accept a connection: {e:#}"),
            }
        });
        self.answering.insert(from, handle.abort_handle());
    }
}

fn spawn_dial(me: &Me, roster: &Roster, peer: PublicKey, tasks: &Tasks, attempt: Attempt) {
    let (me, roster, tasks) = (me.clone(), roster.clone(), tasks.clone());
    tokio::spawn(async move {
        let result = dial(me, roster, peer, attempt, &tasks).await;
        if let Err(e) = &result {
            tracing::warn!(peer = %peer.device_id(), "could not connect: {e:#}");
        }
        let _ = tasks.done.send((peer, result.map_err(|_| ())));
    });
}

fn pinned(roster: &Roster, peer: &PublicKey) -> Result<String> {
    roster.fingerprint(peer).map(str::to_string).ok_or_else(|| anyhow!("no DTLS fingerprint pinned for the peer"))
}

async fn dial(me: Me, roster: Roster, peer: PublicKey, attempt: Attempt, tasks: &Tasks) -> Result<PathKind> {
    let pinned = pinned(&roster, &peer)?;
    let mut negotiation = Negotiation::new(&me.certificate, &me.ice_setup()).await?;
    let offer = negotiation.offer().await?;
    let session = rand::random::<u64>();
    let (answer_tx, answer_rx) = oneshot::channel();
    tasks.answer_slots.send(((peer, session), answer_tx)).map_err(|_| anyhow!("peering stopped"))?;
    let signal = match attempt {
        Attempt::Link => PeerSignal::Offer(offer),
        Attempt::Upgrade => PeerSignal::Upgrade(offer),
    };
    tasks.relay.send(me.seal(&roster, peer, session, signal)?).ok();
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, answer_rx)
        .await
        .context("no answer in time")?
        .map_err(|_| anyhow!("peering stopped"))?;
    negotiation.accept(&answer, &pinned).await?;
    finish(me, roster, peer, pinned, negotiation, attempt, tasks).await
}

async fn answer(
    me: Me,
    roster: Roster,
    peer: PublicKey,
    session: u64,
    offer: String,
    attempt: Attempt,
    tasks: &Tasks,
) -> Result<PathKind> {
    let pinned = pinned(&roster, &peer)?;
    let mut negotiation = Negotiation::new(&me.certificate, &me.ice_setup()).await?;
    let sdp = negotiation.answer(&offer, &pinned).await?;
    tasks.relay.send(me.seal(&roster, peer, session, PeerSignal::Answer(sdp))?).ok();
    finish(me, roster, peer, pinned, negotiation, attempt, tasks).await
}

async fn finish(
    me: Me,
    roster: Roster,
    peer: PublicKey,
    pinned: String,
    negotiation: Negotiation,
    attempt: Attempt,
    tasks: &Tasks,
) -> Result<PathKind> {
    let mut link = negotiation.connect(CONNECT_TIMEOUT).await?;
    let mine = me.certificate.fingerprint();
    let their_head = match link.hello(&me.key, peer, &roster, (&mine, &pinned)).await {
        Ok(head) => head,
        Err(e) => {
            link.close().await;
            return Err(e);
        }
    };
    // A peer whose roster has an entry we lack may know of a change the
    // server has not shown us (a removal, say): no sync with it until the
    // server's copy has that entry too.
    if their_head != roster.head() && !roster.has_entry(&their_head) {
        let _ = tasks.unknown_head.send(their_head);
        link.close().await;
        bail!("the peer's roster has an entry this device does not know ({their_head}); asked the server for it");
    }
    let path = link.probe().stats().await.path;
    let kind = path.as_ref().map_or(PathKind::Direct, |p| p.kind);
    if attempt == Attempt::Upgrade && kind == PathKind::Relayed {
        tracing::debug!(peer = %peer.device_id(), "still relayed; keeping the link there is");
        link.close().await;
        return Ok(kind);
    }
    match &path {
        Some(p) => {
            let via = p.relay.as_ref().map(|r| format!(" via {r}")).unwrap_or_default();
            tracing::info!(peer = %peer.device_id(), "connected ({}{via}: {} <-> {})", p.kind.word(), p.local, p.remote);
        }
        None => tracing::info!(peer = %peer.device_id(), "connected"),
    }
    tasks.sync.send(Control::Connected(peer.device_id(), link)).await.map_err(|_| anyhow!("the sync loop stopped"))?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::mono_ms;
    use crate::driver::storage::tests::{read, write};
    use crate::driver::storage::StoreSync;
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
        let (_server_dir, url) = crate::net::transport::tests::signal_server().await;

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
            tokio::spawn(crate::driver::sync_loop::run(core, control_rx, mpsc::unbounded_channel().0, live.clone()));
            let client = SignalClient::spawn(url.clone(), group, keys[i].clone());
            let me = Me::new(keys[i].clone(), certs[i].clone(), IceConfig::loopback());
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
