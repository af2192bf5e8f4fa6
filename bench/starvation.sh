#!/usr/bin/env bash
# Guest CPU vs the node (issue 6.1): latency of /healthz and of another function (hello) while
# SPINNERS guests loop until their timeout, against the same without them.
#
#   bench/starvation.sh                      # release build of nimbus-cli, then measure
#   SKIP_BUILD=1 bench/starvation.sh         # reuse target/release/nimbus and the built guests
#   NIMBUS_BIN=target/debug/nimbus SKIP_BUILD=1 bench/starvation.sh   # against another binary
#   HELLO_WASM=... SPIN_WASM=...     # other guests (default: examples/hello, test-programs/spin)
#
# Knobs (environment): SPINNERS (default 4 x cores), SPIN_TIMEOUT=10s, WRK_DURATION=10s,
# WRK_CONNECTIONS=2 (each is a closed loop: a prober, not a load test), WRK_TIMEOUT=30s (a stall
# shows as a latency, not as a wrk timeout), BENCH_KEEP=1 keeps the scratch directory.
#
# Prints a markdown table on stdout (progress goes to stderr).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CORES=$(nproc)
SPINNERS=${SPINNERS:-$((4 * CORES))}
SPIN_TIMEOUT=${SPIN_TIMEOUT:-10s}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-2}
WRK_TIMEOUT=${WRK_TIMEOUT:-30s}
SKIP_BUILD=${SKIP_BUILD:-0}
BENCH_KEEP=${BENCH_KEEP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NIMBUS_BIN=${NIMBUS_BIN:-$TARGET_DIR/release/nimbus}
HELLO_WASM=${HELLO_WASM:-$ROOT/examples/target/wasm32-wasip2/release/hello.wasm}
SPIN_WASM=${SPIN_WASM:-$ROOT/crates/test-programs/target/wasm32-wasip2/release/spin.wasm}

WORK=$(mktemp -d -t nimbus-starvation.XXXXXX)
SERVER_PID=""
SPIN_PIDS=()

log() { printf '[starvation %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

stop_spinners() {
    local p
    for p in "${SPIN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${SPIN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    SPIN_PIDS=()
}

cleanup() {
    stop_spinners
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ "$BENCH_KEEP" == 1 ]]; then log "scratch directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v wrk >/dev/null || die "wrk is required (apt-get install -y wrk)"
command -v curl >/dev/null || die "curl is required"

if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building nimbus (release; minutes on 2 cores)"
    cargo build --release -p nimbus-cli
fi
if [[ ! -f "$HELLO_WASM" ]]; then
    log "building examples/hello"
    (cd examples && cargo build --release --target wasm32-wasip2 -p hello)
fi
if [[ ! -f "$SPIN_WASM" ]]; then
    log "building the spin test guest"
    (cd crates/test-programs && cargo build --release --target wasm32-wasip2 -p spin)
fi
[[ -x "$NIMBUS_BIN" ]] || die "missing $NIMBUS_BIN"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
export NIMBUS_URL=http://127.0.0.1:$PORT NIMBUS_DATA=$WORK/data
"$NIMBUS_BIN" serve --no-profile --data "$NIMBUS_DATA" --listen "127.0.0.1:$PORT" >"$WORK/nimbus.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$NIMBUS_URL/healthz" || true)" == 200 ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/nimbus.log" >&2; die "nimbus exited"; }
    sleep 0.1
done
"$NIMBUS_BIN" deploy "$HELLO_WASM" --name hello --route /hello >>"$WORK/deploy.log" 2>&1 \
    || { cat "$WORK/deploy.log" >&2; die "deploying hello"; }
"$NIMBUS_BIN" deploy "$SPIN_WASM" --name spin --route /spin --timeout "$SPIN_TIMEOUT" \
    --concurrency "$SPINNERS" >>"$WORK/deploy.log" 2>&1 \
    || { cat "$WORK/deploy.log" >&2; die "deploying spin"; }

# wrk latency figure ("512.00us", "4.30ms", "1.02s") to milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

ROWS=()
# probe LABEL PATH [WRK ARGS...]: wrk closed-loop probe of PATH; appends a table row
probe() {
    local label=$1 path=$2 out="$WORK/wrk-${1// /_}-${2//[\/?=]/_}.txt"
    shift 2
    wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --timeout "$WRK_TIMEOUT" --latency "$@" \
        "$NIMBUS_URL$path" >"$out"
    local rps p50 p99 max non2xx timeouts
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    max=$(to_ms "$(awk '$1 == "Latency" && NF >= 4 { print $4; exit }' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    timeouts=$(awk '/Socket errors:/ { for (i = 1; i <= NF; i++) if ($i == "timeout") print $(i - 1) }' "$out")
    log "$label $path: $rps req/s, p50 $p50 ms, p99 $p99 ms, max $max ms"
    ROWS+=("| $label | \`$path\` | $rps | $p50 | $p99 | $max | ${non2xx:-0} | ${timeouts:-0} |")
}

AUTH="Authorization: Bearer $(cat "$NIMBUS_DATA/admin-token")"
log "baseline: no spinning guests"
probe "idle" /healthz
probe "idle" /hello
probe "idle" /v1/functions -H "$AUTH"

log "starting $SPINNERS spinners (each loops: a request that spins until its $SPIN_TIMEOUT timeout)"
for i in $(seq 1 "$SPINNERS"); do
    (while :; do
        curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 120 "$NIMBUS_URL/spin" \
            >>"$WORK/spin-$i.txt" || true
    done) &
    SPIN_PIDS+=($!)
done
sleep 1
probe "$SPINNERS spinning" /healthz
probe "$SPINNERS spinning" /hello
probe "$SPINNERS spinning" /v1/functions -H "$AUTH"
stop_spinners

# Each spinner's requests must have been stopped at the timeout (504), not served early or
# left running: otherwise the figures above would not be "while guests spin".
SPIN_DONE=$(cat "$WORK"/spin-*.txt 2>/dev/null | awk '$1 == 504' | wc -l)
SPIN_MEAN=$(cat "$WORK"/spin-*.txt 2>/dev/null | awk '$1 == 504 { s += $2; n++ } END { if (n) printf "%.2f", s / n; else print "-" }')
SPIN_OTHER=$(cat "$WORK"/spin-*.txt 2>/dev/null | awk '$1 != 504 && $1 != 000' | wc -l)

echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); $(uname -sr)"
echo "Binary: ${NIMBUS_BIN#"$ROOT"/}; spinners: $SPINNERS, guest timeout $SPIN_TIMEOUT; wrk -t1 -c$WRK_CONNECTIONS -d$WRK_DURATION per row"
echo
echo "| load | path | req/s | p50 ms | p99 ms | max ms | non-2xx | timeouts |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Spinner requests stopped by their timeout (504): $SPIN_DONE, mean duration ${SPIN_MEAN} s; other statuses: $SPIN_OTHER"
