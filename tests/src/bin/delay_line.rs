//! `psync-delay-line NAMESPACE INTERFACE DELAY_MS`: delays every packet
//! leaving INTERFACE in network namespace NAMESPACE by DELAY_MS (what
//! `tc netem delay` would do; this kernel has no netem) until its standard
//! input closes. Prints `ready` once packets are being delayed. For the
//! benchmarks' lossy-link row; the network tests use the same delay line.

// Test tooling run by the benchmark as root: the shared delay line stops
// with a message when the namespace or iptables is not what it expects.
#![allow(clippy::expect_used, clippy::panic)]

#[path = "../../e2e/delay_line.rs"]
mod delay_line;

use std::io::Read;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namespace, interface, delay_ms] = args.as_slice() else {
        eprintln!("usage: psync-delay-line NAMESPACE INTERFACE DELAY_MS");
        std::process::exit(2);
    };
    let Ok(delay_ms) = delay_ms.parse::<u64>() else {
        eprintln!("DELAY_MS must be a whole number of milliseconds, not {delay_ms:?}");
        std::process::exit(2);
    };
    let line = delay_line::DelayLine::start(namespace, interface, Duration::from_millis(delay_ms));
    println!("ready");
    // Runs until whoever started it closes our input (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(line);
}
