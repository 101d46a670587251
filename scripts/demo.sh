#!/usr/bin/env bash
# PSync in one command: installs what it needs, builds it, and starts on this
# machine a signalling server (loopback only) and two devices of one group,
# "desktop" and "laptop", mounted at two folders. It shows a note written in
# one folder arriving in the other, then leaves everything running.
#
#   ./scripts/demo.sh           start (or restart) the demo
#   ./scripts/demo.sh status    psync status of both devices
#   ./scripts/demo.sh stop      unmount both folders and stop the server
#
# PSYNC_DEMO_DIR picks the directory (default /tmp/psync-demo); PSYNC_BIN
# uses an already built psync and skips installing and building.
set -euo pipefail
cd "$(dirname "$0")/.."
demo="${PSYNC_DEMO_DIR:-/tmp/psync-demo}"
state="$demo/.psync"          # data dirs, logs, the server's pid
devices=(desktop laptop)

say() { printf '%s\n' "$*"; }
psync() { "$PSYNC_BIN" "$@"; }
# Both devices are on this machine: WebRTC binds loopback only.
export PSYNC_ICE_BIND=loopback

find_psync() {
    if [ -n "${PSYNC_BIN:-}" ]; then return; fi
    if [ -x "$state/psync-bin" ]; then PSYNC_BIN="$(readlink -f "$state/psync-bin")"; return; fi
    . scripts/env.sh
    PSYNC_BIN="$CARGO_TARGET_DIR/debug/psync"
}

is_mounted() { grep -qF " $1 fuse.psync " /proc/self/mounts; }

stop() {
    find_psync
    local failed=0
    for d in "${devices[@]}"; do
        if is_mounted "$demo/$d"; then
            if ! psync --data-dir "$state/$d" unmount "$demo/$d"; then
                say "files in $demo/$d are still open; detaching it lazily (it goes when they close)"
                psync --data-dir "$state/$d" unmount --lazy "$demo/$d" || failed=1
            fi
        fi
    done
    if [ -f "$state/server.pid" ]; then
        kill "$(cat "$state/server.pid")" 2>/dev/null || true
        rm -f "$state/server.pid"
    fi
    for d in "${devices[@]}"; do
        if is_mounted "$demo/$d"; then say "error: $demo/$d is still mounted"; failed=1; fi
    done
    if [ "$failed" = 0 ]; then
        say "demo stopped; nothing is mounted. The data stays in $demo (rm -rf $demo to delete it)."
    fi
    return "$failed"
}

status() {
    find_psync
    for d in "${devices[@]}"; do
        say "== $d"
        psync --data-dir "$state/$d" status
    done
}

start() {
    if [ -z "${PSYNC_BIN:-}" ]; then
        ./scripts/install-deps.sh
        . scripts/env.sh
        say "== building psync (the first build compiles RocksDB's C++: about 20 minutes on 2 cores)"
        cargo build --locked --bin psync
        PSYNC_BIN="$CARGO_TARGET_DIR/debug/psync"
    fi
    if [ -d "$state" ]; then
        say "== stopping the previous demo in $demo"
        stop >/dev/null
        rm -rf "$demo"
    fi
    mkdir -p "$state" "$demo/desktop" "$demo/laptop"
    ln -s "$PSYNC_BIN" "$state/psync-bin"

    say "== a signalling server on loopback"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url="ws://127.0.0.1:$port"
    setsid "$PSYNC_BIN" --data-dir "$state/server" signal --listen "127.0.0.1:$port" --relay "$state/relay" \
        > "$state/server.log" 2>&1 < /dev/null &
    echo $! > "$state/server.pid"
    for _ in $(seq 1 100); do
        grep -q "listening" "$state/server.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "listening" "$state/server.log" || { cat "$state/server.log"; say "error: the server did not start"; exit 1; }
    say "listening on $url"

    say "== two devices of one group: desktop founds it, laptop joins with a one-time code"
    psync --data-dir "$state/desktop" init --name desktop --server "$url"
    coproc invite { "$PSYNC_BIN" --data-dir "$state/desktop" invite --yes; }
    # Bash unsets invite_PID once the coprocess ends, which it may do before
    # the wait below: keep the pid now (it waits for the join, so it runs).
    invite_pid=$invite_PID
    read -r code <&"${invite[0]}"
    psync --data-dir "$state/laptop" join "$code" --name laptop --server "$url"
    wait "$invite_pid"

    say "== mounting both folders"
    psync --data-dir "$state/desktop" mount "$demo/desktop"
    psync --data-dir "$state/laptop" mount "$demo/laptop"

    say "== writing $demo/desktop/Welcome.md"
    note="# Welcome to PSync

Written on the desktop at $(date +%T); you are reading it on the laptop.
Edit it here and watch the desktop's copy change.
"
    printf '%s' "$note" > "$demo/desktop/Welcome.md"
    started=$(date +%s%N)
    for _ in $(seq 1 600); do
        [ "$(cat "$demo/laptop/Welcome.md" 2>/dev/null)" = "$(printf '%s' "$note")" ] && break
        sleep 0.05
    done
    if ! cmp -s "$demo/desktop/Welcome.md" "$demo/laptop/Welcome.md"; then
        say "error: the note did not arrive on the laptop; see $state/*/psync.log"
        exit 1
    fi
    say "it appeared in $demo/laptop after $(( ($(date +%s%N) - started) / 1000000 )) ms:"
    sed 's/^/    /' "$demo/laptop/Welcome.md"

    cat <<EOF

The demo is running. Two devices, two folders, one signalling server:
    $demo/desktop      (device "desktop")
    $demo/laptop       (device "laptop")

Try:
    echo "hello from the laptop" > $demo/laptop/hello.md; cat $demo/desktop/hello.md
    $PSYNC_BIN --data-dir $state/laptop status          # peers, in sync, conflicts
    $PSYNC_BIN --data-dir $state/laptop status --watch  # live, with transfer progress
    ./scripts/demo.sh status                           # both devices
    $PSYNC_BIN --data-dir $state/laptop tui             # the dashboard (q quits; the daemon keeps running)

Never online together (the server keeps a sealed copy for the offline one):
    $PSYNC_BIN --data-dir $state/laptop unmount $demo/laptop
    echo "written while the laptop was away" > $demo/desktop/away.md
    $PSYNC_BIN --data-dir $state/desktop unmount $demo/desktop
    $PSYNC_BIN --data-dir $state/laptop mount $demo/laptop; sleep 2; cat $demo/laptop/away.md

Open either folder in Obsidian ("Open folder as vault") or any editor.
Stop everything (unmounts both folders, stops the server):
    ./scripts/demo.sh stop
EOF
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) say "usage: $0 [start|status|stop]"; exit 2 ;;
esac
