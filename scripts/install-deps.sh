#!/usr/bin/env bash
# Installs the system packages PSync needs to build and test, if missing.
# Debian/Ubuntu. Safe to run repeatedly.
set -euo pipefail

# iproute2, iptables, coturn, openssl: the network tests (namespaces, NAT, TURN, TLS).
# dbus-bin: the daemon watches logind's "about to sleep" with dbus-monitor (and
# the test sends it with dbus-send on a private bus that dbus-daemon runs).
# attr: setfattr/getfattr, the extended-attribute test.
# tmux: the TUI tests run `psync tui` in a real terminal.
packages=(fuse3 inotify-tools libclang-dev pkg-config build-essential git sqlite3 python3 tar diffutils psmisc libacl1-dev acl
          iproute2 iptables coturn openssl dbus-bin dbus-daemon attr tmux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "error: no Rust toolchain found. Install one with rustup (https://rustup.rs), then run this again." >&2
    exit 1
fi
