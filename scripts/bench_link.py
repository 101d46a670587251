"""The network of workload 8 of scripts/bench_sync.py: a slow, lossy link.

Two network namespaces, psb-a and psb-b, each hang off a veth into the
namespace the benchmark runs in, which routes between them (and runs the
signalling server). Each device's namespace delays every packet it sends by
DELAY_MS and drops LOSS of them, each packet on its own (psync-delay-line:
an NFQUEUE delay line, as this kernel has no `tc netem`): 2 x DELAY_MS a
round trip, LOSS lost in each direction. (An iptables `statistic` rule
would drop whole GSO batches of up to 64 datagrams at once: bursts, not
1 % of packets.)
"""

import os
import subprocess

DELAY_MS = 25
LOSS = 0.01
NETS = {"a": "10.77.1", "b": "10.77.2"}


def sh(*cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class LossyLink:
    """The topology above; a context manager that removes it on exit."""

    def __init__(self, delay_line_bin):
        self.delay_line_bin = delay_line_bin
        self.lines = []

    @staticmethod
    def ns(device):
        return "psb-" + device

    @staticmethod
    def addr(device):
        return NETS[device] + ".2"

    @staticmethod
    def hub_addr():
        return NETS["a"] + ".1"

    def prefix(self, device):
        """Runs a command in `device`'s network namespace (mounts stay shared)."""
        return ["nsenter", f"--net=/run/netns/{self.ns(device)}"]

    def __enter__(self):
        self._remove()
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        for device, net in NETS.items():
            ns, hub_if = self.ns(device), f"psb-{device}-hub"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", hub_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"{net}.1/24", "dev", hub_if)
            sh("ip", "link", "set", hub_if, "up")
            sh("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"{net}.1")
            line = subprocess.Popen([self.delay_line_bin, ns, "eth0", str(DELAY_MS), str(round(LOSS * 1e6))],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.lines.append(line)
            if line.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the delay line in {ns} did not start")
        return self

    def __exit__(self, *exc):
        for line in self.lines:
            line.stdin.close()
            line.wait(timeout=30)
        self._remove()

    def _remove(self):
        for device in NETS:
            subprocess.run(["ip", "netns", "del", self.ns(device)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"psb-{device}-hub"], capture_output=True)


def server_certificate(root, ip):
    """A self-signed certificate for the signalling server at `ip`: its flags."""
    key, cert = os.path.join(root, "key.pem"), os.path.join(root, "cert.pem")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
       "-subj", "/CN=psync bench signal", "-addext", f"subjectAltName=IP:{ip}", "-addext",
       "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert)
    return ["--tls-cert", cert, "--tls-key", key]
