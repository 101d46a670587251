//! The relay over its real WebSocket on 127.0.0.1, storing in a real
//! directory: members store and fetch sealed objects, strangers and removed
//! devices get nothing, acknowledged objects are deleted, a flipped byte on
//! the relay's disk is caught by the reader.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use psync_signal::net::{is_not_member, register, serve_with, ClientEvent, RelayClient, ServeOptions, ServerDir};
use psync_signal::net::{NetError, SignalClient};
use psync_signal::relay::policy::{RelayLimits, RelayPut, RelayRefusal};
use psync_signal::relay::seal::{sign_object, verify_object, ContentKey, ObjectName};
use psync_signal::relay::service::RelayLocation;
use psync_signal::{DeviceKey, Role, Roster, RosterOp};

fn put(key: &DeviceKey, content: &ContentKey, roster: &Roster, seq: u64, plain: &[u8]) -> RelayPut {
    let group = roster.group_id();
    let name = ObjectName { writer: key.public().device_id(), seq };
    let sealed = content.seal(&group, &name, plain);
    let signature = sign_object(key, &group, &name, &sealed);
    RelayPut { name, sealed, signature }
}

/// Files under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn members_leave_sealed_objects_for_each_other_and_the_relay_deletes_what_all_took() {
    let server_dir = tempfile::tempdir().unwrap();
    let relay_dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let a = Arc::new(DeviceKey::generate());
    let b = Arc::new(DeviceKey::generate());
    let mut roster = Roster::create(&a, "notes", "desktop", "sha-256 AA", 1);
    let add = |key: &DeviceKey, name: &str| RosterOp::Add {
        key: key.public(),
        name: name.into(),
        role: Role::Full,
        dtls_fingerprint: "sha-256 BB".into(),
    };
    roster.apply(roster.sign_next(&a, add(&b, "laptop"), 2)).unwrap();
    let group = roster.group_id();
    let content = ContentKey::generate(1);
    let note = b"# Groceries\nmilk, secret plans".to_vec();

    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let options = ServeOptions {
            relay: Some((RelayLocation::Dir(relay_dir.path().to_path_buf()), RelayLimits::default())),
            ..Default::default()
        };
        tokio::spawn(serve_with(listener, ServerDir::new(server_dir.path()).unwrap(), options));
        register(&url, &roster).await.unwrap();

        let mut ra = RelayClient::connect(&url, group, &a).await.unwrap();
        assert_eq!(ra.status.last_seq, 0);
        ra.put(put(&a, &content, &roster, 1, &note)).await.unwrap();
        ra.put(put(&a, &content, &roster, 2, b"second")).await.unwrap();
        // Nothing is overwritten; numbers go in order; only one's own.
        let again = ra.put(put(&a, &content, &roster, 2, b"replaced")).await.unwrap_err();
        assert!(matches!(again, NetError::RelayRefused(RelayRefusal::Exists { seq: 2 })), "{again}");
        let skip = ra.put(put(&a, &content, &roster, 4, b"skip")).await.unwrap_err();
        assert!(matches!(skip, NetError::RelayRefused(RelayRefusal::OutOfOrder { .. })), "{skip}");
        let mut forged = put(&b, &content, &roster, 1, b"forged");
        forged.signature = sign_object(&a, &group, &forged.name, &forged.sealed);
        assert!(ra.put(forged).await.is_err(), "a device stores only its own objects");
        assert_eq!(ra.pending().await.unwrap(), vec![], "its own objects are not for it");

        // The relay's disk holds no plaintext.
        for file in files(relay_dir.path()) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(!bytes.windows(9).any(|w| w == b"Groceries"), "{} holds note text", file.display());
        }

        // A stranger and a bad signature get nothing.
        let stranger = DeviceKey::generate();
        let refused = RelayClient::connect(&url, group, &stranger).await.unwrap_err();
        assert!(is_not_member(&refused), "{refused}");

        let mut rb = RelayClient::connect(&url, group, &b).await.unwrap();
        assert_eq!(rb.status.waiting, 2);
        let waiting = rb.pending().await.unwrap();
        assert_eq!(waiting.iter().map(|(n, _)| n.seq).collect::<Vec<_>>(), vec![1, 2]);
        let first = waiting[0].0;
        let (signature, sealed) = rb.get(first).await.unwrap();
        verify_object(&a.public(), &group, &first, &sealed, &signature).unwrap();
        assert_eq!(content.open(&group, &first, &sealed).unwrap(), note);

        // A flipped byte in the relay's store: the reader's checks refuse it.
        let stored = files(relay_dir.path()).into_iter().find(|p| p.ends_with(format!("{:020}", 2))).unwrap();
        let mut bytes = std::fs::read(&stored).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&stored, bytes).unwrap();
        let (signature, sealed) = rb.get(waiting[1].0).await.unwrap();
        assert!(verify_object(&a.public(), &group, &waiting[1].0, &sealed, &signature).is_err());
        assert!(content.open(&group, &waiting[1].0, &sealed).is_err());

        // Once every other member took them, they are gone from the disk.
        rb.ack(a.public().device_id(), 2).await.unwrap();
        assert_eq!(rb.usage().await.unwrap().usage.objects, 0);
        let objects: Vec<_> = files(relay_dir.path()).into_iter().filter(|p| !p.ends_with("ledger")).collect();
        assert!(objects.is_empty(), "{objects:?}");

        // A removed device is cut off at its next request, on an open connection.
        let mut signal = SignalClient::spawn(url.clone(), group, a.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, signal.events.recv()).await.unwrap().unwrap();
            if matches!(event, ClientEvent::LoggedIn { .. }) {
                break;
            }
        }
        let removal = roster.sign_next(&a, RosterOp::Remove { key: b.public() }, 3);
        roster.apply(removal.clone()).unwrap();
        signal.append(removal);
        let cut_off = async {
            loop {
                match rb.pending().await {
                    Err(e) if is_not_member(&e) => return,
                    Err(e) => panic!("{e}"),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), cut_off).await.expect("the removal reached the relay");
        ra.put(put(&a, &content, &roster, 3, b"after")).await.unwrap();
        assert!(RelayClient::connect(&url, group, &b).await.is_err());
    });
}
