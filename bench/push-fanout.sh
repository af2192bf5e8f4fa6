#!/usr/bin/env bash
# Issue 11 figure: one push notification to a topic of $SUBS (10,000) Web Push subscriptions.
#
# Starts a release `nimbus serve` (--push-allow-http, --outbound-allow-net 127.0.0.0/8) and the
# local push service of the tests (crates/nimbus-server/tests/it/push_service.py: Python,
# ThreadingHTTPServer, verifies the VAPID JWT and decrypts the payload of one message in
# $VERIFY_EVERY), registers $SUBS subscriptions on topic `bench` through the API, sends one
# message to the topic, and prints:
#   - the time from the send request until the message has no queued delivery left (all
#     recorded sent), and the push service's count of requests it answered;
#   - nimbus's peak RSS (VmHWM: over the whole run, registration included) and its RSS before
#     the send and after the fan-out.
# The push service and this driver run on the same 2 cores as the server, so the time is an
# upper bound of what Nimbus needs (the Python receiver is likely the bottleneck).
#
#   bench/push-fanout.sh            # SKIP_BUILD=1 reuses target/release/nimbus
# Knobs: SUBS=10000 VERIFY_EVERY=100 PROFILE=release (PROFILE=debug: the dev build, whose
# dependencies are opt-level 1; only for when a release build cannot be made, and say so)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SUBS=${SUBS:-10000}
VERIFY_EVERY=${VERIFY_EVERY:-100}
WORK=$(mktemp -d -t nimbus-push.XXXXXX)
NPID="" PSPID=""
log() { printf '[push-fanout %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cleanup() {
    for p in $NPID $PSPID; do kill "$p" 2>/dev/null || true; done
    for p in $NPID $PSPID; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

PROFILE=${PROFILE:-release}
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building $PROFILE nimbus (nice -n 19)"
    if [[ "$PROFILE" == release ]]; then
        nice -n 19 cargo build --release --locked -p nimbus-cli --bin nimbus
    else
        nice -n 19 cargo build --locked -p nimbus-cli --bin nimbus
    fi
fi
NIMBUS=$TARGET_DIR/$PROFILE/nimbus
[[ -x "$NIMBUS" ]] || { log "missing $NIMBUS"; exit 1; }
python3 -c 'import http_ece, cryptography' ||
    { log "needs python3 -m pip install http-ece cryptography"; exit 1; }

python3 crates/nimbus-server/tests/it/push_service.py --verify-every "$VERIFY_EVERY" \
    >"$WORK/ps.out" 2>"$WORK/ps.err" &
PSPID=$!
for _ in $(seq 1 100); do grep -q '^PORT' "$WORK/ps.out" 2>/dev/null && break; sleep 0.05; done
PSPORT=$(awk '/^PORT/ {print $2}' "$WORK/ps.out")
NPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$NIMBUS" serve --data "$WORK/nimbus" --listen "127.0.0.1:$NPORT" --push-allow-http \
    --outbound-allow-net 127.0.0.0/8 >"$WORK/nimbus.log" 2>&1 &
NPID=$!
for _ in $(seq 1 200); do curl -sf -o /dev/null "http://127.0.0.1:$NPORT/healthz" && break; sleep 0.05; done
log "$PROFILE build; load $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
echo "nimbus $PROFILE build, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at start"
python3 bench/push_fanout.py "http://127.0.0.1:$NPORT" "$(cat "$WORK/nimbus/admin-token")" \
    "http://127.0.0.1:$PSPORT" "$SUBS" "$NPID"
