//! Devices on real (simulated) networks: an "internet" network namespace
//! with the signalling server (TLS) and coturn, home routers doing NAT, and
//! devices on the LANs behind them, each a real `psync` daemon with a real
//! FUSE mount and **default ICE settings** (only the server URL given).
//! Built with `ip netns`, veth pairs, bridges and iptables
//! (see `../shared/design/networks.md`). These fail, never skip, when the
//! namespaces cannot be built: `scripts/install-deps.sh` installs the tools.
//!
//! Addresses: the internet is 203.0.113.0/24 (the server and coturn at
//! .10, router *i* at .(10+i)); every home is 192.168.1.0/24 behind its
//! router (.1), device *j* of home *i* at 192.168.1.(10i+j).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::delay_line::DelayLine;
use crate::mount::noise;
use crate::support::{eventually, lazy, PATIENCE};

/// The internet's default gateway: nothing has this address.
const ELSEWHERE: &str = "203.0.113.254";
const SERVER_IP: &str = "203.0.113.10";
/// How long 16 MiB may take over the slow, lossy link.
const BIG_FILE_PATIENCE: Duration = Duration::from_secs(600);
const TURN_SECRET: &str = "psync-test-turn-secret";

/// Names are unique per world: tests run in parallel, and a namespace or
/// interface name is machine-wide.
static WORLDS: AtomicU32 = AtomicU32::new(0);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): these tests need iproute2, iptables and coturn (scripts/install-deps.sh)")
    })
}

/// Runs a setup command that must work.
fn must(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "building the test network failed (root, iproute2, iptables needed): {program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In namespace `ns` (network only: mounts stay visible to the test).
fn in_ns(ns: &str, program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{ns}")).arg(program);
    command
}

fn must_in(ns: &str, program: &str, args: &[&str]) {
    let mut command = in_ns(ns, program);
    let out = command.args(args).output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// How a home's router maps ports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nat {
    /// Endpoint-independent mapping: hole punching works.
    Cone,
    /// A new port per destination (`--random-fully`): only TURN gets through.
    Symmetric,
}

/// A world of namespaces, with the server and coturn running in it.
struct World {
    prefix: String,
    namespaces: Vec<String>,
    homes: u32,
    children: Vec<Child>,
    tmp: tempfile::TempDir,
    url: String,
    ca: PathBuf,
}

impl World {
    fn new() -> World {
        let n = WORLDS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("ps{}x{n}", std::process::id() % 100_000);
        let tmp = tempfile::tempdir().unwrap();
        let mut world = World {
            prefix,
            namespaces: Vec::new(),
            homes: 0,
            children: Vec::new(),
            tmp,
            url: format!("wss://{SERVER_IP}:7443"),
            ca: PathBuf::new(),
        };
        let inet = world.namespace("inet");
        must("ip", &["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &inet, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "br0"]);
        must("ip", &["-n", &inet, "link", "set", "br0", "up"]);
        // The rest of the internet: a default route to a gateway nobody
        // answers for, where packets vanish as a packet from a public server
        // to a private address does. Without it coturn's send to a peer's LAN
        // candidate fails with ENETUNREACH and coturn drops the allocation.
        must(
            "ip",
            &["-n", &inet, "neigh", "add", ELSEWHERE, "lladdr", "02:00:00:00:00:fe", "dev", "br0", "nud", "permanent"],
        );
        must("ip", &["-n", &inet, "route", "add", "default", "via", ELSEWHERE, "dev", "br0"]);
        world.start_servers(&inet);
        world
    }

    fn namespace(&mut self, name: &str) -> String {
        let ns = format!("{}{name}", self.prefix);
        must("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn inet(&self) -> String {
        format!("{}inet", self.prefix)
    }

    /// A veth pair from `a` (named `a_name`) to `b` (named `b_name`).
    fn wire(&self, a: &str, a_name: &str, b: &str, b_name: &str) {
        let (ta, tb) = (format!("{}{a_name}", self.prefix), format!("{}{b_name}", self.prefix));
        let (ta, tb) = (&ta[..ta.len().min(15)], &tb[..tb.len().min(15)]);
        must("ip", &["link", "add", ta, "type", "veth", "peer", "name", tb]);
        must("ip", &["link", "set", ta, "netns", a]);
        must("ip", &["link", "set", tb, "netns", b]);
        must("ip", &["-n", a, "link", "set", ta, "name", a_name]);
        must("ip", &["-n", b, "link", "set", tb, "name", b_name]);
    }

    /// The signalling server (TLS, handing out STUN and TURN) and coturn.
    fn start_servers(&mut self, inet: &str) {
        let dir = self.tmp.path().join("server");
        std::fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let out = run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=psync test signal",
                "-addext",
                &format!("subjectAltName=IP:{SERVER_IP}"),
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        self.ca = cert.clone();
        std::fs::write(dir.join("turn-secret"), format!("{TURN_SECRET}\n")).unwrap();

        let turn_dir = self.tmp.path().join("coturn");
        std::fs::create_dir_all(&turn_dir).unwrap();
        let coturn = in_ns(inet, "turnserver")
            .args(["-n", "-L", SERVER_IP, "--relay-ip", SERVER_IP, "--listening-port=3478"])
            .args(["--min-port=49152", "--max-port=49999", "--use-auth-secret"])
            .arg(format!("--static-auth-secret={TURN_SECRET}"))
            .args(["--realm=psync.test", "--fingerprint", "--no-tls", "--no-dtls", "--no-cli"])
            // As the README tells operators: never relay into private networks.
            .args(["--no-multicast-peers", "--denied-peer-ip=10.0.0.0-10.255.255.255"])
            .args(["--denied-peer-ip=172.16.0.0-172.31.255.255", "--denied-peer-ip=192.168.0.0-192.168.255.255"])
            .arg(format!("--log-file={}", turn_dir.join("turn.log").display()))
            .args(["--simple-log", "-v"])
            .arg(format!("--db={}", turn_dir.join("turndb").display()))
            .arg(format!("--pidfile={}", turn_dir.join("turnserver.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (coturn; scripts/install-deps.sh installs it)");
        self.children.push(coturn);

        let mut signal = in_ns(inet, env!("CARGO_BIN_EXE_psync"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["signal", "--listen", &format!("{SERVER_IP}:7443")])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--stun", &format!("stun:{SERVER_IP}:3478"), "--turn", &format!("turn:{SERVER_IP}:3478")])
            .arg("--turn-secret-file")
            .arg(dir.join("turn-secret"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start psync signal");
        let mut line = String::new();
        std::io::BufReader::new(signal.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains(&format!("listening on wss://{SERVER_IP}:7443")), "{line}");
        self.children.push(signal);
        // coturn answers once it listens: wait for its port.
        let turn_port = format!("{SERVER_IP}:3478");
        eventually(PATIENCE, "coturn to listen", || {
            let out = in_ns(inet, "ss").args(["-Hlun", "sport", "=", ":3478"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&turn_port)
        });
    }

    /// A home behind a router doing `nat`; returns its number.
    fn home(&mut self, nat: Nat) -> u32 {
        self.homes += 1;
        let i = self.homes;
        let router = self.namespace(&format!("r{i}"));
        let inet = self.inet();
        self.wire(&inet, &format!("w{i}"), &router, "wan");
        must("ip", &["-n", &inet, "link", "set", &format!("w{i}"), "master", "br0", "up"]);
        must("ip", &["-n", &router, "addr", "add", &format!("203.0.113.{}/24", 10 + i), "dev", "wan"]);
        must("ip", &["-n", &router, "link", "set", "wan", "up"]);
        must("ip", &["-n", &router, "link", "add", "lan", "type", "bridge"]);
        must("ip", &["-n", &router, "addr", "add", "192.168.1.1/24", "dev", "lan"]);
        must("ip", &["-n", &router, "link", "set", "lan", "up"]);
        must_in(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let mut masquerade = vec!["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"];
        if nat == Nat::Symmetric {
            masquerade.push("--random-fully");
        }
        must_in(&router, "iptables", &masquerade);
        // Nothing unsolicited from the internet, to the LAN or the router itself.
        for chain in ["FORWARD", "INPUT"] {
            must_in(
                &router,
                "iptables",
                &["-A", chain, "-i", "wan", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP"],
            );
        }
        i
    }

    fn router(&self, home: u32) -> String {
        format!("{}r{home}", self.prefix)
    }

    /// A device on home `home`'s LAN, not yet in a group.
    fn device(&mut self, home: u32, name: &str) -> Device {
        let j = self.namespaces.iter().filter(|n| n.starts_with(&format!("{}h{home}", self.prefix))).count() as u32 + 1;
        let ns = self.namespace(&format!("h{home}{j}"));
        let router = self.router(home);
        self.wire(&router, &format!("l{j}"), &ns, "eth0");
        must("ip", &["-n", &router, "link", "set", &format!("l{j}"), "master", "lan", "up"]);
        let ip = format!("192.168.1.{}", 10 * home + j);
        must("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "route", "add", "default", "via", "192.168.1.1"]);
        let data = self.tmp.path().join(name);
        let mnt = self.tmp.path().join(format!("{name}-mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        Device { ns, ip, data, mnt, ca: self.ca.clone(), mounted: false }
    }

    /// `a` founds a group, `b` joins it, both mount.
    fn group(&self, a: &mut Device, b: &mut Device) {
        self.group_with_config(a, b, None);
    }

    /// [`World::group`], with `config` in `a`'s data dir before it mounts.
    fn group_with_config(&self, a: &mut Device, b: &mut Device, config: Option<&str>) {
        a.ok(&["init", "--name", "a", "--server", &self.url]);
        if let Some(config) = config {
            std::fs::write(a.data.join("config.toml"), config).unwrap();
        }
        let mut inviter =
            a.command(&["invite", "--yes"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut code = String::new();
        std::io::BufReader::new(inviter.stdout.take().unwrap()).read_line(&mut code).unwrap();
        b.ok(&["join", code.trim(), "--name", "b", "--server", &self.url]);
        let out = inviter.wait_with_output().unwrap();
        assert!(out.status.success(), "psync invite: {}", String::from_utf8_lossy(&out.stderr));
        a.mount();
        b.mount();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let turn = std::fs::read_to_string(self.tmp.path().join("coturn/turn.log")).unwrap_or_default();
            let tail: Vec<&str> = turn.lines().rev().take(60).collect();
            eprintln!("--- coturn log (last lines):\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        // `ip netns del` leaves processes running: stop them first.
        for ns in &self.namespaces {
            let out = run("ip", &["netns", "pids", ns]);
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
        }
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// One device: a data dir and a mount, its daemon in namespace `ns`.
struct Device {
    ns: String,
    ip: String,
    data: PathBuf,
    mnt: PathBuf,
    ca: PathBuf,
    mounted: bool,
}

impl Device {
    /// `psync --data-dir DATA ARGS` in this device's namespace, with the
    /// default ICE settings (nothing pinned) and trusting the test server.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = in_ns(&self.ns, env!("CARGO_BIN_EXE_psync"));
        command
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("PSYNC_ICE_BIND")
            .env("PSYNC_SIGNAL_CA", &self.ca)
            .env("RUST_LOG", "info,psync=debug");
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(out.status.success(), "psync {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn mount(&mut self) {
        self.ok(&["mount", self.mnt.to_str().unwrap()]);
        self.mounted = true;
    }

    fn status(&self) -> serde_json::Value {
        let out = self.command(&["status", "--json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Waits until the one peer is connected over a path of `kind`; returns
    /// the path as status reports it.
    fn wait_for_path(&self, kind: &str) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        eventually(
            PATIENCE,
            lazy(|| format!("a {kind} link on {} (status: {})", self.ns, self.status()["peers"])),
            || {
                last = self.status()["peers"][0].clone();
                last["connected"] == true && last["path"]["kind"] == kind
            },
        );
        last["path"].clone()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // PSync's own lines (the libraries' are many): what it decided.
            let log = std::fs::read_to_string(self.data.join("psync.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| l.contains(" psync")).rev().take(60).collect();
            eprintln!("--- {} ({}) psync.log, PSync's last lines:", self.data.display(), self.ns);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if self.mounted {
            let out = self.command(&["unmount", self.mnt.to_str().unwrap()]).output();
            if !out.is_ok_and(|o| o.status.success()) {
                let _ = self.command(&["unmount", "--lazy", self.mnt.to_str().unwrap()]).output();
            }
        }
    }
}

fn wait_for_file(device: &Device, rel: &str, want: &[u8]) {
    wait_for_file_within(PATIENCE, device, rel, want);
}

fn wait_for_file_within(patience: Duration, device: &Device, rel: &str, want: &[u8]) {
    eventually(patience, format!("{rel} to arrive intact on {}", device.ns), || {
        std::fs::read(device.path(rel)).ok().as_deref() == Some(want)
    });
}

/// A file each way, checked byte for byte on the other side.
fn both_ways(a: &Device, b: &Device, tag: &str) {
    let (from_a, from_b) = (noise(300_000, 1), format!("# {tag} from b\n").into_bytes());
    std::fs::write(a.path(&format!("{tag}-a.bin")), &from_a).unwrap();
    std::fs::write(b.path(&format!("{tag}-b.md")), &from_b).unwrap();
    wait_for_file(b, &format!("{tag}-a.bin"), &from_a);
    wait_for_file(a, &format!("{tag}-b.md"), &from_b);
}

fn checked_world() -> World {
    assert!(Path::new("/dev/fuse").exists(), "these tests need /dev/fuse");
    World::new()
}

#[test]
fn two_devices_on_one_lan_connect_directly_over_the_lan() {
    let mut world = checked_world();
    let home = world.home(Nat::Cone);
    let (mut a, mut b) = (world.device(home, "a"), world.device(home, "b"));
    world.group(&mut a, &mut b);
    let path = a.wait_for_path("lan");
    assert!(path["local"].as_str().unwrap().starts_with(&a.ip), "{path}");
    assert!(path["remote"].as_str().unwrap().starts_with(&b.ip), "{path}");
    b.wait_for_path("lan");
    both_ways(&a, &b, "lan");
}

#[test]
fn two_homes_behind_cone_nats_connect_directly_through_nat() {
    let mut world = checked_world();
    let (h1, h2) = (world.home(Nat::Cone), world.home(Nat::Cone));
    let (mut a, mut b) = (world.device(h1, "a"), world.device(h2, "b"));
    world.group(&mut a, &mut b);
    let path = a.wait_for_path("direct");
    // The peer is seen at its router's public address, not its LAN one.
    assert!(path["remote"].as_str().unwrap().starts_with("203.0.113."), "{path}");
    assert!(path["relay"].is_null(), "{path}");
    b.wait_for_path("direct");
    both_ways(&a, &b, "nat");
}

/// The symmetric NAT maps every destination to a new port, so neither
/// side's server-reflexive address works for the other: only TURN does.
#[test]
fn a_home_behind_a_symmetric_nat_connects_through_turn() {
    let mut world = checked_world();
    let (h1, h2) = (world.home(Nat::Symmetric), world.home(Nat::Cone));
    let (mut a, mut b) = (world.device(h1, "a"), world.device(h2, "b"));
    world.group(&mut a, &mut b);
    let path = a.wait_for_path("relayed");
    b.wait_for_path("relayed");
    let shown = a.ok(&["status"]);
    assert!(shown.contains("relayed via"), "status names the relay: {shown}");
    assert!(path.to_string().contains(SERVER_IP), "the relay is the test's coturn: {path}");
    both_ways(&a, &b, "turn");
}

/// A user who hides their address: both devices on one LAN, yet the link
/// goes through the relay.
#[test]
fn relay_only_policy_relays_even_on_one_lan() {
    let mut world = checked_world();
    let home = world.home(Nat::Cone);
    let (mut a, mut b) = (world.device(home, "a"), world.device(home, "b"));
    world.group_with_config(&mut a, &mut b, Some("[ice]\nrelay_only = true\n"));
    let path = a.wait_for_path("relayed");
    assert!(!path.to_string().contains(&a.ip), "a relay-only device never shows its address: {path}");
    b.wait_for_path("relayed");
    both_ways(&a, &b, "relay-only");
}

/// About 1 % loss between the homes (each router's iptables drops 0.5 % of
/// what it forwards) and 25 ms added at each router's way out (a
/// [`DelayLine`]: `netem delay 25ms` on both WANs, as this kernel has no
/// `tc netem`), 50 ms a round trip: a 16 MiB file and a 500-note vault
/// arrive intact; then the link goes down for 20 s (a change on each side
/// meanwhile) and comes back: both converge.
#[test]
fn a_slow_lossy_link_and_a_partition_between_homes_still_converge() {
    let mut world = checked_world();
    let (h1, h2) = (world.home(Nat::Cone), world.home(Nat::Cone));
    let (mut a, mut b) = (world.device(h1, "a"), world.device(h2, "b"));
    let mut delays = Vec::new();
    for home in [h1, h2] {
        let router = world.router(home);
        let drop_some =
            ["-I", "FORWARD", "-m", "statistic", "--mode", "random", "--probability", "0.005", "-j", "DROP"];
        must_in(&router, "iptables", &drop_some);
        delays.push(DelayLine::start(&router, "wan", Duration::from_millis(25)));
    }
    world.group(&mut a, &mut b);
    a.wait_for_path("direct");
    // The delay is in force: no round trip between the homes beats 50 ms.
    eventually(PATIENCE, lazy(|| format!("a measured round trip (status: {})", a.status()["peers"])), || {
        a.status()["peers"][0]["rtt_ms"].as_f64().is_some()
    });
    let rtt = a.status()["peers"][0]["rtt_ms"].as_f64().unwrap();
    assert!(rtt >= 48.0, "a round trip between the homes takes 50 ms, status says {rtt} ms");

    let big = noise(16 << 20, 7);
    std::fs::write(a.path("paper.pdf"), &big).unwrap();
    std::fs::create_dir(a.path("vault")).unwrap();
    let notes: Vec<(String, Vec<u8>)> = (0..500)
        .map(|i| (format!("vault/note-{i:03}.md"), format!("# Note {i}\n\n{}\n", "words ".repeat(i % 40)).into_bytes()))
        .collect();
    for (name, text) in &notes {
        std::fs::write(a.path(name), text).unwrap();
    }
    // Loss-based congestion control at 50 ms and 1 % loss moves a few
    // hundred KiB/s (TCP would too): a deadline for a slow, loaded machine.
    wait_for_file_within(BIG_FILE_PATIENCE, &b, "paper.pdf", &big);
    for (name, text) in &notes {
        wait_for_file(&b, name, text);
    }

    // The partition: both sides change something while apart.
    let router = world.router(h1);
    must("ip", &["-n", &router, "link", "set", "wan", "down"]);
    let apart = Instant::now();
    std::fs::write(a.path("while-apart-a.md"), b"written on a during the partition").unwrap();
    std::fs::write(b.path("while-apart-b.md"), b"written on b during the partition").unwrap();
    // The outage itself lasts 20 s (that is the scenario, not a wait for a condition).
    std::thread::sleep(Duration::from_secs(20).saturating_sub(apart.elapsed()));
    must("ip", &["-n", &router, "link", "set", "wan", "up"]);
    wait_for_file(&b, "while-apart-a.md", b"written on a during the partition");
    wait_for_file(&a, "while-apart-b.md", b"written on b during the partition");
    a.wait_for_path("direct");
}

/// The device's LAN address changes while it is mounted (a new DHCP lease,
/// another network): it reconnects without a remount, from its new address.
#[test]
fn a_device_whose_address_changes_reconnects_without_remount() {
    let mut world = checked_world();
    let home = world.home(Nat::Cone);
    let (mut a, mut b) = (world.device(home, "a"), world.device(home, "b"));
    world.group(&mut a, &mut b);
    b.wait_for_path("lan");
    both_ways(&a, &b, "before");

    let new_ip = "192.168.1.77";
    must("ip", &["-n", &b.ns, "addr", "del", &format!("{}/24", b.ip), "dev", "eth0"]);
    must("ip", &["-n", &b.ns, "addr", "add", &format!("{new_ip}/24"), "dev", "eth0"]);
    must("ip", &["-n", &b.ns, "route", "replace", "default", "via", "192.168.1.1"]);
    b.ip = new_ip.to_string();
    eventually(PATIENCE, lazy(|| format!("b's link from its new address (status: {})", b.status()["peers"])), || {
        let peer = b.status()["peers"][0].clone();
        peer["connected"] == true && peer["path"]["local"].as_str().is_some_and(|l| l.starts_with(new_ip))
    });
    both_ways(&a, &b, "after");
}
