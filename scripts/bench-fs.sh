#!/usr/bin/env bash
# FUSE benchmark: the same workloads on a plain directory, a bindfs mount
# (the FUSE baseline) and a PSync mount, printed side by side. Figures are
# reported, never asserted.
#
#   ./scripts/bench-fs.sh            # 1 GiB sequential, 20 s random I/O
#   SIZE=256M RUNTIME=5 ./scripts/bench-fs.sh   # quicker
#
# Needs root (drops the page cache between write and read). Installs fio and
# bindfs from Debian's packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-20}
SMALL_FILES=${SMALL_FILES:-10000}

for p in fio bindfs; do
    command -v "$p" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
# PSYNC_BIN: benchmark that binary (e.g. an older build, for before/after).
if [ -n "${PSYNC_BIN:-}" ]; then
    psync="$PSYNC_BIN"
else
    cargo build --locked --bin psync >/dev/null 2>&1 || cargo build --locked --bin psync
    psync="$CARGO_TARGET_DIR/debug/psync"
fi

work=$(mktemp -d /var/tmp/psync-bench.XXXXXX)
cleanup() {
    mountpoint -q "$work/psync" && "$psync" unmount --lazy "$work/psync" >/dev/null 2>&1 || true
    mountpoint -q "$work/bindfs" && fusermount3 -u -z "$work/bindfs" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/plain" "$work/bind-src" "$work/bindfs" "$work/psync"
bindfs --no-allow-other "$work/bind-src" "$work/bindfs"
PSYNC_DATA_DIR="$work/psync-data" "$psync" mount "$work/psync" >/dev/null

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

fio_value() { # job-args... ; prints "bw_MiB/s iops"
    fio --output-format=json --name=b "$@" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
op = "write" if j["write"]["io_bytes"] > 0 else "read"
print("%.0f %.0f" % (j[op]["bw_bytes"] / 1048576, j[op]["iops"]))'
}

declare -A R
for target in plain bindfs psync; do
    dir="$work/$target"
    read -r bw _ < <(fio_value --directory="$dir" --filename=seq --rw=write --bs=1M --size="$SIZE" --end_fsync=1 --ioengine=psync)
    R[$target,seqw]="$bw MiB/s"
    drop_caches
    read -r bw _ < <(fio_value --directory="$dir" --filename=seq --rw=read --bs=1M --size="$SIZE" --ioengine=psync)
    R[$target,seqr]="$bw MiB/s"
    rm -f "$dir/seq"
    fio --name=prep --directory="$dir" --filename=rand --rw=write --bs=1M --size=256M --ioengine=psync >/dev/null
    drop_caches
    read -r _ iops < <(fio_value --directory="$dir" --filename=rand --rw=randread --bs=4k --size=256M --runtime="$RUNTIME" --time_based --ioengine=psync)
    R[$target,rr]="$iops IOPS"
    read -r _ iops < <(fio_value --directory="$dir" --filename=rand --rw=randwrite --bs=4k --size=256M --runtime="$RUNTIME" --time_based --ioengine=psync)
    R[$target,rw]="$iops IOPS"
    rm -f "$dir/rand"
    secs=$(python3 - "$dir" "$SMALL_FILES" <<'EOF'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(os.path.join(d, "small"))
os.sync()  # earlier phases' dirty data must not count here
t = time.time()
for i in range(n):
    with open(os.path.join(d, "small", "f%05d.md" % i), "w") as f:
        f.write("# note %d\n" % i * 20)
os.sync()
print("%.2f" % (time.time() - t))
EOF
)
    R[$target,small]="$(python3 -c "print('%.0f files/s' % ($SMALL_FILES / $secs))")"
done

printf '\nPSync FUSE benchmark, %s, %s, %s cores; size %s, random I/O %ss\n\n' "$(date -u +%F)" "$(uname -r)" "$(nproc)" "$SIZE" "$RUNTIME"
printf '%-34s %16s %16s %16s\n' "workload" "plain dir" "bindfs (FUSE)" "psync (FUSE)"
for row in "seqw:sequential write $SIZE (1 MiB, fsync)" "seqr:sequential read $SIZE (cold cache)" "rr:4 KiB random read" "rw:4 KiB random write" "small:create $SMALL_FILES small files"; do
    key=${row%%:*}
    printf '%-34s %16s %16s %16s\n' "${row#*:}" "${R[plain,$key]}" "${R[bindfs,$key]}" "${R[psync,$key]}"
done
