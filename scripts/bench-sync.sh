#!/usr/bin/env bash
# Sync benchmarks (results in docs/benchmarks.md): PSync and, when the
# Debian package is installable, Syncthing, on one machine over loopback,
# devices as separate processes with real mounts. Figures are printed, never
# asserted. As root it runs inside a new network namespace that has only a
# loopback interface, so no packet can leave the machine.
#
#   ./scripts/bench-sync.sh                   everything (about 10 minutes; FUSE table included)
#   ./scripts/bench-sync.sh --no-syncthing    PSync only
#   ./scripts/bench-sync.sh --trials 40 --big-mib 1024 --rss-files 0 --many-files 0 --lossy-mib 0 --json out.json
#   FUSE=0 ./scripts/bench-sync.sh            without the FUSE table (5.: scripts/bench-fs.sh)
#   PSYNC_BIN=/path/to/psync ./scripts/bench-sync.sh   another build (before/after comparisons)
set -euo pipefail
# Every device runs on this machine: WebRTC binds loopback only.
export PSYNC_ICE_BIND=loopback
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v syncthing >/dev/null 2>&1 && [[ " $* " != *" --no-syncthing "* ]]; then
    echo "== installing syncthing for the comparison"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq syncthing >/dev/null ||
        echo "(syncthing is not installable here: PSync figures only)"
fi
# PSYNC_BIN: benchmark that binary (e.g. an older build, for before/after).
echo "== building psync and the delay line (workload 8)"
cargo build --locked --workspace --bins
delay_line="$CARGO_TARGET_DIR/debug/psync-delay-line"
if [ -n "${PSYNC_BIN:-}" ]; then
    psync="$PSYNC_BIN"
    echo "== benchmarking $psync"
else
    psync="$CARGO_TARGET_DIR/debug/psync"
fi
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(date -u +%F)"
if [ "$(id -u)" = 0 ]; then
    unshare --net bash -c 'ip link set lo up && exec python3 scripts/bench_sync.py --psync "$@"' bench "$psync" \
        --delay-line "$delay_line" "$@"
else
    echo "(not root: running without a private network namespace; both systems are set to loopback only)"
    python3 scripts/bench_sync.py --psync "$psync" "$@"
fi
if [ "${FUSE:-1}" = 1 ]; then
    echo "== 5. the FUSE table"
    ./scripts/bench-fs.sh
fi
