#!/usr/bin/env bash
# Installs what PSync needs, builds it, and shows PSync on one device: a
# generated notes vault imported into a store (deduplication, history,
# restore, fsck), then mounted as a folder that any program can use.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh
echo "== building psync (first build compiles RocksDB: ~20 minutes on 2 cores)"
cargo build --locked --bin psync
psync="$CARGO_TARGET_DIR/debug/psync"

demo=$(mktemp -d /tmp/psync-demo.XXXXXX)
vault="$demo/vault"
export PSYNC_DATA_DIR="$demo/data"
mkdir -p "$vault/daily" "$vault/projects"
for i in $(seq 1 20); do
    printf '# Day %s\n\n- wrote notes\n- read a paper\n' "$i" > "$vault/daily/2026-11-$(printf %02d "$i").md"
done
printf '# PSync\n\nA filesystem that syncs.\n' > "$vault/projects/psync.md"
cp README.md "$vault/projects/readme-copy.md"
cp README.md "$vault/projects/readme-copy-2.md"   # identical: stored once
head -c 3000000 /dev/urandom > "$vault/paper.pdf"

echo; echo "== import a vault into a fresh store ($PSYNC_DATA_DIR)"
"$psync" store import "$vault"
"$psync" stats
echo; echo "== edit a note and import again: a new version, old one kept"
printf '\n- synced it\n' >> "$vault/projects/psync.md"
"$psync" store import "$vault"
"$psync" store log projects/psync.md
first=$("$psync" store log projects/psync.md --json | grep -o '"version": [0-9]*' | head -1 | grep -o '[0-9]*$')
echo; echo "== restore the first version"
"$psync" store restore projects/psync.md --version "$first"
"$psync" store cat projects/psync.md
echo; echo "== integrity check"
"$psync" fsck

echo; echo "== mount the store as a folder"
mkdir -p "$demo/mnt"
"$psync" mount "$demo/mnt"
ls "$demo/mnt" "$demo/mnt/projects"
echo "written through the mount" > "$demo/mnt/projects/new-note.md"
printf -- '- edited in the mount\n' >> "$demo/mnt/projects/psync.md"
sleep 1  # the edits above are committed when the files are released
"$psync" store log projects/psync.md

echo; echo "== two devices of one group, syncing over WebRTC on this machine"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$psync" --data-dir "$demo/server" signal --listen "127.0.0.1:$port" > "$demo/server.log" 2>&1 &
server_pid=$!
sleep 1
desktop="$demo/desktop"; laptop="$demo/laptop"
"$psync" --data-dir "$desktop" init --name desktop --server "ws://127.0.0.1:$port"
coproc invite { "$psync" --data-dir "$desktop" invite --yes; }
read -r code <&"${invite[0]}"
"$psync" --data-dir "$laptop" join "$code" --name laptop --server "ws://127.0.0.1:$port"
wait "$invite_PID" || true
"$psync" --data-dir "$laptop" devices
mkdir -p "$demo/desktop-mnt" "$demo/laptop-mnt"
"$psync" --data-dir "$desktop" mount "$demo/desktop-mnt"
"$psync" --data-dir "$laptop" mount "$demo/laptop-mnt"
cp -r "$vault/." "$demo/desktop-mnt/"
echo "written on the laptop" > "$demo/laptop-mnt/from-laptop.md"
for _ in $(seq 1 100); do
    if cmp -s "$vault/paper.pdf" "$demo/laptop-mnt/paper.pdf" && [ -f "$demo/desktop-mnt/from-laptop.md" ]; then break; fi
    sleep 0.2
done
echo "laptop sees:"; ls "$demo/laptop-mnt" "$demo/laptop-mnt/daily" | head -12
cmp "$vault/paper.pdf" "$demo/laptop-mnt/paper.pdf" && echo "paper.pdf arrived byte for byte"
echo "desktop sees: $(cat "$demo/desktop-mnt/from-laptop.md")"
"$psync" --data-dir "$desktop" unmount "$demo/desktop-mnt"
"$psync" --data-dir "$laptop" unmount "$demo/laptop-mnt"
kill "$server_pid"

echo
echo "The vault is mounted at $demo/mnt: open it in an editor or Obsidian, then"
echo "  PSYNC_DATA_DIR=$PSYNC_DATA_DIR $psync unmount $demo/mnt"
echo "  PSYNC_DATA_DIR=$PSYNC_DATA_DIR $psync store log projects/psync.md"
echo "Remove everything with: $psync unmount $demo/mnt; rm -rf $demo"
