#!/usr/bin/env bash
# Event trigger figures (issue 9): prints a Markdown section for docs/benchmarks.md.
#
#   bench/triggers.sh            # builds the release binary and the events guest if missing
#
# 1. Latency from an upload and from a document write to the start of the subscribed function.
# 2. Sustained events/s delivered to one function, against the same function's HTTP requests/s.
# 3. The crash test: kill -9 the server repeatedly while uploads, document writes and queue
#    publishes run; every acknowledged change's event must be delivered (exit 1 otherwise).
# See bench/triggers.py for how each is measured.
#
# Knobs: LATENCY_N=300 RATE_N=10000 WRK_DURATION=10s CRASH_ROUNDS=8 CRASH_DEADLINE=300
#        NIMBUS_BIN=<binary>  (default target/release/nimbus)
# Needs: python3, wrk.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NIMBUS=${NIMBUS_BIN:-$TARGET_DIR/release/nimbus}
if [[ ! -x $NIMBUS ]]; then
  CARGO_INCREMENTAL=0 cargo build --release --locked -p nimbus-cli -p nimbus-bench >&2
fi
GUEST_TARGET=$TARGET_DIR/bench-guests
GUEST=$GUEST_TARGET/wasm32-wasip2/release/events.wasm
cargo build -q --release --target wasm32-wasip2 -p events \
  --manifest-path crates/test-programs/Cargo.toml --target-dir "$GUEST_TARGET" >&2

echo "## Event triggers (issue 9), $(date -u '+%Y-%m-%d %H:%M') UTC, \`bench/triggers.sh\`"
echo
echo "Binary \`${NIMBUS#$ROOT/}\`, commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)'), $(nproc) cores."
echo
echo '```'
python3 bench/triggers.py latency --nimbus "$NIMBUS" --guest "$GUEST" --n "${LATENCY_N:-300}"
python3 bench/triggers.py rate --nimbus "$NIMBUS" --guest "$GUEST" --n "${RATE_N:-10000}" \
  --wrk-duration "${WRK_DURATION:-10s}"
python3 bench/triggers.py crash --nimbus "$NIMBUS" --guest "$GUEST" --rounds "${CRASH_ROUNDS:-8}" \
  --deadline "${CRASH_DEADLINE:-300}"
echo '```'
