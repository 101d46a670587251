#!/usr/bin/env bash
# A tour of the store on one device: a generated notes vault imported into
# a store (deduplication, history, restore, fsck), then mounted as a folder
# that any program can use. (The two-device demo is ./scripts/demo.sh.)
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

echo
echo "The vault is mounted at $demo/mnt: open it in an editor or Obsidian, then"
echo "  PSYNC_DATA_DIR=$PSYNC_DATA_DIR $psync unmount $demo/mnt"
echo "  PSYNC_DATA_DIR=$PSYNC_DATA_DIR $psync store log projects/psync.md"
echo "Remove everything with: $psync unmount $demo/mnt; rm -rf $demo"
