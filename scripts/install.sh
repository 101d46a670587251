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
# Man pages and shell completions, generated from the command's own definitions.
pages=$(mktemp -d)
"$CARGO_TARGET_DIR/release/psync" man --dir "$pages" >/dev/null
$sudo install -d /usr/local/share/man/man1 /usr/share/bash-completion/completions \
    /usr/share/zsh/vendor-completions /usr/share/fish/vendor_completions.d
$sudo install -m 0644 "$pages"/*.1 /usr/local/share/man/man1/
rm -rf "$pages"
"$CARGO_TARGET_DIR/release/psync" completions bash | $sudo tee /usr/share/bash-completion/completions/psync >/dev/null
"$CARGO_TARGET_DIR/release/psync" completions zsh | $sudo tee /usr/share/zsh/vendor-completions/_psync >/dev/null
"$CARGO_TARGET_DIR/release/psync" completions fish | $sudo tee /usr/share/fish/vendor_completions.d/psync.fish >/dev/null
echo "installed /usr/local/bin/psync, /sbin/mount.fuse.psync, man pages (man psync) and shell completions"
echo "to mount at login: contrib/systemd/psync-vault.service (instructions inside)"
