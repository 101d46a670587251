//! Relay storage from the device's side: while some member is offline,
//! this device leaves its changes at the relay (sealed under the group's
//! content key, signed); at mount and now and then it takes what offline
//! members left there and hands it to the sync loop, which checks every
//! record and block as from any peer. Progress is kept in the data dir
//! ([`progress`]), so a restart goes on where it stopped.
//!
//! The relay is optional and never in the way: when it is unreachable,
//! peer-to-peer sync goes on and the reason shows in `psync status`.

pub mod progress;
pub mod sleep;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use psync_base::{ContentHash, DeviceId};
use psync_signal::net::{NetError, RelayClient};
use psync_signal::relay::policy::{RelayPut, RelayRefusal};
use psync_signal::relay::seal::{sign_object, verify_object, Keyring, ObjectName, SealError};
use psync_signal::relay::wrap::SignedWrap;
use psync_signal::{DeviceKey, Role, Roster};
use psync_sync::relay::{BundleCutter, RelayBundle};
use psync_sync::SyncStorage;
use tokio::sync::{mpsc, oneshot};

use crate::clock::wall_ms;
use crate::driver::inbox::Control;
use crate::driver::storage::StoreSync;
use crate::live::{RelayLive, SharedLive};
use progress::Progress;

/// How often this device looks for changes to upload (a debounce too).
const UPLOAD_CHECK: Duration = Duration::from_secs(2);
/// How often it looks for what others left while it is mounted.
const DOWNLOAD_CHECK: Duration = Duration::from_secs(30);
/// First wait before reconnecting to an unreachable relay; doubles up to
/// [`MAX_RECONNECT_WAIT`].
const FIRST_RECONNECT_WAIT: Duration = Duration::from_secs(1);
/// Longest such wait.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(60);
/// Changes still to upload are counted up to this (count), for status.
const MAX_COUNTED_CHANGES: u64 = 100_000;
/// Index entries read per step when counting them (count).
const COUNT_BATCH: usize = 1_000;
/// Refused objects kept for `psync status` (count).
const MAX_REFUSED_SHOWN: usize = 20;
/// Longest wait the relay's rate limit may ask for before an upload
/// round gives up until the next check.
const MAX_RATE_WAIT: Duration = Duration::from_secs(10);

/// Asks the relay task to upload everything now; answered when done (or
/// when it cannot).
pub type FlushRequest = oneshot::Sender<()>;

/// Asks the relay task to upload everything now and waits, from a thread
/// outside the runtime, at most `timeout`; whether it finished.
pub fn flush_blocking(flush: &mpsc::Sender<FlushRequest>, timeout: Duration) -> bool {
    let (reply, mut done) = oneshot::channel();
    if flush.blocking_send(reply).is_err() {
        return false;
    }
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match done.try_recv() {
            Ok(()) => return true,
            Err(oneshot::error::TryRecvError::Closed) => return false,
            Err(oneshot::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// What the relay task needs.
pub struct RelayTask {
    /// Signalling server URL (the relay is on it).
    pub server: String,
    /// The group.
    pub group: ContentHash,
    /// This device.
    pub key: Arc<DeviceKey>,
    /// The data dir (progress file).
    pub data_dir: PathBuf,
    /// The store, read for uploads.
    pub storage: StoreSync,
    /// The sync loop, fed with what others left.
    pub control: mpsc::Sender<Control>,
    /// Shared with `psync status`; its roster is the newest verified one.
    pub live: SharedLive,
    /// The roster at start.
    pub roster: Roster,
    /// How long a change may wait for every member to take it directly
    /// before it goes to the relay (a flush sends at once): with every
    /// member online, nothing is uploaded.
    pub upload_delay: Duration,
}

impl std::fmt::Debug for RelayTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTask").field("server", &self.server).finish_non_exhaustive()
    }
}

/// Why an object from the relay was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// Sealed under a newer key than this device holds yet: asked again
    /// once the key's wrap arrives (not acknowledged meanwhile).
    Later(String),
    /// Never installable: reported and acknowledged.
    Refused(String),
}

/// Checks and opens one object `name` fetched from the relay: its writer
/// is an active full member whose signature holds, it is sealed under a
/// group key this device holds for this name, and it is a bundle.
pub fn open_object(
    roster: &Roster,
    ring: &Keyring,
    name: &ObjectName,
    signature: &psync_signal::SignatureBytes,
    sealed: &[u8],
) -> Result<RelayBundle, NotTaken> {
    let group = roster.group_id();
    let writer = roster
        .members()
        .find(|m| !m.removed && m.key.device_id() == name.writer)
        .ok_or(NotTaken::Refused("its writer is not a member of the group".into()))?;
    if writer.role == Role::ReadOnly {
        return Err(NotTaken::Refused("its writer is read-only".into()));
    }
    verify_object(&writer.key, &group, name, sealed, signature)
        .map_err(|_| NotTaken::Refused("its signature does not hold".into()))?;
    let plain = match ring.open(&group, name, sealed) {
        Ok(plain) => plain,
        Err(SealError::UnknownEpoch(epoch)) if ring.current().is_none_or(|k| epoch > k.epoch()) => {
            return Err(NotTaken::Later(format!("sealed under key epoch {epoch}, not here yet")))
        }
        Err(e) => return Err(NotTaken::Refused(format!("it does not open: {e}"))),
    };
    RelayBundle::decode(&plain).map_err(|e| NotTaken::Refused(e.to_string()))
}

impl RelayTask {
    /// Runs until `flush` closes (the daemon is exiting).
    pub async fn run(self, mut flush: mpsc::Receiver<FlushRequest>) {
        let mut progress = Progress::load(&self.data_dir);
        let mut wait = FIRST_RECONNECT_WAIT;
        self.live.update(|l| l.relay = Some(RelayLive::default()));
        loop {
            match self.session(&mut progress, &mut flush).await {
                Ok(()) => return,
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::info!("relay: {why}");
                    self.show(|r| {
                        r.reachable = false;
                        r.last_error = Some(why);
                    });
                }
            }
            // Unreachable: a flush is answered at once (nothing can go).
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = flush.recv() => match request {
                        Some(reply) => { let _ = reply.send(()); }
                        None => return,
                    },
                }
            }
            wait = (wait * 2).min(MAX_RECONNECT_WAIT);
        }
    }

    fn show(&self, change: impl FnOnce(&mut RelayLive)) {
        self.live.update(|l| change(l.relay.get_or_insert_with(RelayLive::default)));
    }

    fn roster(&self) -> Roster {
        self.live.read(|l| l.roster.clone()).unwrap_or_else(|| self.roster.clone())
    }

    fn me(&self) -> DeviceId {
        self.key.public().device_id()
    }

    async fn session(&self, progress: &mut Progress, flush: &mut mpsc::Receiver<FlushRequest>) -> Result<()> {
        let mut client = RelayClient::connect(&self.server, self.group, &self.key).await?;
        progress.next_seq = progress.next_seq.max(client.status.last_seq + 1);
        let status = client.status;
        self.show(|r| {
            r.reachable = true;
            r.last_error = None;
            r.held_bytes = status.usage.bytes;
            r.quota_bytes = status.usage.quota_bytes;
            r.held_objects = status.usage.objects;
            r.quota_objects = status.usage.quota_objects;
        });
        tracing::info!("relay: logged in ({} objects wait for this device)", status.waiting);
        let mut next_download = tokio::time::Instant::now();
        let mut check = tokio::time::interval(UPLOAD_CHECK);
        let mut behind_since = None;
        loop {
            if tokio::time::Instant::now() >= next_download {
                self.take_wraps(&mut client).await?;
                self.download(&mut client, progress).await?;
                next_download = tokio::time::Instant::now() + DOWNLOAD_CHECK;
            }
            self.upload(&mut client, progress, Some(&mut behind_since)).await?;
            tokio::select! {
                _ = check.tick() => {}
                request = flush.recv() => match request {
                    Some(reply) => {
                        let result = self.upload(&mut client, progress, None).await;
                        let _ = reply.send(());
                        result?;
                    }
                    None => return Ok(()),
                },
            }
        }
    }

    fn keyring(&self) -> Result<Keyring> {
        crate::identity::load_keyring(&self.data_dir)?.ok_or_else(|| anyhow!("the group's keyring is gone"))
    }

    /// Takes the keys other members wrapped for this device (a re-key
    /// after a removal).
    async fn take_wraps(&self, client: &mut RelayClient) -> Result<()> {
        let wraps = client.wraps().await?;
        let roster = self.roster();
        let keys: Vec<_> = wraps.iter().filter_map(|w| w.open(&roster, &self.key).ok()).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let added = crate::identity::update_keyring(&self.data_dir, |ring| {
            keys.into_iter().map(|k| ring.add(k)).filter(|added| *added).count()
        })?;
        if added > 0 {
            tracing::info!("relay: took {added} new content key(s) from the relay");
        }
        Ok(())
    }

    /// Wraps the current key to every other member once per epoch (after
    /// a re-key here or elsewhere; past the first epoch, which the invite
    /// hands over).
    async fn leave_wraps(&self, client: &mut RelayClient, ring: &Keyring, progress: &mut Progress) -> Result<()> {
        let Some(current) = ring.current() else { return Ok(()) };
        if current.epoch() <= progress.wrapped_epoch.max(1) {
            return Ok(());
        }
        let roster = self.roster();
        let me = self.key.public();
        for member in roster.members().filter(|m| !m.removed && m.key != me) {
            let wrap = SignedWrap::make(current, &self.group, &member.key, &self.key)
                .map_err(|e| anyhow!("wrapping the key to {}: {e}", member.name))?;
            match client.put_wrap(wrap).await {
                Ok(()) => {}
                // One member the relay will not hold a wrap for (its roster
                // is newer than ours) must not stop the uploads.
                Err(NetError::RelayRefused(why)) => {
                    tracing::warn!("relay: the key wrap for {} refused: {why}", member.name)
                }
                Err(e) => return Err(e.into()),
            }
        }
        progress.wrapped_epoch = current.epoch();
        progress.save(&self.data_dir)?;
        tracing::info!("relay: content key epoch {} wrapped to the other members", current.epoch());
        Ok(())
    }

    /// Uploads what some member lacks once it has lacked it for the upload
    /// delay (`behind_since`: since when); a flush (`None`) uploads at once.
    async fn upload(
        &self,
        client: &mut RelayClient,
        progress: &mut Progress,
        mut behind_since: Option<&mut Option<tokio::time::Instant>>,
    ) -> Result<()> {
        let roster = self.roster();
        if roster.role(&self.key.public()) != Some(Role::Full) {
            return Ok(());
        }
        let ring = self.keyring()?;
        self.leave_wraps(client, &ring, progress).await?;
        let content = ring.current().ok_or_else(|| anyhow!("the group's keyring is empty"))?;
        let index_id = self.storage.index_id();
        if progress.index_id != index_id {
            *progress = Progress { index_id, uploaded_to: 0, ..progress.clone() };
        }
        let seq = self.storage.seq();
        // How far each other member took this device's index. A record
        // travels only if some member that has not taken it is not its
        // author (a member's own versions, taken here from the relay, are
        // not sent back to it); what all took is with them already.
        let me = self.me();
        let mut behind = Vec::new();
        for member in roster.members().filter(|m| !m.removed && m.key.device_id() != me) {
            let id = member.key.device_id();
            behind.push((id, self.storage.peer_state(&id).map_err(|e| anyhow!("{e}"))?.acked));
        }
        // Alone in the group: nobody to leave anything for.
        let from = behind.iter().map(|(_, acked)| *acked).min().map_or(seq, |all| all.max(progress.uploaded_to));
        // What stays on this device (`.psyncignore`) is not left either;
        // the rules are read only when something may go.
        let ignore = if from < seq {
            Some(psync_sync::ignore::rules_in(&self.storage).map_err(|e| anyhow!("reading the store: {e}"))?.0)
        } else {
            None
        };
        let keep = |at: u64, record: &psync_sync::FileRecord| {
            !ignore.as_ref().is_some_and(|i| i.is_ignored(&record.path, record.kind == psync_sync::RecordKind::Dir))
                && behind.iter().any(|(id, acked)| *acked < at && *id != record.version.device)
        };
        let waiting = if from >= seq { 0 } else { self.count_kept(from, keep)? };
        if waiting == 0 {
            if let Some(since) = behind_since.as_deref_mut() {
                *since = None;
            }
            if progress.uploaded_to < seq {
                progress.uploaded_to = seq;
                progress.save(&self.data_dir)?;
            }
            self.show(|r| {
                r.to_upload = 0;
                r.flushed_at_ms = Some(wall_ms());
            });
            return Ok(());
        }
        self.show(|r| r.to_upload = waiting);
        if let Some(since) = behind_since.as_deref_mut() {
            let now = tokio::time::Instant::now();
            if now.duration_since(*since.get_or_insert(now)) < self.upload_delay {
                return Ok(());
            }
        }
        let mut cutter = BundleCutter::new(from);
        while let Some(bundle) =
            cutter.next_where(&self.storage, keep).map_err(|e| anyhow!("reading the store: {e}"))?
        {
            let plain = bundle.encode()?;
            loop {
                let name = ObjectName { writer: self.me(), seq: progress.next_seq };
                let sealed = content.seal(&self.group, &name, &plain);
                let signature = sign_object(&self.key, &self.group, &name, &sealed);
                match client.put(RelayPut { name, sealed, signature }).await {
                    Ok(()) => break,
                    Err(NetError::RelayRefused(RelayRefusal::TooFast { retry_ms })) => {
                        let wait = Duration::from_millis(retry_ms).min(MAX_RATE_WAIT);
                        tokio::time::sleep(wait).await;
                    }
                    Err(NetError::RelayRefused(RelayRefusal::Exists { .. } | RelayRefusal::OutOfOrder { .. })) => {
                        // Another run of this device stored under these
                        // numbers (progress lost in a crash): go on after them.
                        let status = client.usage().await?;
                        if status.last_seq + 1 == progress.next_seq {
                            bail!("the relay refuses object {} and has no newer one", progress.next_seq);
                        }
                        progress.next_seq = status.last_seq + 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            progress.next_seq += 1;
            progress.uploaded_to = progress.uploaded_to.max(bundle.complete_to);
            progress.save(&self.data_dir)?;
            let sent = bundle.records.len() as u64;
            self.show(|r| {
                r.uploaded += 1;
                r.to_upload = r.to_upload.saturating_sub(sent);
            });
        }
        progress.uploaded_to = progress.uploaded_to.max(cutter.complete_to());
        progress.save(&self.data_dir)?;
        let status = client.usage().await?;
        self.show(|r| {
            r.to_upload = 0;
            r.flushed_at_ms = Some(wall_ms());
            r.held_bytes = status.usage.bytes;
            r.held_objects = status.usage.objects;
        });
        tracing::info!("relay: changes up to {} uploaded", progress.uploaded_to);
        if let Some(since) = behind_since {
            *since = None;
        }
        Ok(())
    }

    /// Index entries after `from` that `keep` sends (counted up to
    /// [`MAX_COUNTED_CHANGES`]).
    fn count_kept(&self, from: u64, keep: impl Fn(u64, &psync_sync::FileRecord) -> bool) -> Result<u64> {
        let (mut at, mut count) = (from, 0);
        loop {
            let batch = self.storage.records_since(at, COUNT_BATCH).map_err(|e| anyhow!("reading the store: {e}"))?;
            let Some((last, _)) = batch.last() else { return Ok(count) };
            at = *last;
            count += batch.iter().filter(|(seq, record)| keep(*seq, record)).count() as u64;
            if count >= MAX_COUNTED_CHANGES {
                return Ok(count);
            }
        }
    }

    async fn download(&self, client: &mut RelayClient, progress: &mut Progress) -> Result<()> {
        let ring = self.keyring()?;
        loop {
            let waiting = client.pending().await?;
            if waiting.is_empty() {
                break;
            }
            let mut moved = false;
            for (name, _) in waiting {
                let taken = progress.taken(&name.writer);
                if name.seq > taken {
                    if name.seq > taken + 1 {
                        self.refused(format!(
                            "objects {}..{} of {} never reached this device (withheld or expired); \
                             their changes come when that device is online",
                            taken + 1,
                            name.seq - 1,
                            psync_signal::readable_id(&name.writer)
                        ));
                    }
                    let (signature, sealed) = client.get(name).await?;
                    match open_object(&self.roster(), &ring, &name, &signature, &sealed) {
                        Ok(bundle) => self.take(name.writer, bundle).await?,
                        Err(NotTaken::Later(why)) => {
                            // Not acknowledged: taken once its key is here.
                            tracing::info!("relay: object {} waits: {why}", name.seq);
                            return Ok(());
                        }
                        Err(NotTaken::Refused(why)) => self.refused(format!(
                            "object {} of {} refused: {why}",
                            name.seq,
                            psync_signal::readable_id(&name.writer)
                        )),
                    }
                    progress.took(&name.writer, name.seq);
                    progress.save(&self.data_dir)?;
                    self.show(|r| r.downloaded += 1);
                }
                client.ack(name.writer, name.seq).await?;
                moved = true;
            }
            if !moved {
                break;
            }
        }
        let status = client.usage().await?;
        self.show(|r| {
            r.held_bytes = status.usage.bytes;
            r.held_objects = status.usage.objects;
        });
        Ok(())
    }

    async fn take(&self, writer: DeviceId, bundle: RelayBundle) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Relayed(writer, Box::new(bundle), reply))
            .await
            .map_err(|_| anyhow!("the sync loop stopped"))?;
        answer.await.map_err(|_| anyhow!("the sync loop stopped"))?.map_err(|e| anyhow!("taking a bundle: {e}"))
    }

    fn refused(&self, what: String) {
        tracing::warn!("relay: {what}");
        self.show(|r| {
            r.refused.push(what);
            if r.refused.len() > MAX_REFUSED_SHOWN {
                r.refused.remove(0);
            }
        });
    }
}
