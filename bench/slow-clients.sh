#!/usr/bin/env bash
# Issue 6.4 figure: does the node keep answering while hostile clients hold many slow or idle
# connections? Starts a release `nimbus serve` with its default connection limits, then measures
# /healthz with wrk (p50/p99) with no attacker, and while bench's `slow-clients` binary holds
# connections:
#   slowloris-1addr : 5,000 never-finished request heads from one address (per-client cap 1,000)
#   idle-8addr      : 8,000 idle connections from 8 addresses (under the global cap of 10,000)
#   slowloris-12addr: 12,000 never-finished heads from 12 addresses (over the global cap)
# Prints a table and prepends it, dated, to docs/benchmarks.md (section "Slow clients").
#
#   bench/slow-clients.sh          # SKIP_BUILD=1 reuses target/release binaries
# Knobs: WRK_DURATION=10s WRK_CONNECTIONS=10 HOLD_SECONDS=25 BENCH_OUT=docs/benchmarks.md
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-10}
HOLD_SECONDS=${HOLD_SECONDS:-25}
BENCH_OUT=${BENCH_OUT:-docs/benchmarks.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d -t nimbus-slow.XXXXXX)
SERVER_PID=""
log() { printf '[slow-clients %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -qq wrk >/dev/null; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building release nimbus and slow-clients"
    cargo build --release --locked -p nimbus-cli -p nimbus-bench --bin nimbus --bin slow-clients
fi
ulimit -n "$(ulimit -Hn)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
ADDR=127.0.0.1:$PORT
"$TARGET_DIR/release/nimbus" serve --no-profile --data "$WORK/data" --listen "$ADDR" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 200); do curl -sf "http://$ADDR/healthz" >/dev/null && break; sleep 0.05; done

to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; printf "%.2f", n }'
}
declare -a ROWS
measure() { # NAME ATTACK-ARGS...
    local name=$1; shift
    local attacker="" held="-"
    if [[ $# -gt 0 ]]; then
        "$TARGET_DIR/release/slow-clients" --target "$ADDR" --seconds "$HOLD_SECONDS" "$@" \
            >"$WORK/$name.attack" 2>&1 &
        attacker=$!
        # Let it open its connections first.
        for _ in $(seq 1 100); do grep -q '^opened' "$WORK/$name.attack" && break; sleep 0.2; done
        sleep 1
    fi
    local out; out=$(wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency "http://$ADDR/healthz")
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errors=$(awk '/Socket errors/ { print $0 }' <<<"$out" | sed 's/^ *//')
    if [[ -n "$attacker" ]]; then
        held=$(grep 'still open' "$WORK/$name.attack" | tail -1 | awk '{ print $NF }')
        local opened; opened=$(awk '/^opened/ { print $2 }' "$WORK/$name.attack")
        held="$opened opened, $held held at the end"
        kill "$attacker" 2>/dev/null || true; wait "$attacker" 2>/dev/null || true
        sleep 2
    fi
    ROWS+=("| $name | $held | $rps | $p50 | $p99 | ${errors:-none} |")
    log "$name: $rps req/s p50 $p50 ms p99 $p99 ms ($held)"
}

measure baseline
measure slowloris-1addr --sources 1 --per-source 5000 --mode slowloris
measure idle-8addr --sources 8 --per-source 1000 --mode idle
measure slowloris-12addr --sources 12 --per-source 1000 --mode slowloris

TABLE=$(
    echo "### Slow clients vs /healthz (issue 6.4), $(date -u +%Y-%m-%d), $(nproc) cores"
    echo
    echo "\`bench/slow-clients.sh\`: release \`nimbus serve\` with default limits (10,000 connections,"
    echo "1,000 per client address, 10 s header timeout); wrk -t1 -c$WRK_CONNECTIONS -d$WRK_DURATION on"
    echo "/healthz while \`slow-clients\` holds connections (same 2 cores)."
    echo
    echo "| scenario | attacker connections | /healthz req/s | p50 ms | p99 ms | wrk socket errors |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
)
echo "$TABLE"
python3 - "$BENCH_OUT" "$TABLE" <<'EOF'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
marker = "## Slow clients"
body = table + "\n\n"
if marker in text:
    head, rest = text.split(marker, 1)
    text = head + marker + "\n\n" + body + rest.lstrip("\n")
else:
    text = text.rstrip("\n") + "\n\n" + marker + "\n\n" + body
open(path, "w").write(text)
EOF
