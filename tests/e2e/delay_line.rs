//! Added latency for the network tests where the kernel has no `tc netem`
//! (this machine's: CONFIG_NET_SCH_NETEM is not set): iptables hands every
//! packet leaving through an interface to an NFQUEUE, and a thread inside
//! the namespace gives each one back after a fixed delay, in order: what
//! `tc qdisc add dev IF root netem delay D` does. With a loss rate it also
//! drops that share of the packets, each on its own (`netem loss P`): the
//! kernel hands NFQUEUE single packets, where an iptables `statistic` rule
//! would drop a whole GSO batch of up to 64 datagrams at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Packets held at once; past this the kernel lets packets through
/// undelayed (fail open) rather than adding loss the test did not ask for.
const QUEUE_MAX_PACKETS: u32 = 16_384;
/// How long the thread sleeps when nothing is due (bounds the added jitter).
const TICK: Duration = Duration::from_micros(500);

/// Delays every packet leaving one interface by a fixed time; stops on drop.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayLine {
    /// Starts delaying what leaves `interface` in `namespace` by `delay`.
    /// Returns once the queue is bound and the iptables rule is in place.
    #[allow(dead_code)] // the benchmark's binary uses only `start_lossy`
    pub fn start(namespace: &str, interface: &str, delay: Duration) -> DelayLine {
        Self::start_lossy(namespace, interface, delay, 0)
    }

    /// As [`DelayLine::start`], and drops `loss_ppm` packets per million,
    /// each independently.
    pub fn start_lossy(namespace: &str, interface: &str, delay: Duration, loss_ppm: u32) -> DelayLine {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (namespace, stop) = (namespace.to_string(), stop.clone());
            std::thread::spawn(move || run(&namespace, delay, loss_ppm, &stop, ready_tx))
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("delay line in {namespace}: {e}"),
            Err(_) => panic!("delay line in {namespace}: the thread ended before binding its queue"),
        }
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", namespace, "iptables", "-t", "mangle", "-A", "POSTROUTING"])
            .args(["-o", interface, "-j", "NFQUEUE", "--queue-num", "0"])
            .status()
            .expect("run iptables");
        assert!(status.success(), "iptables NFQUEUE rule in {namespace}");
        DelayLine { stop, thread: Some(thread) }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: joins the namespace (network namespaces are per thread),
/// binds queue 0 there and hands packets back once due.
fn run(
    namespace: &str,
    delay: Duration,
    loss_ppm: u32,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut dice = Dice::seeded(namespace);
    let mut queue = match bind(namespace) {
        Ok(queue) => {
            let _ = ready.send(Ok(()));
            queue
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        while let Ok(mut message) = queue.recv() {
            if loss_ppm > 0 && dice.roll_ppm() < loss_ppm {
                message.set_verdict(nfq::Verdict::Drop);
                if queue.verdict(message).is_err() {
                    return;
                }
                continue;
            }
            held.push_back((Instant::now() + delay, message));
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, mut message) = held.pop_front().expect("front exists");
            message.set_verdict(nfq::Verdict::Accept);
            if queue.verdict(message).is_err() {
                return; // the namespace is gone
            }
        }
        std::thread::sleep(TICK);
    }
    for (_, mut message) in held {
        message.set_verdict(nfq::Verdict::Accept);
        let _ = queue.verdict(message);
    }
}

fn bind(namespace: &str) -> Result<nfq::Queue, String> {
    let netns = std::fs::File::open(format!("/run/netns/{namespace}")).map_err(|e| format!("open netns: {e}"))?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    let mut queue = nfq::Queue::open().map_err(|e| format!("nfnetlink socket: {e}"))?;
    queue.bind(0).map_err(|e| format!("bind queue 0: {e}"))?;
    queue.set_copy_range(0, 0).map_err(|e| format!("copy range: {e}"))?;
    queue.set_queue_max_len(0, QUEUE_MAX_PACKETS).map_err(|e| format!("queue length: {e}"))?;
    queue.set_fail_open(0, true).map_err(|e| format!("fail open: {e}"))?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// A small deterministic generator (xorshift64*), seeded by the namespace's
/// name: the same run loses the same packets' positions.
struct Dice(u64);

impl Dice {
    fn seeded(name: &str) -> Dice {
        let seed = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
        Dice(seed | 1)
    }

    /// Uniform in 0..1,000,000.
    fn roll_ppm(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32 % 1_000_000
    }
}
