#!/usr/bin/env python3
"""Sync benchmarks: PSync against Syncthing on one machine, over loopback.

Devices are separate processes with real mounts (PSync) or real folders
(Syncthing). Figures are printed, never asserted. Run through
scripts/bench-sync.sh, which builds psync and runs this inside a network
namespace holding only a loopback interface, so neither system can send a
packet anywhere else.

Workloads (each printed with PSync and, if installed, Syncthing side by side):
  1. propagation latency of a small write-and-close, p50/p95/max
  2. initial sync of a 500-file Markdown vault (2.5 MiB, 20 folders) to a new device
  3. one 256 MiB file: seconds and MB/s
  4. a 1-byte change in the middle of a 64 MiB file: bytes on the wire, time
  6. daemon memory (RSS) with 100,000 files in the store (PSync only)
  7. initial sync of 20,000 small files (100 folders) to a new device: seconds and files/s
  8. a 64 MiB file between two network namespaces over a 50 ms round trip
     with 1 % loss each way (scripts/bench_link.py; as root only)
(5, the FUSE table, is scripts/bench-fs.sh; bench-sync.sh runs it too.)
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

import bench_link

# Every device runs on this machine: WebRTC binds loopback only.
os.environ["PSYNC_ICE_BIND"] = "loopback"

MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=600, poll=0.002):
    """Polls `check` until it returns a true value; returns (value, seconds)."""
    start = time.monotonic()
    while True:
        got = check()
        if got:
            return got, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def read_or_none(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def size_or_none(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def write_and_close(path, data):
    with open(path, "wb") as f:
        f.write(data)


def tree_digest(root):
    """{relative path: sha256} of every file under root (hidden ones skipped)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or name.startswith("~syncthing"):
                continue
            path = os.path.join(dirpath, name)
            data = read_or_none(path)
            if data is not None:
                out[os.path.relpath(path, root)] = hashlib.sha256(data).hexdigest()
    return out


def tree_sizes(root):
    """{relative path: size}: a cheap check to poll before hashing."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not (name.startswith(".") or name.startswith("~syncthing")):
                try:
                    out[os.path.relpath(os.path.join(dirpath, name), root)] = os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
    return out


def make_vault(root, files=500, folders=20, seed=7):
    """About 2.5 MiB of Markdown-like text in `folders` folders."""
    rng = random.Random(seed)
    words = "note idea link sync vault daily review paper draft todo meeting plan read write".split()
    for i in range(files):
        folder = os.path.join(root, f"folder-{i % folders:02d}")
        os.makedirs(folder, exist_ok=True)
        lines = [f"# Note {i}", ""]
        while sum(len(l) + 1 for l in lines) < 5200:
            lines.append(" ".join(rng.choice(words) for _ in range(12)))
        write_and_close(os.path.join(folder, f"note-{i:03d}.md"), ("\n".join(lines) + "\n").encode())


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# ---- PSync -----------------------------------------------------------------


class PSync:
    name = "PSync"

    def __init__(self, binary, root, debounce_ms=None, link=None):
        self.bin = binary
        self.root = root
        self.link = link
        self.flags = [] if debounce_ms is None else ["--debounce-ms", str(debounce_ms)]
        self.server = None
        self.mounted = []
        os.makedirs(root, exist_ok=True)

    def run(self, data, *args, capture=True):
        cmd = [self.bin, "--data-dir", data, *args]
        env = None
        if self.link:
            # In the device's namespace, with ICE on its own interfaces.
            cmd = self.link.prefix(os.path.basename(data).removeprefix("data-")) + cmd
            env = {k: v for k, v in os.environ.items() if k != "PSYNC_ICE_BIND"}
        done = subprocess.run(cmd, capture_output=capture, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def data(self, device):
        return os.path.join(self.root, "data-" + device)

    def folder(self, device):
        return os.path.join(self.root, device)

    def start_group(self, devices):
        port = free_port()
        listen = [self.bin, "--data-dir", os.path.join(self.root, "server"), "signal"]
        if self.link:
            # Off loopback the server speaks TLS only: a certificate for its address.
            host = self.link.hub_addr()
            url = f"wss://{host}:{port}"
            listen += ["--listen", f"{host}:{port}"] + bench_link.server_certificate(self.root, host)
            os.environ["PSYNC_SIGNAL_CA"] = os.path.join(self.root, "cert.pem")
        else:
            url = f"ws://127.0.0.1:{port}"
            listen += ["--listen", f"127.0.0.1:{port}"]
        self.server = subprocess.Popen(listen, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.server.stdout.readline()
        first, *others = devices
        self.run(self.data(first), "init", "--name", first, "--server", url)
        for device in others:
            invite = subprocess.Popen([self.bin, "--data-dir", self.data(first), "invite", "--yes"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            code = invite.stdout.readline().strip()
            self.run(self.data(device), "join", code, "--name", device, "--server", url)
            invite.wait()
        for device in devices:
            os.makedirs(self.folder(device), exist_ok=True)

    def mount(self, device):
        self.run(self.data(device), "mount", self.folder(device), *self.flags)
        self.mounted.append(device)

    def unmount(self, device):
        self.run(self.data(device), "unmount", self.folder(device))
        self.mounted.remove(device)

    def status(self, device):
        return json.loads(self.run(self.data(device), "status", "--json"))

    def wire_bytes(self, device):
        """Bytes sent plus received by `device` over its current links."""
        peers = self.status(device)["peers"]
        return sum((p.get("bytes_sent") or 0) + (p.get("bytes_received") or 0) for p in peers)

    def in_sync(self, device):
        peers = self.status(device)["peers"]
        return all(p["in_sync"] for p in peers)

    def wait_connected(self, device):
        wait_until("the peers to connect", lambda: all(p["connected"] for p in self.status(device)["peers"]),
                   timeout=120, poll=0.1)

    def daemon_pid(self, device):
        with open(os.path.join(self.data(device), "daemon.json")) as f:
            return json.load(f)["pid"]

    def close(self):
        for device in list(self.mounted):
            try:
                self.unmount(device)
            except Exception as e:  # keep cleaning up
                print(f"  (unmount {device}: {e})", file=sys.stderr)
        if self.server:
            self.server.kill()
            self.server.wait()


# ---- Syncthing ---------------------------------------------------------------


class Syncthing:
    name = "Syncthing"

    def __init__(self, root, watcher_delay_s=None, link=None):
        self.root = root
        self.link = link
        self.delay = watcher_delay_s
        self.procs = {}
        self.ids = {}
        self.api = {}
        self.ports = {}
        os.makedirs(root, exist_ok=True)

    def home(self, device):
        return os.path.join(self.root, "home-" + device)

    def host(self, device):
        return self.link.addr(device) if self.link else "127.0.0.1"

    def folder(self, device):
        return os.path.join(self.root, device)

    def start_group(self, devices):
        for device in devices:
            subprocess.run(["syncthing", "generate", "--home", self.home(device), "--no-default-folder",
                            "--skip-port-probing"], check=True, capture_output=True)
            out = subprocess.run(["syncthing", "serve", "--home", self.home(device), "--device-id"],
                                 check=True, capture_output=True, text=True).stdout
            self.ids[device] = out.strip()
            self.ports[device] = (free_port(), free_port())
            self.api[device] = "psync-bench-" + device
            os.makedirs(os.path.join(self.folder(device), ".stfolder"), exist_ok=True)
        for device in devices:
            self.configure(device, devices)

    def configure(self, device, devices):
        path = os.path.join(self.home(device), "config.xml")
        tree = ET.parse(path)
        cfg = tree.getroot()
        listen, gui = self.ports[device]
        for old in cfg.findall("device") + cfg.findall("folder"):
            cfg.remove(old)
        folder = ET.SubElement(cfg, "folder", id="bench", label="bench", path=self.folder(device), type="sendreceive",
                               rescanIntervalS="3600", fsWatcherEnabled="true", ignorePerms="false", autoNormalize="true")
        # Always explicit: an absent attribute reads as 0, not the default 10,
        # and the watcher then never fires (seen with 1.19).
        folder.set("fsWatcherDelayS", str(self.delay if self.delay is not None else 10))
        for other in devices:
            ET.SubElement(folder, "device", id=self.ids[other])
            dev = ET.SubElement(cfg, "device", id=self.ids[other], name=other, compression="metadata",
                                introducer="false")
            address = "dynamic" if other == device else f"tcp://{self.host(other)}:{self.ports[other][0]}"
            ET.SubElement(dev, "address").text = address
        gui_el = cfg.find("gui")
        gui_el.set("enabled", "true")
        gui_el.set("tls", "false")
        gui_el.find("address").text = f"{self.host(device)}:{gui}"
        api = gui_el.find("apikey")
        if api is None:
            api = ET.SubElement(gui_el, "apikey")
        api.text = self.api[device]
        opts = cfg.find("options")
        for name in ["listenAddress"]:
            for el in opts.findall(name):
                opts.remove(el)
        ET.SubElement(opts, "listenAddress").text = f"tcp://{self.host(device)}:{listen}"
        # Loopback only: no discovery, relays, NAT traversal, STUN, upgrades or reports.
        settings = {
            "globalAnnounceEnabled": "false", "localAnnounceEnabled": "false", "relaysEnabled": "false",
            "natEnabled": "false", "urAccepted": "-1", "urSeen": "3", "autoUpgradeIntervalH": "0",
            "crashReportingEnabled": "false", "startBrowser": "false", "stunKeepaliveStartS": "0",
            "stunKeepaliveMinS": "0", "announceLANAddresses": "false",
        }
        for key, value in settings.items():
            el = opts.find(key)
            if el is None:
                el = ET.SubElement(opts, key)
            el.text = value
        for el in opts.findall("globalAnnounceServer") + opts.findall("stunServer"):
            opts.remove(el)
        tree.write(path)

    def start(self, device):
        env = dict(os.environ, STNOUPGRADE="1", STNODEFAULTFOLDER="1")
        log = open(os.path.join(self.root, device + ".log"), "w")
        prefix = self.link.prefix(device) if self.link else []
        self.procs[device] = subprocess.Popen(
            prefix + ["syncthing", "serve", "--home", self.home(device), "--no-browser", "--no-restart", "--no-upgrade"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until("Syncthing's REST API", lambda: self.get(device, "/rest/system/ping", quiet=True), timeout=60,
                   poll=0.1)

    # Same names as PSync's, so the workloads run against either.
    mount = start

    def get(self, device, path, quiet=False):
        req = urllib.request.Request(f"http://{self.host(device)}:{self.ports[device][1]}{path}",
                                     headers={"X-API-Key": self.api[device]})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read() or b"null")
        except Exception:
            if quiet:
                return None
            raise

    def post(self, device, path):
        req = urllib.request.Request(f"http://{self.host(device)}:{self.ports[device][1]}{path}", data=b"", method="POST",
                                     headers={"X-API-Key": self.api[device]})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def wire_bytes(self, device):
        total = self.get(device, "/rest/system/connections")["total"]
        return total["inBytesTotal"] + total["outBytesTotal"]

    def in_sync(self, device):
        for other in self.ids:
            if other == device:
                continue
            c = self.get(device, f"/rest/db/completion?folder=bench&device={self.ids[other]}")
            if c["completion"] < 100 or c.get("needItems", 0) > 0:
                return False
        status = self.get(device, "/rest/db/status?folder=bench")
        return status["state"] == "idle" and status["needFiles"] == 0

    def wait_connected(self, device):
        def connected():
            conns = self.get(device, "/rest/system/connections")["connections"]
            return all(conns.get(self.ids[o], {}).get("connected") for o in self.ids if o != device)
        wait_until("Syncthing devices to connect", connected, timeout=120, poll=0.1)

    def daemon_pid(self, device):
        return self.procs[device].pid

    def close(self):
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---- workloads -----------------------------------------------------------------


def vault_to_new_device(system, tmp):
    """A holds the vault; B starts for the first time: until B has all of it."""
    system.start_group(["a", "b"])
    system.mount("a")
    src = os.path.join(tmp, "vault-src")
    make_vault(src)
    shutil.copytree(src, system.folder("a"), dirs_exist_ok=True)
    want = tree_digest(src)
    want_sizes = tree_sizes(src)
    if isinstance(system, Syncthing):
        system.post("a", "/rest/db/scan?folder=bench")  # setup, not measured
        wait_until("A to scan the vault", lambda: system.get("a", "/rest/db/status?folder=bench")["localFiles"]
                   >= len(want) and system.get("a", "/rest/db/status?folder=bench")["state"] == "idle", poll=0.1)
    else:
        time.sleep(1)
    start = time.monotonic()
    system.mount("b")
    complete = lambda: tree_sizes(system.folder("b")) == want_sizes and tree_digest(system.folder("b")) == want
    wait_until("the vault on B", complete, poll=0.01)
    return {"vault_s": time.monotonic() - start, "vault_files": len(want),
            "vault_mib": sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(src) for f in fs) / MIB}


def latency(system, trials):
    system.wait_connected("a")
    path_a, path_b = os.path.join(system.folder("a"), "latency.md"), os.path.join(system.folder("b"), "latency.md")
    samples = []
    for i in range(trials):
        data = f"# trial {i}\n{random.random()}\n".encode()
        start = time.monotonic()
        write_and_close(path_a, data)
        _, _ = wait_until(f"trial {i}", lambda: read_or_none(path_b) == data, timeout=120, poll=0.001)
        samples.append((time.monotonic() - start) * 1000)
        time.sleep(0.3)
    return {"latency_ms": samples}


def wait_idle(system, device="a"):
    wait_until("sync to settle", lambda: system.in_sync(device), timeout=600, poll=0.2)


def big_file(system, tmp, size):
    data = os.urandom(size)
    path_a, path_b = os.path.join(system.folder("a"), "big.bin"), os.path.join(system.folder("b"), "big.bin")
    write_and_close(path_a, data)
    start = time.monotonic()
    wait_until("the big file on B", lambda: size_or_none(path_b) == size, poll=0.01)
    seconds = time.monotonic() - start
    if read_or_none(path_b) != data:
        # Syncthing renames its temp file into place whole; PSync installs atomically.
        wait_until("the big file's content", lambda: read_or_none(path_b) == data, timeout=120, poll=0.1)
        seconds = time.monotonic() - start
    os.remove(path_a)
    wait_until("the big file's removal", lambda: size_or_none(path_b) is None, poll=0.05)
    return {"big_s": seconds, "big_mb_s": size / 1e6 / seconds, "big_mib": size / MIB}


def one_byte_edit(system, size):
    data = bytearray(os.urandom(size))
    path_a, path_b = os.path.join(system.folder("a"), "edit.bin"), os.path.join(system.folder("b"), "edit.bin")
    write_and_close(path_a, data)
    wait_until("the 64 MiB file on B", lambda: size_or_none(path_b) == size, poll=0.05)
    wait_idle(system)
    time.sleep(2)
    before = system.wire_bytes("a")
    middle = size // 2
    new = bytes([data[middle] ^ 0xFF])
    start = time.monotonic()
    with open(path_a, "r+b") as f:
        f.seek(middle)
        f.write(new)

    def changed():
        # Syncthing renames a temp file into place: a poll may miss the file.
        try:
            with open(path_b, "rb") as f:
                f.seek(middle)
                return f.read(1) == new
        except OSError:
            return False
    wait_until("the 1-byte change on B", changed, poll=0.002)
    seconds = time.monotonic() - start
    wait_idle(system)
    time.sleep(3)  # let acks and heartbeats of this change finish
    return {"edit_s": seconds, "edit_wire_kib": (system.wire_bytes("a") - before) / 1024}


def many_files_to_new_device(system, tmp, files):
    """Like the vault, with `files` small files: does the initial sync stay
    linear in files? Timed until every file is on B at its size; the
    content is compared after."""
    system.start_group(["a", "b"])
    try:
        system.mount("a")
        src = os.path.join(tmp, f"many-src-{files}")
        if not os.path.isdir(src):
            for i in range(files):
                d = os.path.join(src, f"d{i % 100:02d}")
                if i < 100:
                    os.makedirs(d, exist_ok=True)
                write_and_close(os.path.join(d, f"n{i:05d}.md"), f"# note {i}\n{'x' * (i % 200)}\n".encode())
        shutil.copytree(src, system.folder("a"), dirs_exist_ok=True)
        want_sizes = tree_sizes(src)
        if isinstance(system, Syncthing):
            system.post("a", "/rest/db/scan?folder=bench")  # setup, not measured
            wait_until("A to scan the files", lambda: system.get("a", "/rest/db/status?folder=bench")["localFiles"]
                       >= files and system.get("a", "/rest/db/status?folder=bench")["state"] == "idle", poll=0.2)
        else:
            time.sleep(1)
        start = time.monotonic()
        system.mount("b")
        wait_until("the files on B", lambda: tree_sizes(system.folder("b")) == want_sizes, poll=0.1)
        seconds = time.monotonic() - start
        if tree_digest(system.folder("b")) != tree_digest(src):
            raise RuntimeError("the files arrived with other content")
        return {"many_files": files, "many_s": seconds, "many_files_per_s": files / seconds}
    finally:
        system.close()


def lossy_transfer(system, size_mib):
    """Workload 8: A writes a file of `size_mib` over `system`'s link (scripts/bench_link.py); until B has it whole."""
    system.start_group(["a", "b"])
    system.mount("a")
    system.mount("b")
    system.wait_connected("a")
    data = os.urandom(size_mib << 20)
    path_a, path_b = os.path.join(system.folder("a"), "lossy.bin"), os.path.join(system.folder("b"), "lossy.bin")
    start = time.monotonic()
    write_and_close(path_a, data)
    wait_until("the file over the lossy link", lambda: size_or_none(path_b) == len(data), timeout=3600, poll=0.05)
    wait_until("its content", lambda: read_or_none(path_b) == data, timeout=600, poll=0.2)
    seconds = time.monotonic() - start
    return {"lossy_s": seconds, "lossy_mb_s": len(data) / 1e6 / seconds, "lossy_mib": size_mib}


def idle_wire_rate(system, seconds=10):
    """Heartbeats and keepalives: bytes per second with nothing to sync."""
    before = system.wire_bytes("a")
    time.sleep(seconds)
    return (system.wire_bytes("a") - before) / seconds


def run_system(system, tmp, args):
    out = {}
    try:
        out.update(vault_to_new_device(system, tmp))
        wait_idle(system)
        out.update(latency(system, args.trials))
        wait_idle(system)
        out["idle_bytes_per_s"] = idle_wire_rate(system)
        out.update(one_byte_edit(system, 64 * MIB))
        out.update(big_file(system, tmp, args.big_mib * MIB))
    finally:
        system.close()
    return out


def rss_with_many_files(binary, tmp, files):
    """A device whose store holds `files` files, mounted and syncing (alone)."""
    ps = PSync(binary, os.path.join(tmp, "rss"))
    try:
        ps.start_group(["solo"])
        ps.mount("solo")
        ps.unmount("solo")  # the store now has the device's id
        src = os.path.join(tmp, "rss-src")
        for i in range(files):
            d = os.path.join(src, f"d{i // 1000:03d}")
            if i % 1000 == 0:
                os.makedirs(d, exist_ok=True)
            write_and_close(os.path.join(d, f"f{i:06d}.md"), f"file {i}\n".encode())
        start = time.monotonic()
        ps.run(ps.data("solo"), "store", "import", src)
        imported_s = time.monotonic() - start
        ps.mount("solo")
        time.sleep(3)
        pid = ps.daemon_pid("solo")
        idle = rss_kib(pid)
        start = time.monotonic()
        count = sum(len(fs) for _, _, fs in os.walk(ps.folder("solo")))
        walk_s = time.monotonic() - start
        walked = rss_kib(pid)
        return {"rss_files": count, "rss_import_s": imported_s, "rss_idle_mib": idle / 1024,
                "rss_after_walk_mib": walked / 1024, "rss_walk_s": walk_s}
    finally:
        ps.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _has(get, r):
    try:
        get(r)
        return True
    except KeyError:
        return False


def report(results):
    rows = []
    ps = results["psync"]
    others = [(k, v) for k, v in results.items() if k.startswith("syncthing")]

    def lat(r, p):
        return percentile(r["latency_ms"], p)
    metrics = [
        ("1. latency p50 (ms)", lambda r: lat(r, 50), "lower"),
        ("   latency p95 (ms)", lambda r: lat(r, 95), "lower"),
        ("   latency max (ms)", lambda r: max(r["latency_ms"]), "lower"),
        ("2. 500-file vault to a new device (s)", lambda r: r["vault_s"], "lower"),
        (f"3. {ps['big_mib']:.0f} MiB file (s)", lambda r: r["big_s"], "lower"),
        (f"   {ps['big_mib']:.0f} MiB file (MB/s)", lambda r: r["big_mb_s"], "higher"),
        ("4. 1-byte edit of 64 MiB: on the wire (KiB)", lambda r: r["edit_wire_kib"], "lower"),
        ("   1-byte edit of 64 MiB: until seen (ms)", lambda r: r["edit_s"] * 1000, "lower"),
        ("   idle traffic (bytes/s)", lambda r: r["idle_bytes_per_s"], "lower"),
    ]
    if "many_s" in ps:
        metrics += [
            (f"7. {ps['many_files']} files to a new device (s)", lambda r: r["many_s"], "lower"),
            ("   files/s", lambda r: r["many_files_per_s"], "higher"),
        ]
    if "lossy_s" in ps:
        link = f"{ps['lossy_mib']} MiB, {2 * bench_link.DELAY_MS} ms RTT, {bench_link.LOSS:.0%} loss each way"
        metrics += [
            (f"8. {link} (s)", lambda r: r["lossy_s"], "lower"),
            ("   MB/s", lambda r: r["lossy_mb_s"], "higher"),
        ]
    header = ["workload", "PSync"] + [name for name, _ in others] + (["ratio (best Syncthing / PSync)"] if others else [])
    num = lambda v: f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    for label, get, better in metrics:
        row = [label, num(get(ps))]
        # A workload some runs did not measure (8 runs one Syncthing setting).
        row += [num(get(r)) if _has(get, r) else "-" for _, r in others]
        values = [get(r) for _, r in others if _has(get, r)]
        if values:
            best = min(values) if better == "lower" else max(values)
            if best == 0 or get(ps) == 0:
                row.append("-")
            else:
                ratio = best / get(ps) if better == "lower" else get(ps) / best
                row.append(f"PSync {ratio:.2f}x {'better' if ratio >= 1 else 'worse'}" if ratio < 1 else f"PSync {ratio:.1f}x better")
        rows.append(row)
    if "rss" in results:
        r = results["rss"]
        rows.append([f"6. daemon RSS, {r['rss_files']} files, idle (MiB)", f"{r['rss_idle_mib']:.1f}"] + [""] * (len(header) - 2))
        rows.append(["   daemon RSS after walking them all (MiB)", f"{r['rss_after_walk_mib']:.1f}"] + [""] * (len(header) - 2))
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def run_lossy(args, tmp, results):
    """Workload 8, for PSync and (if installed) Syncthing."""
    if os.geteuid() != 0 or not args.delay_line:
        print("(workload 8 needs root and --delay-line: skipped)")
        return
    systems = [("psync", lambda link: PSync(args.psync, os.path.join(tmp, "psync-lossy"), link=link))]
    if not args.no_syncthing and shutil.which("syncthing"):
        key = next((k for k in results if k.startswith("syncthing (fsWatcherDelayS=1")), "syncthing")
        systems.append((key, lambda link: Syncthing(os.path.join(tmp, "st-lossy"), 1, link=link)))
    for key, make in systems:
        print(f"== {key}: {args.lossy_mib} MiB over a slow, lossy link", flush=True)
        with bench_link.LossyLink(args.delay_line) as link:
            system = make(link)
            try:
                results.setdefault(key, {}).update(lossy_transfer(system, args.lossy_mib))
            finally:
                system.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--psync", required=True, help="the psync binary")
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--rss-files", type=int, default=100_000)
    parser.add_argument("--many-files", type=int, default=20_000, help="files for workload 7 (0: skip it)")
    parser.add_argument("--no-syncthing", action="store_true")
    parser.add_argument("--lossy-mib", type=int, default=64, help="file size for workload 8 (0: skip it)")
    parser.add_argument("--delay-line", help="the psync-delay-line binary (workload 8)")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()
    results = {}
    keep = False
    tmp = tempfile.mkdtemp(prefix="psync-bench-")
    try:
        print("== PSync (debounce 100 ms, the default)", flush=True)
        results["psync"] = run_system(PSync(args.psync, os.path.join(tmp, "psync")), tmp, args)
        if args.many_files:
            print(f"== PSync, {args.many_files} files to a new device", flush=True)
            results["psync"].update(many_files_to_new_device(
                PSync(args.psync, os.path.join(tmp, "psync-many")), tmp, args.many_files))
        if not args.no_syncthing and shutil.which("syncthing"):
            for delay in [None, 1]:
                key = f"syncthing (fsWatcherDelayS={delay if delay else 'default 10'})"
                print(f"== {key}", flush=True)
                try:
                    results[key] = run_system(Syncthing(os.path.join(tmp, f"st-{delay}"), delay), tmp, args)
                    if args.many_files:
                        print(f"== {key}, {args.many_files} files to a new device", flush=True)
                        results[key].update(many_files_to_new_device(
                            Syncthing(os.path.join(tmp, f"st-many-{delay}"), delay), tmp, args.many_files))
                except Exception as e:  # report PSync's figures all the same
                    print(f"(syncthing run failed: {e!r}; its logs are in {tmp})", flush=True)
                    keep = True
        elif not args.no_syncthing:
            print("(syncthing is not installed: PSync figures only)")
        if args.lossy_mib:
            run_lossy(args, tmp, results)
        if args.rss_files:
            print(f"== PSync daemon memory with {args.rss_files} files", flush=True)
            results["rss"] = rss_with_many_files(args.psync, tmp, args.rss_files)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        print()
        report(results)
    except BaseException:
        print(f"(failed: logs kept in {tmp})", file=sys.stderr)
        raise
    else:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
