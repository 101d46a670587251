//! `psync-delay-line NAMESPACE INTERFACE DELAY_MS [LOSS_PPM]`: delays every
//! packet leaving INTERFACE in network namespace NAMESPACE by DELAY_MS and
//! drops LOSS_PPM packets per million, each on its own (what `tc netem delay
//! D loss P` would do; this kernel has no netem) until its standard input
//! closes. Prints `ready` once packets are being delayed. For the
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
    let (namespace, interface, delay_ms, loss_ppm) = match args.as_slice() {
        [n, i, d] => (n, i, d, "0"),
        [n, i, d, l] => (n, i, d, l.as_str()),
        _ => {
            eprintln!("usage: psync-delay-line NAMESPACE INTERFACE DELAY_MS [LOSS_PPM]");
            std::process::exit(2);
        }
    };
    let Ok(loss_ppm) = loss_ppm.parse::<u32>() else {
        eprintln!("LOSS_PPM must be a whole number of packets per million, not {loss_ppm:?}");
        std::process::exit(2);
    };
    let Ok(delay_ms) = delay_ms.parse::<u64>() else {
        eprintln!("DELAY_MS must be a whole number of milliseconds, not {delay_ms:?}");
        std::process::exit(2);
    };
    let line = delay_line::DelayLine::start_lossy(namespace, interface, Duration::from_millis(delay_ms), loss_ppm);
    println!("ready");
    // Runs until whoever started it closes our input (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(line);
}
