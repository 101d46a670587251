# Sourced by the other scripts: one place for the build environment.
# shellcheck shell=bash

# Build outside the clone, in a directory that survives between runs on the
# same machine (RocksDB's C++ takes ~20 minutes to build from scratch).
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    if [ "$(id -u)" = 0 ]; then
        export CARGO_TARGET_DIR=/var/cache/psync-target
    else
        export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/psync-target"
    fi
fi
mkdir -p "$CARGO_TARGET_DIR"
# Test tools installed with `cargo install` (pjdfstest, fsx), kept like the target dir.
if [ -z "${PSYNC_TOOLS_DIR:-}" ]; then
    if [ "$(id -u)" = 0 ]; then
        export PSYNC_TOOLS_DIR=/var/cache/psync-tools
    else
        export PSYNC_TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/psync-tools"
    fi
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
