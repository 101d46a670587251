//! Targeted tests of the sync core's behaviours, on a small harness that
//! delivers messages in order with no faults (the simulation covers faults).

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::big;
use psync_base::{Causality, ContentHash, VersionVector, BLOCK_SIZE};
use psync_sync::message::Message;
use psync_sync::record::{conflict_name, resolve, winner_order, Resolution};
use psync_sync::{
    Blocks, FileRecord, Input, MemStorage, Millis, Output, RecordKind, SyncConfig, SyncCore, SyncPath, SyncStorage,
    VersionId,
};

use common::mesh::*;

#[test]
fn a_file_written_on_one_device_appears_on_the_other() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    m.storage(0).local_write(&path("notes/a.md"), b"hello", 1);
    m.local_change(0);
    m.run(5_000);
    assert_eq!(m.content(1, "notes/a.md").unwrap(), b"hello");
}

#[test]
fn reconnect_after_a_small_change_sends_a_small_index() {
    let mut m = Mesh::new(2, |_| {});
    for i in 0..1000 {
        m.storage(0).local_write(&path(&format!("f{i}.md")), format!("note {i}").as_bytes(), 1);
    }
    m.connect_all();
    m.run(10_000);
    assert_eq!(m.cores[1].storage().live_records().unwrap().len(), 1000);
    m.disconnect(0, 1);
    m.storage(0).local_write(&path("f7.md"), b"changed while apart", 2);
    m.log.clear();
    m.connect(0, 1);
    m.run(5_000);
    assert_eq!(m.content(1, "f7.md").unwrap(), b"changed while apart");
    let records_sent: usize = m
        .log
        .iter()
        .filter_map(|(from, _, msg)| match msg {
            Message::IndexUpdate { records, .. } if *from == 0 => Some(records.len()),
            _ => None,
        })
        .sum();
    assert_eq!(records_sent, 1, "a reconnect sends only what changed since the last acknowledged sequence");
}

/// A version installed from a peer is not streamed back to it (a record of
/// a large file is mostly its block list); the range still covers it, so
/// both sides end in sync. A third device still gets it from either.
#[test]
fn records_are_not_echoed_back_to_the_device_that_sent_them() {
    let mut m = Mesh::new(3, |_| {});
    m.connect(0, 1);
    m.run(5_000);
    m.storage(0).local_write(&path("big.pdf"), &big(3 * 65_536 + 10, 9), 1);
    m.local_change(0);
    m.log.clear();
    m.run(10_000);
    assert!(m.content(1, "big.pdf").is_some());
    let records = |m: &Mesh, from: usize, to: usize| -> usize {
        m.log
            .iter()
            .filter_map(|(f, t, msg)| match msg {
                Message::IndexUpdate { records, .. } if *f == from && *t == to => Some(records.len()),
                _ => None,
            })
            .sum()
    };
    assert_eq!(records(&m, 0, 1), 1);
    assert_eq!(records(&m, 1, 0), 0, "device 1 must not send device 0 its own record back");
    assert!(m.cores[0].peer_progress().unwrap().iter().all(|p| p.in_sync()));
    assert!(m.cores[1].peer_progress().unwrap().iter().all(|p| p.in_sync()));
    // Device 2 meets only device 1 and gets it from there.
    m.connect(1, 2);
    m.run(10_000);
    assert_eq!(m.content(2, "big.pdf"), m.content(0, "big.pdf"));
    assert_eq!(records(&m, 2, 1), 0, "nor device 2 to device 1");
}

#[test]
fn replies_to_an_index_request_wait_a_random_delay() {
    // Device 0 has two peers asking at once: its replies are spread out.
    let mut m = Mesh::new(3, |c| c.reply_jitter_ms = 500);
    m.storage(0).local_write(&path("a.md"), b"x", 1);
    m.connect(0, 1);
    m.connect(0, 2);
    // Deliver the hellos and index requests, but no timers.
    for _ in 0..3 {
        for i in 0..3 {
            while let Some(out) = m.cores[i].poll_output() {
                if let Output::Send(to, message) = out {
                    let update = matches!(message, Message::IndexUpdate { .. });
                    assert!(!(i == 0 && update), "replied at once");
                    let j = m.index(&to);
                    let from = m.id(i);
                    m.cores[j].handle(m.now, Input::Message(from, message)).unwrap();
                }
            }
        }
    }
    let wake = m.cores[0].poll_timeout().unwrap();
    assert!(wake > m.now && wake <= m.now + 500, "the reply is scheduled within the jitter window");
}

/// With one peer there is nothing to swarm: the reply is not delayed.
#[test]
fn a_single_peer_gets_its_index_reply_without_delay() {
    let mut m = Mesh::new(2, |c| c.reply_jitter_ms = 500);
    m.storage(0).local_write(&path("a.md"), b"x", 1);
    m.connect(0, 1);
    for _ in 0..3 {
        for i in 0..2 {
            while let Some(out) = m.cores[i].poll_output() {
                if let Output::Send(to, message) = out {
                    let j = m.index(&to);
                    let from = m.id(i);
                    m.cores[j].handle(m.now, Input::Message(from, message)).unwrap();
                }
            }
        }
    }
    assert_eq!(m.cores[0].poll_timeout(), Some(m.now), "the reply is due now");
}

/// Updates with records that device `from` sent: when, and how many records.
fn updates_from(m: &Mesh, from: usize) -> Vec<(Millis, usize)> {
    m.log
        .iter()
        .zip(&m.times)
        .filter_map(|((f, _, msg), at)| match msg {
            Message::IndexUpdate { records, .. } if *f == from && !records.is_empty() => Some((*at, records.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lone_change_goes_at_once_and_typing_goes_once_per_window() {
    let mut m = Mesh::new(2, |c| c.debounce_ms = 100);
    m.connect_all();
    m.run(2_000);
    m.log.clear();
    m.times.clear();

    // A lone save: out after the grace, not after the window.
    let saved_at = m.now;
    m.storage(0).local_write(&path("lone.md"), b"one", 1);
    m.local_change(0);
    m.run(1_000);
    let lone = updates_from(&m, 0);
    assert_eq!(lone.len(), 1, "{lone:?}");
    assert!(lone[0].0 - saved_at <= 5, "sent {} ms after the save", lone[0].0 - saved_at);
    assert_eq!(m.content(1, "lone.md").unwrap(), b"one");

    // Typing: five saves 10 ms apart. The first goes at once, the other
    // four together at the end of its window.
    m.log.clear();
    m.times.clear();
    let started = m.now;
    for v in 0..5u8 {
        m.storage(0).local_write(&path("typing.md"), &[v; 10], 1);
        m.local_change(0);
        m.run(10);
    }
    m.run(1_000);
    let typing = updates_from(&m, 0);
    assert_eq!(typing.len(), 2, "five saves within 100 ms are two updates: {typing:?}");
    assert!(typing[0].0 - started <= 5);
    assert!(typing[1].0 - typing[0].0 >= 100, "the rest waited for the window: {typing:?}");
    assert_eq!(m.content(1, "typing.md").unwrap(), vec![4u8; 10]);
}

#[test]
fn a_corrupt_block_is_never_stored_and_is_fetched_again() {
    let mut m = Mesh::new(3, |c| c.block_timeout_ms = 500);
    let data = big(100_000, 3);
    m.storage(0).local_write(&path("doc.pdf"), &data, 1);
    m.storage(2).local_write(&path("doc.pdf"), &data, 1);
    // Make 2 agree with 0 (same record), so both can serve the blocks.
    let record = m.cores[0].storage().live(&path("doc.pdf")).unwrap().clone();
    m.storage(2).install(vec![record], &[]).unwrap();
    // The first answer for every block arrives corrupted, whoever sends it.
    let mut seen = std::collections::HashSet::new();
    m.tamper = Some(Box::new(move |_, _, msg| {
        if let Message::BlockResponse { hash, data: Some(d) } = msg {
            if seen.insert(*hash) {
                d[0] ^= 0xFF;
            }
        }
    }));
    m.connect_all();
    m.run(20_000);
    assert_eq!(m.content(1, "doc.pdf").unwrap(), data, "fetched intact from the honest peer");
    assert!(m.violations.iter().any(|(_, w)| w.contains("does not match its hash")), "{:?}", m.violations);
}

#[test]
fn large_files_stream_with_a_bounded_window() {
    let mut m = Mesh::new(2, |c| c.blocks_in_flight = 4);
    let data = big(40 * BLOCK_SIZE as usize, 9);
    m.storage(0).local_write(&path("big.bin"), &data, 1);
    // Hold back every block response, then count outstanding requests.
    m.drop_if = Some(Box::new(|_, _, msg| matches!(msg, Message::BlockResponse { .. })));
    m.connect_all();
    m.run(1_000);
    let requested = m.sent(|msg| matches!(msg, Message::BlockRequest { .. }));
    assert_eq!(requested, 4, "never more than the window in flight");
    assert!(m.content(1, "big.bin").is_none(), "an incomplete version is never visible");
    m.drop_if = None;
    m.run(60_000);
    assert_eq!(m.content(1, "big.bin").unwrap(), data);
}

#[test]
fn a_slow_link_that_keeps_delivering_is_never_asked_twice() {
    // 8 blocks in flight at one per 150 ms take 1.2 s, longer than the
    // 500 ms timeout: a request waits its turn behind the others while the
    // peer keeps answering, and is not asked again (on a lossy WAN, asking
    // again doubled the traffic until the sender's queue overflowed).
    let mut m = Mesh::new(2, |c| {
        c.block_timeout_ms = 500;
        c.blocks_in_flight = 8;
    });
    let data = big(40 * BLOCK_SIZE as usize, 11);
    m.storage(0).local_write(&path("big.bin"), &data, 1);
    m.pace = Some((150, Box::new(|from, _, msg| from == 0 && matches!(msg, Message::BlockResponse { .. }))));
    m.connect_all();
    m.run(60_000);
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    assert_eq!(m.content(1, "big.bin").unwrap(), data);
    let asked = m.sent(|msg| matches!(msg, Message::BlockRequest { .. } | Message::BlockRequestAgainst { .. }));
    let pages =
        m.sent(|msg| matches!(msg, Message::BlockResponse { data: Some(d), .. } if d.len() < BLOCK_SIZE as usize));
    assert_eq!(asked, 40 + pages, "every block asked for once");
    assert_eq!(m.sent(|msg| matches!(msg, Message::BlockResponse { .. })), asked, "and sent once");
}

#[test]
fn a_peer_that_stops_answering_is_asked_again_after_the_timeout() {
    let mut m = Mesh::new(3, |c| c.block_timeout_ms = 500);
    let data = big(6 * BLOCK_SIZE as usize, 12);
    m.storage(0).local_write(&path("doc.pdf"), &data, 1);
    let record = m.storage(0).local_write(&path("doc.pdf"), &data, 1);
    m.storage(2).store_content(&data);
    m.storage(2).install(vec![record], &[]).unwrap();
    // Device 0 never answers block requests; 2 does.
    m.drop_if = Some(Box::new(|from, _, msg| from == 0 && matches!(msg, Message::BlockResponse { .. })));
    m.connect_all();
    m.run(20_000);
    assert_eq!(m.content(1, "doc.pdf").unwrap(), data, "fetched from the peer that answers");
}

#[test]
fn a_peer_that_answers_all_but_one_request_loses_it_to_another_source() {
    // Device 0 keeps answering (a large file only it has, one block per
    // 100 ms) but never sends the blocks of one small file: they come from
    // device 2 once the request has waited its cap, long before 0's queue
    // runs dry (2 talks to 1 only, so 1 can take the large file from 0 alone).
    let mut m = Mesh::new(3, |c| {
        c.block_timeout_ms = 500;
        c.blocks_in_flight = 8;
    });
    let large = big(300 * BLOCK_SIZE as usize, 21);
    let small = big(2 * BLOCK_SIZE as usize, 22);
    m.storage(0).local_write(&path("large.bin"), &large, 1);
    let record = m.storage(0).local_write(&path("small.bin"), &small, 1);
    m.storage(2).store_content(&small);
    m.storage(2).install(vec![record], &[]).unwrap();
    let withheld: std::collections::BTreeSet<ContentHash> =
        small.chunks(BLOCK_SIZE as usize).map(ContentHash::of).collect();
    let skipped = withheld.clone();
    m.drop_if = Some(Box::new(move |from, _, msg| {
        from == 0 && matches!(msg, Message::BlockResponse { hash, .. } if skipped.contains(hash))
    }));
    m.pace = Some((100, Box::new(|from, _, msg| from == 0 && matches!(msg, Message::BlockResponse { .. }))));
    m.connect(0, 1);
    m.run(2_000);
    let asked_of_0 = m.log.iter().any(|(from, to, msg)| {
        (*from, *to) == (1, 0) && matches!(msg, Message::BlockRequest { hash, .. } if withheld.contains(hash))
    });
    assert!(asked_of_0, "device 0 was asked for the withheld blocks first");
    m.connect(1, 2);
    m.run(13_000);
    assert_eq!(m.content(1, "small.bin").unwrap(), small, "fetched from device 2");
    assert!(m.content(1, "large.bin").is_none(), "while device 0 was still answering");
    m.run(60_000);
    assert_eq!(m.content(1, "large.bin").unwrap(), large);
}

/// Bytes of block traffic (requests, responses, patches) in `log`, encoded.
fn block_bytes(log: &[(usize, usize, Message)]) -> usize {
    log.iter()
        .filter(|(_, _, m)| {
            matches!(
                m,
                Message::BlockRequest { .. }
                    | Message::BlockRequestAgainst { .. }
                    | Message::BlockResponse { .. }
                    | Message::BlockPatch { .. }
            )
        })
        .map(|(_, _, m)| psync_sync::message::encode_frame(m).unwrap().len())
        .sum()
}

#[test]
fn a_one_byte_edit_of_a_large_file_travels_as_patches() {
    let mut m = Mesh::new(2, |_| {});
    // 300 blocks: the record names two pages of block hashes.
    let mut data = big(300 * BLOCK_SIZE as usize, 4);
    m.storage(0).local_write(&path("big.bin"), &data, 1);
    m.connect_all();
    m.run(60_000);
    assert_eq!(m.content(1, "big.bin").unwrap(), data);
    m.log.clear();
    data[200 * BLOCK_SIZE as usize + 777] ^= 0x5A;
    m.storage(0).local_write(&path("big.bin"), &data, 2);
    m.local_change(0);
    m.run(10_000);
    assert_eq!(m.content(1, "big.bin").unwrap(), data);
    let patches: Vec<(u32, u32, usize)> = m
        .log
        .iter()
        .filter_map(|(_, _, msg)| match msg {
            Message::BlockPatch { prefix, suffix, middle, .. } => Some((*prefix, *suffix, middle.len())),
            _ => None,
        })
        .collect();
    // The page that names block 200 (one hash changed), then the block.
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(patches.iter().all(|(_, _, len)| *len <= 32), "{patches:?}");
    assert_eq!(m.sent(|msg| matches!(msg, Message::BlockResponse { .. })), 0, "nothing sent whole");
    let bytes = block_bytes(&m.log);
    assert!(bytes < 512, "{bytes} bytes of block traffic for a 1-byte edit");
}

#[test]
fn patches_that_do_not_rebuild_the_block_are_refused_and_it_is_fetched_again() {
    let mut m = Mesh::new(4, |c| c.block_timeout_ms = 500);
    let mut data = big(3 * BLOCK_SIZE as usize, 5);
    m.storage(0).local_write(&path("doc.pdf"), &data, 1);
    m.connect_all();
    m.run(30_000);
    // An edit on 0 that 2 and 3 have as well (same record): three sources.
    data[BLOCK_SIZE as usize + 9] ^= 1;
    let record = m.storage(0).local_write(&path("doc.pdf"), &data, 2);
    for i in [2, 3] {
        m.storage(i).store_content(&data);
        m.storage(i).install(vec![record.clone()], &[]).unwrap();
    }
    // The first patch comes with a flipped byte, the second claims more of
    // the base than there is; the third is honest.
    let mut patches = 0;
    m.tamper = Some(Box::new(move |_, to, msg| {
        if let (1, Message::BlockPatch { middle, prefix, .. }) = (to, msg) {
            patches += 1;
            match patches {
                1 => middle[0] ^= 0xFF,
                2 => *prefix = u32::MAX / 2,
                _ => {}
            }
        }
    }));
    m.local_change(0);
    m.run(20_000);
    assert_eq!(m.content(1, "doc.pdf").unwrap(), data, "rebuilt from an honest answer");
    let said = |what: &str| m.violations.iter().filter(|(i, w)| *i == 1 && w.contains(what)).count();
    assert_eq!(said("does not match its hash"), 1, "{:?}", m.violations);
    assert_eq!(said("bytes of a"), 1, "{:?}", m.violations);
}

#[test]
fn renames_reuse_blocks() {
    let mut m = Mesh::new(2, |_| {});
    let data = big(20 * BLOCK_SIZE as usize, 1);
    m.storage(0).local_write(&path("a/big.pdf"), &data, 1);
    m.connect_all();
    m.run(30_000);
    m.log.clear();
    // Rename a/big.pdf -> b/big.pdf on device 0.
    m.storage(0).local_mkdir(&path("b"), 2);
    m.storage(0).local_write(&path("b/big.pdf"), &data, 2);
    m.storage(0).local_delete(&path("a/big.pdf"), 2);
    m.local_change(0);
    m.run(10_000);
    assert_eq!(m.content(1, "b/big.pdf").unwrap(), data);
    assert!(m.content(1, "a/big.pdf").is_none());
    assert_eq!(m.sent(|msg| matches!(msg, Message::BlockRequest { .. })), 0, "no data re-sent for a rename");
}

#[test]
fn concurrent_edits_keep_both_versions_under_the_same_names_everywhere() {
    let mut m = Mesh::new(3, |_| {});
    m.connect_all();
    m.storage(0).local_write(&path("n.md"), b"base", 1);
    m.local_change(0);
    m.run(5_000);
    for i in 0..3 {
        m.disconnect(i, (i + 1) % 3);
    }
    m.storage(0).local_write(&path("n.md"), b"edit on 0", 2);
    m.storage(1).local_write(&path("n.md"), b"edit on 1", 2);
    m.storage(2).local_delete(&path("n.md"), 2);
    m.connect_all();
    for i in 0..3 {
        m.local_change(i);
    }
    m.run(30_000);
    let trees: Vec<Vec<FileRecord>> = (0..3).map(|i| m.cores[i].storage().live_records().unwrap()).collect();
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[1], trees[2]);
    let contents: Vec<Vec<u8>> = trees[0].iter().map(|r| m.cores[0].storage().content(r).unwrap()).collect();
    assert!(
        contents.contains(&b"edit on 0".to_vec()) && contents.contains(&b"edit on 1".to_vec()),
        "both edits survive the delete"
    );
    assert_eq!(trees[0].len(), 2, "one keeps the name, the other is a conflict copy: {trees:?}");
    assert!(trees[0].iter().any(|r| r.path.as_str().contains(".sync-conflict-")));
}

#[test]
fn tombstones_go_only_when_every_device_has_them() {
    let mut m = Mesh::new(3, |c| {
        c.tombstone_min_age_secs = 0;
        c.gc_interval_ms = 1_000;
    });
    m.connect_all();
    m.storage(0).local_write(&path("gone.md"), b"x", 1);
    m.local_change(0);
    m.run(5_000);
    m.disconnect(0, 2);
    m.disconnect(1, 2);
    let now_secs = (m.now / 1000) as i64;
    m.storage(0).local_delete(&path("gone.md"), now_secs);
    m.local_change(0);
    m.run(10_000);
    let tomb = |m: &Mesh, i: usize| m.cores[i].storage().record(&path("gone.md")).unwrap();
    assert!(tomb(&m, 0).is_some_and(|r| r.deleted), "device 2 is offline: the tombstone stays");
    m.connect(0, 2);
    m.connect(1, 2);
    m.run(20_000);
    assert!(m.content(2, "gone.md").is_none(), "the offline device learns of the delete");
    assert!(tomb(&m, 0).is_none(), "once all have it, it is collected");
}

#[test]
fn read_only_devices_are_not_listened_to_but_receive_everything() {
    let mut m = Mesh::new(2, |c| c.read_only = vec![dev(2)]);
    m.connect_all();
    m.storage(1).local_write(&path("from-readonly.md"), b"ignored", 1);
    m.local_change(1);
    m.storage(0).local_write(&path("from-full.md"), b"applied", 1);
    m.local_change(0);
    m.run(5_000);
    assert!(m.content(0, "from-readonly.md").is_none());
    assert_eq!(m.content(1, "from-full.md").unwrap(), b"applied");
}

#[test]
fn upload_rate_limit_spreads_blocks_over_time() {
    let mut m = Mesh::new(2, |c| c.upload_bytes_per_sec = Some(4 * BLOCK_SIZE));
    let data = big(16 * BLOCK_SIZE as usize, 2);
    m.storage(0).local_write(&path("big.bin"), &data, 1);
    m.connect_all();
    m.run(60_000);
    assert_eq!(m.content(1, "big.bin").unwrap(), data);
    let sent_at = block_responses(&m, 0, 0);
    assert_eq!(sent_at.len(), 16);
    // A 4-block burst, then 12 blocks at 4 blocks per second: about 3 s.
    let spread = sent_at[15] - sent_at[0];
    assert!((2_900..=4_000).contains(&spread), "16 blocks took {spread} ms at 4 blocks/s");
}

/// When device `from` sent blocks, from the `first`-th logged message on.
fn block_responses(m: &Mesh, from: usize, first: usize) -> Vec<Millis> {
    m.log[first..]
        .iter()
        .zip(&m.times[first..])
        .filter(|((sender, _, msg), _)| *sender == from && matches!(msg, Message::BlockResponse { .. }))
        .map(|(_, t)| *t)
        .collect()
}

#[test]
fn limits_changed_while_running_apply_at_once() {
    // Unlimited at first; then 4 blocks a second, set while running (as
    // `psync settings` does), spreads the next transfer.
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    m.run(1_000);
    let now = m.now;
    m.cores[0].set_limits(now, 250, Some(4 * BLOCK_SIZE), None);
    let data = big(16 * BLOCK_SIZE as usize, 3);
    m.storage(0).local_write(&path("big.bin"), &data, 1);
    m.local_change(0);
    m.run(60_000);
    assert_eq!(m.content(1, "big.bin").unwrap(), data);
    let sent_at = block_responses(&m, 0, 0);
    assert_eq!(sent_at.len(), 16);
    let spread = sent_at[15] - sent_at[0];
    assert!((2_900..=4_000).contains(&spread), "16 blocks took {spread} ms at 4 blocks/s");
    // Unlimited again: the next file goes in one burst.
    let now = m.now;
    m.cores[0].set_limits(now, 250, None, None);
    let first = m.log.len();
    m.storage(0).local_write(&path("big2.bin"), &big(16 * BLOCK_SIZE as usize, 4), 1);
    m.local_change(0);
    m.run(10_000);
    let times = block_responses(&m, 0, first);
    assert_eq!(times.len(), 16);
    assert!(times[15] - times[0] < 1_000, "unlimited: {} ms", times[15] - times[0]);
}

#[test]
fn a_peer_with_another_protocol_version_is_refused() {
    let mut m = Mesh::new(2, |_| {});
    m.tamper = Some(Box::new(|_, _, msg| {
        if let Message::Hello { protocol, .. } = msg {
            *protocol = 99;
        }
    }));
    m.connect_all();
    m.run(1_000);
    assert!(m.violations.iter().any(|(_, w)| w.contains("protocol version 99")));
}

// ---- the rules, directly ------------------------------------------------------------

fn rec(p: &str, vv: &[(u8, u64)], dot: (u8, u64), body: &[u8], deleted: bool) -> FileRecord {
    let mut v = VersionVector::new();
    for (d, c) in vv {
        v.set(dev(*d), *c);
    }
    FileRecord {
        path: path(p),
        kind: RecordKind::File,
        deleted,
        vv: v,
        version: VersionId { device: dev(dot.0), counter: dot.1 },
        size: if deleted { 0 } else { body.len() as u64 },
        blocks: Blocks::Listed(if deleted || body.is_empty() { vec![] } else { vec![Some(ContentHash::of(body))] }),
        symlink: vec![],
        perm: 0o644,
        mtime: 0,
        xattrs: None,
    }
}

#[test]
fn resolution_is_the_same_whichever_side_runs_it() {
    let a = rec("n.md", &[(1, 2)], (1, 2), b"a", false);
    let b = rec("n.md", &[(2, 3)], (2, 3), b"b", false);
    let (Resolution::Conflict { merged: m1, copy: c1 }, Resolution::Conflict { merged: m2, copy: c2 }) =
        (resolve(Some(&a), &b), resolve(Some(&b), &a))
    else {
        panic!("concurrent edits must conflict")
    };
    assert_eq!(m1, m2);
    assert_eq!(c1, c2);
    assert_eq!(m1.version.device, dev(2), "the higher device id keeps the name");
    assert_eq!(c1.unwrap().path.as_str(), format!("n.sync-conflict-{}-2.md", &dev(1).short()[..8]));
}

#[test]
fn an_edit_survives_a_concurrent_delete() {
    let edit = rec("n.md", &[(1, 5)], (1, 5), b"kept", false);
    let delete = rec("n.md", &[(2, 4)], (2, 4), b"", true);
    for (local, incoming) in [(&edit, &delete), (&delete, &edit)] {
        match resolve(Some(local), incoming) {
            Resolution::Conflict { merged, copy } => {
                assert!(!merged.deleted);
                assert!(copy.is_none(), "nothing to keep of a deletion");
            }
            Resolution::Keep => assert_eq!(local, &edit),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn an_edit_of_merged_content_is_not_a_conflict() {
    // `merged` holds 1's content but has also seen 2's deletion; `edit` is a
    // later edit of 1's content that never saw the deletion.
    let merged = rec("n.md", &[(1, 5), (2, 9)], (1, 5), b"v1", false);
    let edit = rec("n.md", &[(1, 5), (3, 7)], (3, 7), b"v2", false);
    assert_eq!(edit.vv.compare(&merged.vv), Causality::Concurrent);
    match resolve(Some(&merged), &edit) {
        Resolution::Conflict { merged: m, copy } => {
            assert_eq!(m.version, edit.version, "the edit of the content wins");
            assert!(copy.is_none(), "the content it replaced is not a conflict");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn conflict_names() {
    let v = VersionId { device: dev(0xAB), counter: 7 };
    assert_eq!(conflict_name("note.md", &v), "note.sync-conflict-abababab-7.md");
    assert_eq!(conflict_name("Makefile", &v), "Makefile.sync-conflict-abababab-7");
    assert_eq!(conflict_name(".bashrc", &v), ".bashrc.sync-conflict-abababab-7");
    assert_eq!(conflict_name("a.tar.gz", &v), "a.tar.sync-conflict-abababab-7.gz");
    let long = format!("{}.md", "é".repeat(127));
    let name = conflict_name(&long, &v);
    assert!(name.len() <= 255 && name.ends_with("-7.md"), "{} bytes", name.len());
    assert!(SyncPath::new(&name).is_ok());
}

#[test]
fn winner_order_is_total_and_prefers_live_then_directories() {
    let live = rec("x", &[(1, 1)], (1, 1), b"a", false);
    let dead = rec("x", &[(9, 1)], (9, 1), b"", true);
    assert_eq!(winner_order(&live, &dead), std::cmp::Ordering::Greater);
    let mut dir = rec("x", &[(1, 1)], (1, 1), b"", false);
    dir.kind = RecordKind::Dir;
    dir.blocks = Blocks::default();
    let file = rec("x", &[(9, 9)], (9, 9), b"f", false);
    assert_eq!(winner_order(&dir, &file), std::cmp::Ordering::Greater);
    assert_eq!(winner_order(&file, &file), std::cmp::Ordering::Equal);
}

#[test]
fn merkle_trees_find_only_what_differs() {
    use psync_sync::merkle::Tree;
    let mut records: Vec<FileRecord> =
        (0..200).map(|i| rec(&format!("d{}/f{i}.md", i % 10), &[(1, i + 1)], (1, i + 1), b"x", false)).collect();
    let a = Tree::build(&records);
    records[57] = rec("d7/f57.md", &[(1, 999)], (1, 999), b"changed", false);
    let b = Tree::build(&records);
    assert_ne!(a.root, b.root);
    let top_a = a.children(None);
    let top_b = b.children(None);
    let differing: Vec<&str> =
        top_a.iter().zip(&top_b).filter(|(x, y)| x.hash != y.hash).map(|(x, _)| x.name.as_str()).collect();
    assert_eq!(differing, vec!["d7"], "one top-level subtree differs");
    let inner: Vec<String> = a
        .children(Some(&path("d7")))
        .iter()
        .zip(b.children(Some(&path("d7"))))
        .filter(|(x, y)| x.hash != y.hash)
        .map(|(x, _)| x.name.clone())
        .collect();
    assert_eq!(inner, vec!["f57.md"]);
    assert_eq!(Tree::build(&records).root, b.root, "deterministic");
}

#[test]
fn peer_progress_says_in_sync_only_when_both_sides_have_everything() {
    let in_sync = |m: &Mesh, i: usize| -> Vec<bool> {
        m.cores[i].peer_progress().unwrap().iter().map(|p| p.in_sync()).collect::<Vec<_>>()
    };
    let mut m = Mesh::new(2, |_| {});
    m.storage(0).local_write(&path("a.md"), &big(300_000, 1), 1);
    m.connect_all();
    assert_eq!(in_sync(&m, 0), vec![false], "before the hellos nothing is in sync");
    m.run(10_000);
    assert_eq!(in_sync(&m, 0), vec![true]);
    assert_eq!(in_sync(&m, 1), vec![true]);

    // A local change not yet acknowledged: out of sync on the writer, and on
    // the reader while the blocks are still missing.
    m.storage(1).local_write(&path("b.md"), &big(200_000, 2), 2);
    m.local_change(1);
    let progress = &m.cores[1].peer_progress().unwrap()[0];
    assert!(!progress.in_sync());
    assert_eq!(progress.outgoing(), 1);
    m.drop_if = Some(Box::new(|_, _, msg| matches!(msg, Message::BlockResponse { .. })));
    m.run(3_000);
    let waiting = &m.cores[0].peer_progress().unwrap()[0];
    assert!(!waiting.in_sync() && waiting.waiting_records == 1, "{waiting:?}");
    assert!(m.cores[0].wanted_blocks() > 0);
    m.drop_if = None;
    m.run(60_000);
    assert_eq!(in_sync(&m, 0), vec![true]);
    assert_eq!(in_sync(&m, 1), vec![true]);
    assert_eq!(m.cores[0].wanted_blocks(), 0);
}

/// A file open for writing is never replaced by a peer's version: the
/// version is held; after the close, the rules decide: both contents survive
/// when both changed, the peer's version simply lands when nothing did.
#[test]
fn a_file_open_for_writing_is_not_replaced_and_both_versions_survive() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    m.storage(0).local_write(&path("a.md"), b"v1", 1);
    m.storage(0).local_write(&path("b.md"), b"v1", 1);
    m.local_change(0);
    m.run(5_000);
    assert_eq!(m.content(1, "a.md").unwrap(), b"v1");

    // Device 1 has both open for writing; device 0 edits both.
    m.storage(1).set_busy(&path("a.md"), true);
    m.storage(1).set_busy(&path("b.md"), true);
    m.storage(0).local_write(&path("a.md"), b"remote edit", 2);
    m.storage(0).local_write(&path("b.md"), b"remote edit", 2);
    m.local_change(0);
    m.run(10_000);
    assert_eq!(m.content(1, "a.md").unwrap(), b"v1", "an open file is not replaced");
    assert_eq!(m.cores[1].held_count(), 2);

    // a.md: written locally, then closed. b.md: closed without a change.
    m.storage(1).local_write(&path("a.md"), b"local edit", 3);
    m.storage(1).set_busy(&path("a.md"), false);
    m.storage(1).set_busy(&path("b.md"), false);
    m.local_change(1);
    m.run(30_000);
    assert_eq!(m.cores[1].held_count(), 0);
    for i in 0..2 {
        assert_eq!(m.content(i, "b.md").unwrap(), b"remote edit");
        let a_versions: Vec<Vec<u8>> = m.cores[i]
            .storage()
            .all()
            .filter(|r| !r.deleted && r.path.as_str().starts_with('a'))
            .filter_map(|r| m.cores[i].storage().content(r))
            .collect();
        assert_eq!(a_versions.len(), 2, "winner and conflict copy on device {i}");
        assert!(a_versions.contains(&b"local edit".to_vec()) && a_versions.contains(&b"remote edit".to_vec()));
    }
}

/// The e2e case: the laptop's fsync'd text reaches the desktop after the
/// desktop's own edit (a conflict there: merged record and copy), while the
/// laptop still has the file open; then it writes more and closes. Its final
/// text must survive.
#[test]
fn a_held_conflict_does_not_swallow_the_writers_final_text() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    m.storage(0).local_write(&path("draft.md"), b"shared start", 1);
    m.local_change(0);
    m.run(5_000);
    m.storage(1).set_busy(&path("draft.md"), true);
    m.disconnect(0, 1);
    m.storage(1).local_write(&path("draft.md"), b"laptop, still typing", 2);
    m.local_change(1);
    m.storage(0).local_write(&path("draft.md"), b"desktop's edit", 2);
    m.local_change(0);
    m.connect(0, 1);
    m.run(10_000);
    assert!(m.cores[1].held_count() >= 1);
    m.storage(1).local_write(&path("draft.md"), b"laptop, still typing and done", 3);
    m.storage(1).set_busy(&path("draft.md"), false);
    m.local_change(1);
    m.run(30_000);
    for i in 0..2 {
        let texts: Vec<Vec<u8>> = m.cores[i]
            .storage()
            .all()
            .filter(|r| !r.deleted && r.path.as_str().starts_with("draft"))
            .filter_map(|r| m.cores[i].storage().content(r))
            .collect();
        assert!(texts.contains(&b"laptop, still typing and done".to_vec()), "device {i}: {texts:?}");
        assert!(texts.contains(&b"desktop's edit".to_vec()), "device {i}: {texts:?}");
    }
}

// ---- holding, bounds, large files, roles ----------------------------------------------

fn held_reasons(m: &Mesh, i: usize) -> Vec<(String, psync_sync::HoldReason)> {
    m.cores[i].held().into_iter().map(|h| (h.path.as_str().to_string(), h.reason)).collect()
}

/// A version that cannot be installed here now (local files that do not
/// sync are in the way) is held with the reason; everything else arrives;
/// the peer counts it not applied; once the path is free it goes in.
#[test]
fn a_version_that_cannot_go_in_is_held_and_the_rest_syncs() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    m.run(2_000);
    m.storage(1).set_blocked(&path("drafts"), Some("the folder holds a FIFO"));
    m.storage(0).local_mkdir(&path("drafts"), 1);
    m.storage(0).local_write(&path("drafts/a.md"), b"draft", 1);
    m.storage(0).local_write(&path("free.md"), b"free", 1);
    m.local_change(0);
    m.run(5_000);
    assert_eq!(m.content(1, "free.md").unwrap(), b"free", "the rest syncs");
    let held = held_reasons(&m, 1);
    assert!(
        held.iter()
            .any(|(p, r)| p == "drafts/a.md" && matches!(r, psync_sync::HoldReason::Blocked(w) if w.contains("FIFO"))),
        "{held:?}"
    );
    assert!(!m.cores[1].peer_progress().unwrap()[0].in_sync(), "held is not in sync");
    m.storage(1).set_blocked(&path("drafts"), None);
    m.local_change(1);
    m.run(10_000);
    assert_eq!(m.content(1, "drafts/a.md").unwrap(), b"draft");
    assert_eq!(m.cores[1].held_count(), 0);
    assert!(m.cores[1].peer_progress().unwrap()[0].in_sync());
    assert!(m.cores[0].peer_progress().unwrap()[0].in_sync());
}

/// A full disk pauses installs and downloads; once there is space they
/// resume by themselves (no local change needed), and nothing is lost.
#[test]
fn a_full_disk_pauses_and_sync_resumes_by_itself() {
    let mut m = Mesh::new(2, |_| {});
    m.connect_all();
    m.run(2_000);
    m.storage(1).set_disk_full(true);
    for i in 0..5 {
        m.storage(0).local_write(&path(&format!("n{i}.md")), format!("note {i}").as_bytes(), 1);
    }
    m.local_change(0);
    m.run(3_000);
    assert!(m.cores[1].disk_full(), "installs are paused");
    assert!(m.content(1, "n0.md").is_none());
    m.storage(1).set_disk_full(false);
    m.run(120_000);
    for i in 0..5 {
        assert_eq!(m.content(1, &format!("n{i}.md")).unwrap(), format!("note {i}").as_bytes());
    }
    assert!(!m.cores[1].disk_full());
    assert!(m.cores[1].peer_progress().unwrap()[0].in_sync());
}

/// Index frames are cut by bytes, not only by count: long paths never make
/// a frame larger than the budget (plus the one record that starts it).
#[test]
fn index_frames_are_cut_by_bytes() {
    use psync_sync::limits::RECORD_FRAME_BYTES;
    let mut m = Mesh::new(2, |_| {});
    let dir = "d".repeat(200);
    let mut parent = String::new();
    for level in 0..15 {
        parent = if level == 0 { dir.clone() } else { format!("{parent}/{dir}") };
        m.storage(0).local_mkdir(&path(&parent), 1);
    }
    for i in 0..1_000 {
        m.storage(0).local_write(&path(&format!("{parent}/{i:0>200}")), b"x", 1);
    }
    m.connect_all();
    m.run(30_000);
    assert_eq!(m.cores[1].storage().live_records().unwrap().len(), 1_015);
    let sizes: Vec<usize> = m
        .log
        .iter()
        .filter(|(_, _, msg)| matches!(msg, Message::IndexUpdate { records, .. } if !records.is_empty()))
        .map(|(_, _, msg)| psync_sync::message::encode_frame(msg).unwrap().len())
        .collect();
    assert!(sizes.len() >= 3, "{} frames for about 3.5 MB of records", sizes.len());
    assert!(sizes.iter().all(|s| *s <= RECORD_FRAME_BYTES + 8_192), "{sizes:?}");
}

/// A tree node with more children than fit a frame answers in parts, each
/// bounded, covering every child once.
#[test]
fn tree_responses_come_in_bounded_parts() {
    use psync_sync::limits::TREE_FRAME_BYTES;
    let mut core = SyncCore::new(MemStorage::new(dev(1), 1), SyncConfig::new(vec![dev(1), dev(2)]), 1, T0);
    core.storage_mut().local_mkdir(&path("big"), 1);
    for i in 0..40_000 {
        core.storage_mut().local_write(&path(&format!("big/{i:0>40}")), b"x", 1);
    }
    core.handle(T0, Input::Connected(dev(2))).unwrap();
    core.handle(
        T0,
        Input::Message(dev(2), Message::Hello { protocol: psync_sync::message::PROTOCOL_VERSION, index_id: 9, seq: 0 }),
    )
    .unwrap();
    while core.poll_output().is_some() {}
    core.handle(T0, Input::Message(dev(2), Message::TreeRequest { prefix: Some(path("big")) })).unwrap();
    let mut parts = Vec::new();
    while let Some(out) = core.poll_output() {
        if let Output::Send(_, msg @ Message::TreeResponse { .. }) = out {
            parts.push(msg);
        }
    }
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let mut names = Vec::new();
    let mut expected_after: Option<String> = None;
    for (i, part) in parts.iter().enumerate() {
        let size = psync_sync::message::encode_frame(part).unwrap().len();
        assert!(size <= TREE_FRAME_BYTES + 1_024, "part {i}: {size} bytes");
        let Message::TreeResponse { after, entries, complete, .. } = part else { unreachable!() };
        assert_eq!(*after, expected_after, "parts follow each other");
        assert_eq!(*complete, i + 1 == parts.len());
        expected_after = entries.last().map(|e| e.name.clone());
        names.extend(entries.iter().map(|e| e.name.clone()));
    }
    assert_eq!(names.len(), 40_000);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "each child once, in order");
}

/// A file with more blocks than a record lists (here 20 MiB, mostly holes)
/// travels as pages of block hashes, fetched like blocks: the record stays
/// small, and the content arrives whole.
#[test]
fn a_large_file_travels_as_pages() {
    let mut m = Mesh::new(2, |_| {});
    let mut data = vec![0u8; 20 << 20];
    for (i, chunk) in data.chunks_mut(BLOCK_SIZE as usize).enumerate() {
        if i % 7 == 0 {
            chunk[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
    }
    let record = m.storage(0).local_write(&path("video.bin"), &data, 1);
    assert!(matches!(record.blocks, Blocks::Paged(ref pages) if pages.len() == 2), "{:?}", record.blocks);
    m.connect_all();
    m.run(60_000);
    assert_eq!(m.content(1, "video.bin").unwrap(), data);
    let record_bytes: usize = m
        .log
        .iter()
        .filter(|(_, _, msg)| matches!(msg, Message::IndexUpdate { records, .. } if !records.is_empty()))
        .map(|(_, _, msg)| psync_sync::message::encode_frame(msg).unwrap().len())
        .sum();
    assert!(record_bytes < 1_024, "the record names 2 pages, not 320 blocks: {record_bytes} bytes");
    let requested = m.sent(|msg| matches!(msg, Message::BlockRequest { .. }));
    assert_eq!(requested, 2 + 320usize.div_ceil(7), "two pages, then the blocks that are not holes");
}

/// Read-only is the sending device's role, not something in a version's
/// history: a full device's edit of content a (since demoted) device once
/// made is taken; the demoted device's own new changes are not.
#[test]
fn read_only_is_enforced_on_the_sender() {
    let mut m = Mesh::new(3, |_| {});
    m.connect_all();
    m.storage(2).local_write(&path("a.md"), b"from 2 while full", 1);
    m.local_change(2);
    m.run(5_000);
    assert_eq!(m.content(0, "a.md").unwrap(), b"from 2 while full");
    for core in &mut m.cores {
        core.set_group(vec![dev(1), dev(2), dev(3)], vec![dev(3)]);
    }
    m.storage(2).local_write(&path("b.md"), b"from 2, read-only now", 2);
    m.local_change(2);
    m.storage(1).local_write(&path("a.md"), b"edited on 1", 2);
    m.local_change(1);
    m.run(10_000);
    assert_eq!(m.content(0, "a.md").unwrap(), b"edited on 1", "a full device's edit is taken");
    assert!(m.content(0, "b.md").is_none() && m.content(1, "b.md").is_none(), "the read-only device's is not");
    assert_eq!(m.content(2, "a.md").unwrap(), b"edited on 1", "it still receives everything");
}

/// A device removed from the group: its link is dropped at once, what it
/// sent and is not installed yet is forgotten, and it is refused if it
/// connects again.
#[test]
fn a_removed_device_is_dropped_and_refused() {
    let mut m = Mesh::new(3, |_| {});
    m.connect_all();
    m.run(2_000);
    m.violations.clear();
    m.cores[0].set_group(vec![dev(1), dev(2)], vec![]);
    let mut dropped = Vec::new();
    while let Some(out) = m.cores[0].poll_output() {
        if let Output::Violation(peer, why) = out {
            dropped.push((peer, why));
        }
    }
    assert!(dropped.iter().any(|(p, w)| *p == dev(3) && w.contains("no longer in the group")), "{dropped:?}");
    assert_eq!(m.cores[0].peer_progress().unwrap().len(), 1);
    m.cores[0].handle(m.now, Input::Connected(dev(3))).unwrap();
    let refused = std::iter::from_fn(|| m.cores[0].poll_output())
        .any(|o| matches!(o, Output::Violation(p, ref w) if p == dev(3) && w.contains("not a member")));
    assert!(refused);
}

/// A read-only device's own changes stay on it and are listed; a revert
/// takes the group's version back (a file only it made goes).
#[test]
fn a_read_only_device_lists_its_own_changes_and_reverts_them() {
    let mut m = Mesh::new(2, |c| c.read_only = vec![dev(2)]);
    m.connect_all();
    m.storage(0).local_write(&path("a.md"), b"the group's", 1);
    m.local_change(0);
    m.run(5_000);
    assert_eq!(m.content(1, "a.md").unwrap(), b"the group's");
    assert!(m.cores[1].is_read_only() && !m.cores[0].is_read_only());
    m.storage(1).local_write(&path("a.md"), b"mine", 2);
    m.storage(1).local_write(&path("new.md"), b"only here", 2);
    m.local_change(1);
    m.run(5_000);
    assert_eq!(m.content(0, "a.md").unwrap(), b"the group's", "not taken by the group");
    assert_eq!(m.cores[1].own_changes().unwrap(), vec![path("a.md"), path("new.md")]);
    assert!(m.cores[0].own_changes().unwrap().is_empty());
    let now = m.now;
    assert_eq!(m.cores[1].revert(now, Vec::new()).unwrap(), 2);
    m.run(5_000);
    assert_eq!(m.content(1, "a.md").unwrap(), b"the group's");
    assert!(m.content(1, "new.md").is_none());
    assert!(m.cores[1].own_changes().unwrap().is_empty(), "{:?}", m.cores[1].own_changes());
}
