//! Store benchmarks: prints figures, asserts nothing.
//!
//! `cargo bench -p psync-store` (release build). `PSYNC_BENCH_MIB=64` shrinks
//! the large-file cases; `PSYNC_BENCH_DIR` picks the disk (default: temp dir).

// A benchmark binary: failing loudly on setup errors is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use psync_base::{ContentHash, DeviceId};
use psync_store::{NewNode, NodeAttrs, Store, Timestamp, BLOCK_SIZE, ROOT_INO};

fn now() -> Timestamp {
    Timestamp { secs: 1, nanos: 0 }
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// Incompressible, unique bytes (so dedup and compression don't flatter the numbers).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Bytes in RocksDB's write-ahead logs: what a write costs on disk before compaction.
fn wal_bytes(data_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(data_dir.join(psync_store::DB_DIR_NAME))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let big_mib: u64 = std::env::var("PSYNC_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let base = std::env::var_os("PSYNC_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let store = Store::open_or_create(dir.path(), DeviceId([1; 32])).expect("store");
    println!("psync-store benchmarks (data dir on {})", base.display());
    println!("{:<44} {:>14}", "case", "result");

    // BLAKE3 over 64 KiB blocks.
    let buf = noise(64 << 20, 1);
    let t = Instant::now();
    let mut acc = 0u8;
    for chunk in buf.chunks(BLOCK_SIZE as usize) {
        acc ^= ContentHash::of(chunk).0[0];
    }
    std::hint::black_box(acc);
    println!("{:<44} {:>9.0} MiB/s", "BLAKE3 hash, 64 KiB blocks", mib_per_s(buf.len() as u64, t.elapsed()));
    drop(buf);

    // Large sequential write (block put) and read (block get + verify).
    let file = store.create(ROOT_INO, b"big", NewNode::File, NodeAttrs::perm(0o644), now()).expect("create");
    let chunk_len = 1 << 20;
    let total = big_mib << 20;
    let t = Instant::now();
    for i in 0..big_mib {
        let data = noise(chunk_len, i + 7);
        store.write(file.ino, i * chunk_len as u64, &data, now()).expect("write");
    }
    store.commit(file.ino, now(), true).expect("commit");
    println!(
        "{:<44} {:>9.0} MiB/s",
        format!("write {big_mib} MiB (1 MiB writes) + durable commit"),
        mib_per_s(total, t.elapsed())
    );
    let t = Instant::now();
    let mut offset = 0;
    while offset < total {
        let data = store.read(file.ino, offset, chunk_len as u32).expect("read");
        offset += data.len() as u64;
    }
    println!(
        "{:<44} {:>9.0} MiB/s",
        format!("read {big_mib} MiB (1 MiB reads, hash-verified)"),
        mib_per_s(total, t.elapsed())
    );

    // 4 KiB random I/O inside the large file (what fio's randread/randwrite do).
    let blocks_4k = total / 4096;
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % blocks_4k
    };
    let ops = 20_000u32;
    let t = Instant::now();
    for _ in 0..ops {
        std::hint::black_box(store.read(file.ino, next() * 4096, 4096).expect("read"));
    }
    println!("{:<44} {:>10.0} IOPS", "4 KiB random read", f64::from(ops) / t.elapsed().as_secs_f64());
    let page = noise(4096, 5);
    let t = Instant::now();
    for _ in 0..ops {
        store.write(file.ino, next() * 4096, &page, now()).expect("write");
    }
    println!("{:<44} {:>10.0} IOPS", "4 KiB random write", f64::from(ops) / t.elapsed().as_secs_f64());

    // Small files.
    for (label, count, durable) in
        [("small file create+write 2 KiB+commit", 2000u32, false), ("... same, durable commit (fsync)", 300, true)]
    {
        let dir_node = store
            .create(ROOT_INO, format!("small-{durable}").as_bytes(), NewNode::Dir, NodeAttrs::perm(0o755), now())
            .expect("mkdir");
        let t = Instant::now();
        for i in 0..count {
            let f = store
                .create(dir_node.ino, format!("n{i}.md").as_bytes(), NewNode::File, NodeAttrs::perm(0o644), now())
                .expect("create");
            store.write(f.ino, 0, &noise(2048, u64::from(i) + 99), now()).expect("write");
            store.commit(f.ino, now(), durable).expect("commit");
        }
        println!("{:<44} {:>10.0} ops/s", label, f64::from(count) / t.elapsed().as_secs_f64());
    }

    // 1-byte edit in the middle of a 64 MiB file.
    let edit = store.create(ROOT_INO, b"edit", NewNode::File, NodeAttrs::perm(0o644), now()).expect("create");
    for i in 0..64u64 {
        store.write(edit.ino, i << 20, &noise(chunk_len, 1000 + i), now()).expect("write");
    }
    store.commit(edit.ino, now(), true).expect("commit");
    store.flush_memtables().expect("flush");
    let before_wal = wal_bytes(dir.path());
    let before_list = store.block_list(&store.inode(edit.ino).expect("inode").content).expect("list");
    let before_stats = store.stats().expect("stats");
    let t = Instant::now();
    store.write(edit.ino, 32 << 20, b"!", now()).expect("write");
    store.commit(edit.ino, now(), true).expect("commit");
    let elapsed = t.elapsed();
    let written = wal_bytes(dir.path()).saturating_sub(before_wal);
    let after_list = store.block_list(&store.inode(edit.ino).expect("inode").content).expect("list");
    let after_stats = store.stats().expect("stats");
    let changed = before_list.iter().zip(&after_list).filter(|(a, b)| a != b).count();
    println!("{:<44} {:>11.2} ms", "1-byte edit in 64 MiB file: write+commit", elapsed.as_secs_f64() * 1000.0);
    println!("{:<44} {:>14}", "... blocks changed", changed);
    println!("{:<44} {:>10} bytes", "... new block data stored", after_stats.block_bytes - before_stats.block_bytes);
    println!("{:<44} {:>10} bytes", "... bytes written (write-ahead log)", written);
}
