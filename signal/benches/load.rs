//! Load benchmark: N authenticated clients relaying signed envelopes through
//! one signalling server (a separate process, so its memory is its own).
//! Prints figures; asserts nothing.
//!
//! `cargo bench -p psync-signal --profile dev --bench load` (PSYNC_LOAD_CLIENTS=1000, PSYNC_LOAD_ROUNDS=5)

// A benchmark binary: failing loudly on setup errors is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use psync_signal::net::{serve_with, ClientEvent, IpLimits, ServeOptions, ServerDir, SignalClient};
use psync_signal::{DeviceKey, Envelope, Role, Roster, RosterOp};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn main() {
    // Child mode: be the server.
    if let Ok(dir) = std::env::var("PSYNC_LOAD_SERVE") {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("{}", listener.local_addr().unwrap());
            // All clients come from 127.0.0.1: lift the per-address limits.
            let limits = IpLimits { connections: usize::MAX, messages_per_second: f64::INFINITY };
            serve_with(
                listener,
                ServerDir::new(std::path::Path::new(&dir)).unwrap(),
                ServeOptions { limits, ..Default::default() },
            )
            .await
            .unwrap();
        });
        return;
    }
    let clients = env("PSYNC_LOAD_CLIENTS", 1000);
    let rounds = env("PSYNC_LOAD_ROUNDS", 5);
    let keys: Vec<Arc<DeviceKey>> = (0..clients).map(|_| Arc::new(DeviceKey::generate())).collect();
    let mut roster = Roster::create(&keys[0], "load", "d0", "", 0);
    for (i, k) in keys.iter().enumerate().skip(1) {
        let op =
            RosterOp::Add { key: k.public(), name: format!("d{i}"), role: Role::Full, dtls_fingerprint: String::new() };
        roster.apply(roster.sign_next(&keys[0], op, 0)).unwrap();
    }
    let group = roster.group_id();
    // A group this large is built by appends over time; store it directly.
    let dir = tempfile::tempdir().unwrap();
    ServerDir::new(dir.path()).unwrap().store(&roster).unwrap();
    let mut server = std::process::Command::new(std::env::current_exe().unwrap())
        .env("PSYNC_LOAD_SERVE", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut addr).unwrap();
    let url = format!("ws://{}", addr.trim());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let mut conns = Vec::new();
        for k in &keys {
            conns.push(SignalClient::spawn(url.clone(), group, k.clone()));
        }
        for c in &mut conns {
            loop {
                if let Some(ClientEvent::LoggedIn { .. }) = c.events.recv().await {
                    break;
                }
            }
        }
        println!("{clients} clients logged in after {:.2} s", start.elapsed().as_secs_f64());
        let mut latencies = Vec::new();
        for round in 0..rounds {
            // Each client sends one envelope to the next one.
            for (i, c) in conns.iter().enumerate() {
                let to = keys[(i + 1) % clients].public();
                let payload = now_ms().to_le_bytes().to_vec();
                c.relay(Envelope::seal(&keys[i], group, to, round as u64, 1, now_ms(), payload));
            }
            for c in conns.iter_mut() {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match tokio::time::timeout_at(deadline, c.events.recv()).await {
                        Ok(Some(ClientEvent::Relayed(e))) => {
                            let sent = u64::from_le_bytes(e.payload[..8].try_into().unwrap());
                            latencies.push(now_ms().saturating_sub(sent));
                            break;
                        }
                        Ok(Some(_)) => continue,
                        _ => panic!("an envelope did not arrive"),
                    }
                }
            }
        }
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "{} relayed messages: latency p50 {} ms, p99 {} ms, max {} ms",
            latencies.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap_or_default();
    let rss = status.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("VmRSS: ?").to_string();
    println!("server memory with {clients} connections: {}", rss.trim_start_matches("VmRSS:").trim());
    let _ = server.kill();
    let _ = server.wait();
}
