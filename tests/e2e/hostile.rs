//! A hostile member: a real device of the group (a real invite and join,
//! real signalling, real WebRTC, the real signed hello) that then speaks
//! the sync protocol by hand. Each test checks that the honest devices keep
//! syncing with each other, stay within a memory and descriptor bound, and
//! that nothing outside their mounts changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use psync::config::IceConfig;
use psync::driver::inbox::Control;
use psync::live::SharedLive;
use psync::net::ice::IceSetup;
use psync::net::transport::Link;
use psync::peering::{self, Me};
use psync_base::{ContentHash, DeviceId, VersionVector};
use psync_signal::net::SignalClient;
use psync_signal::{Roster, RosterOp};
use psync_sync::message::{decode_frame, encode_frame, PROTOCOL_VERSION};
use psync_sync::{Blocks, FileRecord, Message, RecordKind, SyncPath, VersionId};
use tokio::sync::mpsc;

use crate::group::{finish_invite, group_of_two, start_invite, unmount_and_fsck, wait_for_content};
use crate::mount::Mounted;
use crate::support::{eventually, psync, PATIENCE};
use crate::three::status;

/// Resident memory an honest daemon may reach under any of these attacks.
const MAX_DAEMON_RSS_BYTES: u64 = 384 << 20;
/// Open descriptors an honest daemon may reach under any of these attacks.
const MAX_DAEMON_FDS: usize = 512;

/// The hostile device: its identity, and links the real peering hands it.
struct Hostile {
    rt: tokio::runtime::Runtime,
    id: DeviceId,
    links: mpsc::UnboundedReceiver<(DeviceId, Link)>,
    data: PathBuf,
    url: String,
}

impl Hostile {
    /// Joins `inviter`'s group with a real invite, then runs the real
    /// peering with `roster` (its own copy, or a doctored one).
    fn join(
        tmp: &Path,
        inviter: &Path,
        url: &str,
        roster: impl FnOnce(Roster, &psync::identity::SyncSetup) -> Roster,
    ) -> Hostile {
        let data = tmp.join("mallory");
        let (invite, code) = start_invite(inviter);
        let joined = psync(&data, &["join", &code, "--name", "mallory", "--server", url]);
        assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
        finish_invite(invite);
        let setup = psync::identity::sync_setup(&data).unwrap().expect("an identity");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (links_tx, links) = mpsc::unbounded_channel();
        let id = setup.key.public().device_id();
        let roster = roster(setup.roster.clone(), &setup);
        rt.spawn(async move {
            let client = SignalClient::spawn(setup.server.clone(), setup.group, setup.key.clone());
            let me = Me::new(setup.key.clone(), setup.certificate.clone(), IceConfig::loopback());
            let (sync, mut control) = mpsc::channel(16);
            let live = SharedLive::default();
            let handed = live.clone();
            tokio::spawn(async move {
                while let Some(event) = control.recv().await {
                    if let Control::Connected(device, link) = event {
                        handed.update(|l| l.linked.insert(device));
                        let _ = links_tx.send((device, link));
                    }
                }
            });
            peering::run(me, roster, client, sync, live, Box::new(|_| {})).await;
        });
        Hostile { rt, id, links, data, url: url.to_string() }
    }

    /// The next link to `device` the peering makes.
    fn link_to(&mut self, device: DeviceId) -> Link {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no link from the hostile member to {device:?}");
            let next = self.rt.block_on(async { tokio::time::timeout(left, self.links.recv()).await });
            if let Ok(Some((d, link))) = next {
                if d == device {
                    return link;
                }
            }
        }
    }

    /// A record of this device's making.
    fn record(&self, seq: u64, path: &str, kind: RecordKind, size: u64, blocks: Blocks, symlink: &[u8]) -> FileRecord {
        let mut vv = VersionVector::new();
        vv.set(self.id, seq);
        FileRecord {
            path: SyncPath::new(path).unwrap(),
            kind,
            deleted: false,
            vv,
            version: VersionId { device: self.id, counter: seq },
            size,
            blocks,
            symlink: symlink.to_vec(),
            perm: 0o644,
            mtime: 1_800_000_000,
            xattrs: None,
        }
    }
}

async fn send(link: &Link, message: &Message) -> bool {
    link.send(&encode_frame(message).unwrap()).await.is_ok()
}

/// Serves `blocks` to whoever asks on `link` (other messages are ignored)
/// until the link ends.
async fn serve(mut link: Link, blocks: HashMap<ContentHash, Vec<u8>>) {
    while let Some(frame) = link.recv().await {
        // A request against a base may always be answered whole.
        if let Ok(Message::BlockRequest { hash } | Message::BlockRequestAgainst { hash, .. }) = decode_frame(&frame) {
            let data = blocks.get(&hash).cloned();
            if !send(&link, &Message::BlockResponse { hash, data }).await {
                return;
            }
        }
    }
}

/// The hello every peer expects first, for an index of `seq` records.
fn hello(seq: u64) -> Message {
    Message::Hello { protocol: PROTOCOL_VERSION, index_id: 0xBAD, seq }
}

fn device_id(data: &Path) -> DeviceId {
    psync::identity::sync_setup(data).unwrap().unwrap().key.public().device_id()
}

fn daemon_pid(data: &Path) -> i32 {
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("daemon.json")).unwrap()).unwrap();
    info["pid"].as_i64().unwrap() as i32
}

/// Resident memory (bytes) and open descriptors of the daemon serving `data`.
fn footprint(data: &Path) -> (u64, usize) {
    let pid = daemon_pid(data);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss_kib * 1024, fds)
}

fn assert_bounded(data: &Path) {
    let (rss, fds) = footprint(data);
    eprintln!("{}: {} MiB resident, {fds} descriptors", data.display(), rss >> 20);
    assert!(rss <= MAX_DAEMON_RSS_BYTES, "{}: {} MiB resident", data.display(), rss >> 20);
    assert!(fds <= MAX_DAEMON_FDS, "{}: {fds} descriptors open", data.display());
}

/// A directory outside every mount, with a file in it; checked untouched.
struct Outside(PathBuf);

impl Outside {
    fn new(tmp: &Path) -> Outside {
        let dir = tmp.join("outside");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("precious"), b"outside every mount").unwrap();
        Outside(dir)
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("precious")], "something appeared outside the mounts");
        assert_eq!(std::fs::read(self.0.join("precious")).unwrap(), b"outside every mount");
    }
}

/// The honest devices still sync both ways: a note from each reaches the other.
fn honest_devices_keep_syncing(ma: &Mounted, mb: &Mounted, tag: &str) {
    std::fs::write(ma.path(&format!("from-desktop-{tag}.md")), tag).unwrap();
    std::fs::write(mb.path(&format!("from-laptop-{tag}.md")), tag).unwrap();
    wait_for_content(mb, &format!("from-desktop-{tag}.md"), tag.as_bytes());
    wait_for_content(ma, &format!("from-laptop-{tag}.md"), tag.as_bytes());
}

fn honest_pair(tmp: &Path) -> (crate::group::Server, PathBuf, PathBuf, String) {
    let (server, a, b) = group_of_two(tmp);
    let url = psync::identity::sync_setup(&a).unwrap().unwrap().server;
    (server, a, b, url)
}

/// One path twice in one update with a symlink last, symlinks with junk
/// targets, a block list that does not fit its size: the malformed ones
/// are refused on their own (listed, with the reason), the rest is data,
/// and nothing outside the mounts is touched.
#[test]
fn hostile_records_are_refused_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = Outside::new(tmp.path());
    let (_server, a, b, url) = honest_pair(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let mut mallory = Hostile::join(tmp.path(), &a, &url, |r, _| r);
    let link = mallory.link_to(device_id(&a));

    let data = b"hostile bytes".to_vec();
    let hash = ContentHash::of(&data);
    let target = outside.0.to_str().unwrap().as_bytes().to_vec();
    let m = &mallory;
    let records = vec![
        m.record(1, "x", RecordKind::Dir, 0, Blocks::default(), b""),
        m.record(2, "x/f", RecordKind::File, data.len() as u64, Blocks::Listed(vec![Some(hash)]), b""),
        m.record(3, "x", RecordKind::Symlink, 0, Blocks::default(), &target),
        m.record(4, "empty-target", RecordKind::Symlink, 0, Blocks::default(), b""),
        m.record(5, "nul-target", RecordKind::Symlink, 0, Blocks::default(), b"a\0b"),
        m.record(6, "long-target", RecordKind::Symlink, 0, Blocks::default(), &[b'a'; 5000]),
        m.record(7, "misfit.bin", RecordKind::File, 10 << 20, Blocks::Listed(vec![Some(hash)]), b""),
        m.record(8, "to-etc", RecordKind::Symlink, 0, Blocks::default(), b"/etc/passwd"),
    ];
    let records = records.into_iter().zip(1..).map(|(r, seq)| (seq, r)).collect();
    let update = Message::IndexUpdate { index_id: 0xBAD, from: 0, to: 8, records };
    mallory.rt.block_on(async {
        assert!(send(&link, &hello(8)).await);
        assert!(send(&link, &update).await);
    });
    mallory.rt.spawn(serve(link, HashMap::from([(hash, data)])));

    let refused = |s: &serde_json::Value| -> Vec<String> {
        s["local"]["held"]
            .as_array()
            .map(|held| {
                held.iter()
                    .filter(|h| h["kind"] == "refused")
                    .map(|h| h["path"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually(PATIENCE, "the malformed records to be listed as refused on the desktop", || {
        refused(&status(&a)).len() == 4
    });
    let mut listed = refused(&status(&a));
    listed.sort();
    assert_eq!(listed, ["empty-target", "long-target", "misfit.bin", "nul-target"]);
    // What is well formed is data, like any other: a symlink is stored as
    // it is (never followed by PSync), on both honest devices, and both
    // agree on what `x` became.
    eventually(PATIENCE, "the symlinks to reach the laptop", || {
        let kind = |m: &Mounted| std::fs::symlink_metadata(m.path("x")).map(|m| m.file_type()).ok();
        std::fs::read_link(mb.path("to-etc")).is_ok_and(|t| t == Path::new("/etc/passwd"))
            && kind(&ma).is_some()
            && kind(&ma) == kind(&mb)
    });
    honest_devices_keep_syncing(&ma, &mb, "after-junk");
    assert_bounded(&a);
    outside.assert_untouched();
    drop(mallory);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A flood of records whose blocks never come (60,000, more than one peer
/// may have waiting): the device stops taking that peer's index at its
/// bound, stays within memory, and keeps syncing with the honest peer.
#[test]
fn records_whose_blocks_never_come_do_not_exhaust_a_device() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = Outside::new(tmp.path());
    let (_server, a, b, url) = honest_pair(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let mut mallory = Hostile::join(tmp.path(), &a, &url, |r, _| r);
    let link = mallory.link_to(device_id(&a));
    const RECORDS: u64 = 60_000;
    let batches: Vec<Message> = (0..RECORDS)
        .collect::<Vec<_>>()
        .chunks(256)
        .map(|chunk| {
            let records = chunk
                .iter()
                .map(|i| {
                    let hash = ContentHash::of(&i.to_le_bytes());
                    (
                        i + 1,
                        mallory.record(
                            i + 1,
                            &format!("bait/{i}.bin"),
                            RecordKind::File,
                            100,
                            Blocks::Listed(vec![Some(hash)]),
                            b"",
                        ),
                    )
                })
                .collect();
            Message::IndexUpdate { index_id: 0xBAD, from: chunk[0], to: chunk[chunk.len() - 1] + 1, records }
        })
        .collect();
    mallory.rt.block_on(async {
        assert!(send(&link, &hello(RECORDS)).await);
        for batch in &batches {
            if !send(&link, batch).await {
                break;
            }
        }
    });
    // It answers every block request with "don't have".
    mallory.rt.spawn(serve(link, HashMap::new()));
    eventually(PATIENCE, "the desktop to wait for the bait", || {
        status(&a)["local"]["waiting_records"].as_u64().unwrap_or(0) > 1000
    });
    honest_devices_keep_syncing(&ma, &mb, "during-flood");
    let waiting = status(&a)["local"]["waiting_records"].as_u64().unwrap();
    let bound = psync_sync::limits::MAX_PENDING_RECORDS_PER_PEER + psync_sync::limits::MAX_RECORDS_PER_FRAME;
    assert!(waiting <= bound as u64, "{waiting} records wait");
    assert_bounded(&a);
    outside.assert_untouched();
    drop(mallory);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A member that asks for blocks by the thousand and never reads the
/// answers is dropped at the bound; the others go on.
#[test]
fn a_member_that_asks_and_never_reads_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b, url) = honest_pair(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let big = crate::mount::noise(24 << 20, 1);
    std::fs::write(ma.path("big.bin"), &big).unwrap();
    wait_for_content(&mb, "big.bin", &big);
    let hashes: Vec<ContentHash> = big.chunks(65_536).map(ContentHash::of).collect();
    let mut mallory = Hostile::join(tmp.path(), &a, &url, |r, _| r);
    let link = mallory.link_to(device_id(&a));
    mallory.rt.block_on(async {
        assert!(send(&link, &hello(0)).await);
        'flood: for _ in 0..20 {
            for hash in &hashes {
                if !send(&link, &Message::BlockRequest { hash: *hash }).await {
                    break 'flood;
                }
            }
        }
    });
    // Never reads; keeps the link open.
    let log = |d: &Path| std::fs::read_to_string(d.join("psync.log")).unwrap_or_default();
    eventually(PATIENCE, "the desktop to drop the member that does not read", || {
        log(&a).contains("block requests queued") || log(&a).contains("does not read")
    });
    honest_devices_keep_syncing(&ma, &mb, "after-flood");
    assert_bounded(&a);
    drop(link);
    drop(mallory);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A member sending connection offers in a loop gets one attempt at a
/// time and a bounded rate: the device's sockets stay bounded.
#[test]
fn offers_in_a_loop_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b, url) = honest_pair(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let mallory = Hostile::join(tmp.path(), &a, &url, |r, _| r);
    let setup = psync::identity::sync_setup(&mallory.data).unwrap().unwrap();
    let desktop = psync::identity::sync_setup(&a).unwrap().unwrap().key.public();
    let (_, fds_before) = footprint(&a);
    mallory.rt.block_on(async {
        let mut client = SignalClient::spawn(mallory.url.clone(), setup.group, setup.key.clone());
        let mut negotiation =
            psync::net::transport::Negotiation::new(&setup.certificate, &IceSetup::loopback()).await.unwrap();
        let offer = negotiation.offer().await.unwrap();
        let payload = psync::net::transport::PeerSignal::Offer(offer).encode().unwrap();
        // Relays before the login are refused: wait for it.
        let logged_in = async {
            while let Some(event) = client.events.recv().await {
                if matches!(event, psync_signal::net::ClientEvent::LoggedIn { .. }) {
                    return;
                }
            }
        };
        tokio::time::timeout(PATIENCE, logged_in).await.expect("the hostile member logs in");
        for session in 0..200u64 {
            let envelope = psync_signal::Envelope::seal(
                &setup.key,
                setup.group,
                desktop,
                1_000_000 + session,
                1,
                psync::clock::wall_ms(),
                payload.clone(),
            );
            client.relay(envelope);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(negotiation);
    });
    eventually(PATIENCE, "the desktop to turn offers away", || {
        std::fs::read_to_string(a.join("psync.log")).unwrap_or_default().contains("too many connection offers")
    });
    honest_devices_keep_syncing(&ma, &mb, "after-offers");
    // `psync status` tells it in PSync's words, at a local time; the
    // libraries' chatter (webrtc's ICE and DTLS warnings) stays in the log.
    let shown = status(&a);
    let warnings = shown["recent_warnings"].as_array().expect("recent_warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w["level"] == "warn"
                && w["message"].as_str().is_some_and(|m| m.contains("too many connection offers"))),
        "{warnings:#?}"
    );
    let lines = shown["recent_errors"].as_array().expect("recent_errors");
    assert!(
        lines.iter().all(|l| l.as_str().is_some_and(|l| l.starts_with("20") && l.as_bytes()[10] == b' ')),
        "{lines:#?}"
    );
    let log = std::fs::read_to_string(a.join("psync.log")).unwrap();
    let noisy: Vec<&str> = log.lines().filter(|l| l.contains(" WARN rtc") || l.contains(" WARN webrtc")).collect();
    assert!(!noisy.is_empty(), "the libraries warn in the log (else this check proves nothing)");
    assert!(
        warnings.iter().all(|w| !noisy.iter().any(|n| n.ends_with(w["message"].as_str().unwrap_or("?")))),
        "{warnings:#?}"
    );
    let (_, fds_after) = footprint(&a);
    assert!(fds_after <= fds_before + 64, "descriptors grew from {fds_before} to {fds_after}");
    assert_bounded(&a);
    drop(mallory);
    unmount_and_fsck(&[&ma, &mb]);
}

/// A member whose hello shows a roster head the device does not know (it
/// signed an entry of its own that the server never saw) is refused, the
/// device asks the server and says so in `psync status`; a member whose
/// roster is merely behind is accepted. The honest devices go on.
#[test]
fn roster_heads_are_checked_at_hello() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, a, b, url) = honest_pair(tmp.path());
    let (ma, mb) = (Mounted::with_data(a.clone()), Mounted::with_data(b.clone()));
    let stranger = psync_signal::DeviceKey::generate();
    let mallory = Hostile::join(tmp.path(), &a, &url, |mut roster, setup| {
        // A fork: an entry only this member has.
        let add = RosterOp::Add {
            key: stranger.public(),
            name: "ghost".into(),
            role: psync_signal::Role::Full,
            dtls_fingerprint: "sha-256 00".into(),
        };
        let entry = roster.sign_next(&setup.key, add, 9);
        roster.apply(entry).unwrap();
        roster
    });
    let warned =
        |s: &serde_json::Value| s["signalling"]["roster_warning"].as_str().is_some_and(|w| w.contains("roster"));
    eventually(PATIENCE, "the desktop to refuse the forked roster", || warned(&status(&a)));
    let log = std::fs::read_to_string(a.join("psync.log")).unwrap();
    assert!(log.contains("roster has an entry this device does not know"), "{log}");
    let mallory_row = status(&a)["peers"].as_array().unwrap().iter().find(|p| p["name"] == "mallory").cloned();
    assert_eq!(mallory_row.unwrap()["connected"], false, "the desktop has no link to the forked member");
    honest_devices_keep_syncing(&ma, &mb, "after-fork");
    assert_bounded(&a);
    drop(mallory);
    unmount_and_fsck(&[&ma, &mb]);
}
