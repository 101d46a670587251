//! Writes to a store forever, printing a line after each durable commit, so
//! that a test can SIGKILL it anywhere and then check the store.
//!
//! Usage: psync-crash-writer DATA_DIR FIRST_GEN SEED
//! Prints `CREATING` before it opens (or creates) the store, `W k gen` once
//! generation `gen` of file `f{k}` is durably committed, and `D k` once
//! `f{k}` is deleted durably.

use std::io::Write;

use psync_base::DeviceId;
use psync_store::{NewNode, NodeAttrs, RenameMode, Store, StoreError, Timestamp, ROOT_INO};
use psync_tests::{crash_content, CRASH_FILES};

fn main() {
    if let Err(e) = run() {
        eprintln!("crash-writer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), StoreError> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(first_gen), Some(seed)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: psync-crash-writer DATA_DIR FIRST_GEN SEED");
        std::process::exit(2);
    };
    let mut gen: u64 = first_gen.parse().unwrap_or(1);
    let mut rng: u64 = seed.parse::<u64>().unwrap_or(1) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Announced first, so a test can kill the writer while the store is
    // being created (the first run on an empty data dir).
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "CREATING");
        let _ = out.flush();
    }
    let store = Store::open_or_create(std::path::Path::new(dir), DeviceId([3; 32]))?;
    let now = Timestamp::now();
    // Leftover temp files of a killed predecessor.
    for k in 0..CRASH_FILES {
        match store.unlink(ROOT_INO, format!("f{k}.tmp").as_bytes(), now) {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    store.sync()?;
    let mut out = std::io::stdout().lock();
    loop {
        let k = (next() % u64::from(CRASH_FILES)) as u32;
        let name = format!("f{k}");
        let roll = next() % 100;
        gen += 1;
        let now = Timestamp::now();
        if roll < 15 {
            match store.unlink(ROOT_INO, name.as_bytes(), now) {
                Ok(()) => {
                    store.sync()?;
                    let _ = writeln!(out, "D {k}");
                }
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        } else if roll < 45 {
            // Editor-style atomic save: temp file, fsync, rename over.
            let tmp = format!("{name}.tmp");
            let node = store.create(ROOT_INO, tmp.as_bytes(), NewNode::File, NodeAttrs::perm(0o644), now)?;
            store.write(node.ino, 0, &crash_content(k, gen), now)?;
            store.commit(node.ino, now, true)?;
            store.rename(ROOT_INO, tmp.as_bytes(), ROOT_INO, name.as_bytes(), RenameMode::Replace, now)?;
            store.sync()?;
            let _ = writeln!(out, "W {k} {gen}");
        } else {
            // In-place rewrite, committed durably (what fsync does).
            let node = match store.lookup(ROOT_INO, name.as_bytes()) {
                Ok(node) => node,
                Err(StoreError::NotFound) => {
                    store.create(ROOT_INO, name.as_bytes(), NewNode::File, NodeAttrs::perm(0o644), now)?
                }
                Err(e) => return Err(e),
            };
            store.truncate(node.ino, 0, now)?;
            store.write(node.ino, 0, &crash_content(k, gen), now)?;
            store.commit(node.ino, now, true)?;
            let _ = writeln!(out, "W {k} {gen}");
        }
        let _ = out.flush();
    }
}
