# Shared by bench/scale-to-zero.sh, bench/sleep-1000.sh and bench/burst.sh (sourced, not run).
# Builds (unless SKIP_BUILD=1) the release nimbus, the scale-load generator and the guests,
# starts and stops servers, reads their memory, and prints the machine line every script starts
# with. NIMBUS_BIN / LOAD_BIN point at other builds (a debug build for a small trial run:
# NIMBUS_BIN=target/debug/nimbus LOAD_BIN=target/debug/scale-load SKIP_BUILD=1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NIMBUS_BIN=${NIMBUS_BIN:-$TARGET_DIR/release/nimbus}
LOAD_BIN=${LOAD_BIN:-$TARGET_DIR/release/scale-load}
HELLO_WASM=${HELLO_WASM:-$ROOT/examples/target/wasm32-wasip2/release/hello.wasm}
SLEEP_WASM=${SLEEP_WASM:-$ROOT/crates/test-programs/target/wasm32-wasip2/release/sleep.wasm}
BENCH_KEEP=${BENCH_KEEP:-0}

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$(basename "$0" .sh)" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building nimbus and scale-load (release; minutes on 2 cores)"
    (cd "$ROOT" && nice -n 10 cargo build --release --locked -p nimbus-cli -p nimbus-bench)
fi
[[ -f "$HELLO_WASM" ]] || (cd "$ROOT/examples" && cargo build --release --target wasm32-wasip2 -p hello)
[[ -f "$SLEEP_WASM" ]] || (cd "$ROOT/crates/test-programs" && cargo build --release --target wasm32-wasip2 -p sleep)
for f in "$NIMBUS_BIN" "$LOAD_BIN" "$HELLO_WASM" "$SLEEP_WASM"; do
    [[ -f "$f" ]] || die "missing $f"
done

WORK=$(mktemp -d -t nimbus-scaling.XXXXXX)
SERVER_PID=""
cleanup() {
    stop_server
    if [[ "$BENCH_KEEP" == 1 ]]; then log "scratch directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
export NIMBUS_URL=http://127.0.0.1:$PORT NIMBUS_DATA=$WORK/data
now() { date +%s.%N; }

# start_server [serve flags...]: start, wait for /healthz (the server listens once every
# function is routed), set START_SECONDS.
start_server() {
    local t0
    t0=$(now)
    "$NIMBUS_BIN" serve --no-profile --data "$NIMBUS_DATA" --listen "127.0.0.1:$PORT" "$@" \
        >>"$WORK/nimbus.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 12000); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$NIMBUS_URL/healthz" || true)" == 200 ]]; then
            START_SECONDS=$(echo "$(now) - $t0" | bc)
            return
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "server exited; see $WORK/nimbus.log"
        sleep 0.05
    done
    die "server did not answer /healthz"
}

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

# rss_mib FIELD: VmRSS (now) or VmHWM (peak) of the server, in MiB.
rss_mib() { awk -v f="$1:" '$1 == f { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status"; }

token() { cat "$NIMBUS_DATA/admin-token"; }

# metric NAME: a sample of /metrics (first line starting with NAME and a space).
metric() {
    curl -s -H "authorization: Bearer $(token)" "$NIMBUS_URL/metrics" |
        awk -v n="$1" '$1 == n { print $2; exit }'
}

machine_line() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg)  nimbus: $NIMBUS_BIN"
}
