#!/usr/bin/env bash
# Builds PSync (release) and installs it system-wide:
#   /usr/local/bin/psync            the command
#   /sbin/mount.fuse.psync          the mount(8) helper (for `mount -t fuse.psync` and fstab)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh
cargo build --locked --release -p psync -p psync-mount-helper
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
$sudo install -m 0755 "$CARGO_TARGET_DIR/release/psync" /usr/local/bin/psync
$sudo install -m 0755 "$CARGO_TARGET_DIR/release/mount-psync" /sbin/mount.fuse.psync
echo "installed /usr/local/bin/psync and /sbin/mount.fuse.psync"
