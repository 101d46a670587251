#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
# Installs what the tests need, then: rustfmt, clippy (warnings are errors), tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (target dir: $CARGO_TARGET_DIR)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
