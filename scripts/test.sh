#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
# Installs what the tests need, then: rustfmt, clippy (warnings are errors), tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh

# The conformance suite's tools and the user pjdfstest switches to.
for tool in pjdfstest fsx; do
    if [ ! -x "$PSYNC_TOOLS_DIR/bin/$tool" ]; then
        echo "== installing $tool into $PSYNC_TOOLS_DIR"
        cargo install --locked --quiet --root "$PSYNC_TOOLS_DIR" "$tool"
    fi
done
# The S3-compatible server the relay's S3 backend is tested against (the
# newest release needs a newer rustc than ours).
if [ ! -x "$PSYNC_TOOLS_DIR/bin/s3s-fs" ]; then
    echo "== installing s3s-fs into $PSYNC_TOOLS_DIR"
    cargo install --locked --quiet --root "$PSYNC_TOOLS_DIR" s3s-fs@0.14.1 --features binary
fi
if ! id tests >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo 'tests:x:::pjdfstest dummy user:/:/usr/sbin/nologin' | $sudo newusers
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (target dir: $CARGO_TARGET_DIR)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
