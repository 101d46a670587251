//! The relay's S3 store against a real S3-compatible server (s3s-fs,
//! installed by `scripts/test.sh`) on loopback: objects, ledgers and key
//! wraps go in and come back, and a restart finds them.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use psync_base::{ContentHash, DeviceId};
use psync_signal::relay::policy::GroupLedger;
use psync_signal::relay::s3::S3Store;
use psync_signal::relay::seal::{ContentKey, ObjectName};
use psync_signal::relay::store::RelayStore;
use psync_signal::relay::wrap::SignedWrap;
use psync_signal::{DeviceKey, SignatureBytes};

/// s3s-fs from the test tools (as `tests/e2e/conformance.rs` finds its tools).
#[allow(clippy::disallowed_methods)] // where scripts/test.sh installed it
fn s3s_fs() -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PSYNC_TOOLS_DIR") {
        dirs.push(PathBuf::from(dir).join("bin"));
    }
    dirs.push(PathBuf::from("/var/cache/psync-tools/bin"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/psync-tools/bin"));
    }
    dirs.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("s3s-fs is not installed: run ./scripts/test.sh (it installs it into $PSYNC_TOOLS_DIR)")
    })
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn objects_ledgers_and_wraps_round_trip_through_a_real_s3_server() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s3");
    std::fs::create_dir_all(root.join("bucket")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(tmp.path().join("s3s-fs.log")).unwrap();
    let child = std::process::Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "ak", "--secret-key", "sk-secret"])
        .arg(&root)
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start s3s-fs");
    let _server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "ak"),
        ("aws_secret_access_key", "sk-secret"),
        ("aws_region", "us-east-1"),
    ];
    let store = S3Store::open_with("s3://bucket/relay", &options).unwrap();
    let group = ContentHash([1; 32]);
    let name = ObjectName { writer: DeviceId([2; 32]), seq: 1 };
    let signature = SignatureBytes([9; 64]);
    let put = store.put_new(&group, &name, &signature, b"sealed bytes", 5_000);
    if let Err(e) = &put {
        let said = std::fs::read_to_string(tmp.path().join("s3s-fs.log")).unwrap_or_default();
        panic!("put: {e}\ns3s-fs said:\n{said}");
    }
    assert_eq!(store.get(&group, &name).unwrap(), Some((signature, b"sealed bytes".to_vec())));
    let mut ledger = GroupLedger::default();
    ledger.last_seq.insert(name.writer, 1);
    store.save_ledger(&group, &ledger).unwrap();
    let (maker, member) = (DeviceKey::generate(), DeviceKey::generate());
    let key = ContentKey::generate(2);
    let wrap = SignedWrap::make(&key, &group, &member.public(), &maker).unwrap();
    store.put_wrap(&group, &wrap, 16).unwrap();
    drop(store);

    // A restarted relay finds everything.
    let store = S3Store::open_with("s3://bucket/relay", &options).unwrap();
    let found = store.load().unwrap();
    assert_eq!(found.len(), 1);
    let (g, l, objects) = &found[0];
    assert_eq!((g, l), (&group, &ledger));
    assert_eq!(objects.iter().map(|(n, o)| (*n, o.bytes)).collect::<Vec<_>>(), vec![(name, 12)]);
    assert_eq!(store.wraps(&group, &member.public()).unwrap(), vec![wrap]);
    assert_eq!(store.wraps(&group, &maker.public()).unwrap(), vec![]);
    store.delete(&group, &name).unwrap();
    store.delete(&group, &name).unwrap();
    assert_eq!(store.get(&group, &name).unwrap(), None);
    // Nothing on the server's disk names a file or holds plaintext: only
    // hex ids and numbers.
    for entry in walk(&root) {
        let text = entry.to_string_lossy();
        assert!(!text.contains("sealed bytes"), "{text}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
