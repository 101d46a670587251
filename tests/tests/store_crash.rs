//! Kills a writer process with SIGKILL at random points, many times; after
//! each kill the store must open, pass fsck, and hold every durably
//! committed write (or the one operation that was in flight).
//!
//! `PSYNC_CRASH_ROUNDS=500 PSYNC_CRASH_SEED=7 cargo test -p psync-tests --test store_crash`
//! runs a longer campaign.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use psync_store::{Store, StoreError, ROOT_INO};
use psync_tests::{crash_content, crash_header, CRASH_FILES};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    /// Exists but no version committed yet (a create was in flight).
    Uncommitted,
    Gen(u64),
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn committed_state(store: &Store, k: u32) -> State {
    let node = match store.lookup(ROOT_INO, format!("f{k}").as_bytes()) {
        Ok(node) => node,
        Err(StoreError::NotFound) => return State::Missing,
        Err(e) => panic!("lookup f{k}: {e}"),
    };
    if node.committed_seq == 0 {
        return State::Uncommitted;
    }
    let version = store.version(node.file_id, node.committed_seq).expect("committed version");
    let content = store.read_content(&version.content, 0, version.content.size as u32).expect("read");
    let (hk, gen) = crash_header(&content).unwrap_or_else(|| panic!("f{k}: committed content has no header"));
    assert_eq!(hk, k, "f{k} holds another file's content");
    assert!(content == crash_content(k, gen), "f{k} generation {gen} is torn or corrupt");
    State::Gen(gen)
}

#[test]
fn sigkill_at_random_points_leaves_a_consistent_store() {
    let rounds = env_u64("PSYNC_CRASH_ROUNDS", 30);
    let seed = env_u64("PSYNC_CRASH_SEED", 20261125);
    eprintln!("crash test: {rounds} rounds, PSYNC_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = env!("CARGO_BIN_EXE_psync-crash-writer");
    let mut acked: HashMap<u32, State> = (0..CRASH_FILES).map(|k| (k, State::Missing)).collect();
    let mut total_acks = 0u64;
    let mut in_flight_seen = 0u64;
    let mut killed_while_creating = 0u64;

    for round in 0..rounds {
        let first_gen = (round + 1) * 1_000_000_000;
        let mut child = Command::new(writer)
            .arg(dir.path())
            .arg(first_gen.to_string())
            .arg(rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start crash writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            // Only newline-terminated lines were fully written before the kill.
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                if buf.last() == Some(&b'\n') {
                    lines.push(String::from_utf8_lossy(&buf).trim().to_string());
                }
                buf.clear();
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(20..350)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill writer");
        let status = child.wait().expect("wait");
        assert!(status.code().is_none(), "writer exited by itself: {status:?} (see its stderr above)");
        let lines = reader.join().expect("reader thread");
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["CREATING"] => {}
                ["W", k, gen] => {
                    acked.insert(k.parse().expect("k"), State::Gen(gen.parse().expect("gen")));
                }
                ["D", k] => {
                    acked.insert(k.parse().expect("k"), State::Missing);
                }
                other => panic!("unexpected writer output {other:?}"),
            }
        }
        total_acks += lines.len() as u64;

        // Killed before the first store was complete: nothing was acknowledged,
        // and there is no store (creation is atomic); the next round creates it.
        if !Store::exists(dir.path()) && total_acks == 0 {
            killed_while_creating += 1;
            continue;
        }
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let report = store.fsck().expect("fsck runs");
        assert!(report.is_clean(), "round {round}: fsck found {:#?}", report.problems);
        let mut differing = Vec::new();
        for k in 0..CRASH_FILES {
            let actual = committed_state(&store, k);
            let expected = acked[&k];
            if actual != expected {
                // Only the single operation in flight at the kill may differ,
                // and only by being newer than everything acknowledged.
                let newer = match actual {
                    // Written in this round, after every acknowledgement for f{k}.
                    State::Gen(g) => g > first_gen && !matches!(expected, State::Gen(e) if e >= g),
                    // A delete in flight.
                    State::Missing => true,
                    // A create in flight, killed before its first commit.
                    State::Uncommitted => expected == State::Missing,
                };
                assert!(newer, "round {round}: f{k} is {actual:?} but {expected:?} was durably committed");
                differing.push((k, expected, actual));
            }
        }
        assert!(differing.len() <= 1, "round {round}: more than the in-flight operation differs: {differing:?}");
        for (k, _, actual) in differing {
            in_flight_seen += 1;
            acked.insert(k, actual);
        }
    }
    eprintln!(
        "crash test: {total_acks} durable acknowledgements checked, {in_flight_seen} in-flight operations observed, \
         {killed_while_creating} kills before the store existed"
    );
    assert!(total_acks >= rounds, "the writer made too little progress for the test to mean anything");
}

/// A first `psync mount` killed while it creates the store must not leave a
/// data dir that psync refuses: creation is atomic. The writer says
/// `CREATING` just before it creates the store; each round kills it a
/// random moment after that (mostly inside the creation), then the store
/// must open (or be created) and pass fsck.
#[test]
fn kills_during_store_creation_leave_a_usable_data_dir() {
    let rounds = env_u64("PSYNC_CRASH_CREATE_ROUNDS", 25);
    let seed = env_u64("PSYNC_CRASH_SEED", 20261205);
    let mut rng = StdRng::seed_from_u64(seed);
    let writer = env!("CARGO_BIN_EXE_psync-crash-writer");
    let (mut before_complete, mut after_complete) = (0, 0);
    for round in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(writer)
            .arg(dir.path())
            .arg("1")
            .arg(rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start crash writer");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        assert_eq!(line.trim(), "CREATING", "round {round}");
        std::thread::sleep(Duration::from_micros(rng.random_range(0..30_000)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill writer");
        child.wait().expect("wait");
        if Store::exists(dir.path()) {
            after_complete += 1;
        } else {
            before_complete += 1;
        }
        let store = Store::open_or_create(dir.path(), psync_base::DeviceId([3; 32]))
            .unwrap_or_else(|e| panic!("round {round}: the data dir is unusable after a kill: {e}"));
        let report = store.fsck().expect("fsck runs");
        assert!(report.is_clean(), "round {round}: fsck found {:#?}", report.problems);
    }
    eprintln!("creation kills: {before_complete} before the store was complete, {after_complete} after");
}
