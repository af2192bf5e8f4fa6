#!/usr/bin/env bash
# Nimbus benchmark harness: Nimbus vs a bare wasmtime-wasi-http host vs a plain hyper hello world,
# one after the other on loopback, plus cold-start figures and the binary size. Writes a dated
# section into docs/benchmarks.md (newest first, earlier runs kept below it).
#
#   bench/run.sh                      # everything
#   SKIP_NIMBUS=1 bench/run.sh        # bare host + native only (e.g. while nimbus does not build)
#
# Knobs (environment):
#   SKIP_NIMBUS=1        do not build or measure Nimbus
#   SKIP_BUILD=1         reuse the existing release binaries and hello.wasm
#   BENCH_BARE_LIMITS=1  add a 4th server: the bare host with fuel + epoch interruption on, as
#                        Nimbus has them (splits the overhead: these two checks vs the rest)
#   BENCH_CLEAN_BUILD=1  also time a clean release build of nimbus-cli in a throwaway target dir
#                        (8+ minutes on 2 cores)
#   WRK_THREADS=2 WRK_CONNECTIONS=50 WRK_DURATION=10s WRK_RUNS=3 WARMUP=2s COLD_REPEATS=5
#   BENCH_OUT=docs/benchmarks.md   where to write the results
#   BENCH_KEEP=1         keep the scratch directory (server logs, wrk outputs, data dirs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SKIP_NIMBUS=${SKIP_NIMBUS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
BENCH_CLEAN_BUILD=${BENCH_CLEAN_BUILD:-0}
BENCH_BARE_LIMITS=${BENCH_BARE_LIMITS:-0}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_RUNS=${WRK_RUNS:-3}
WARMUP=${WARMUP:-2s}
COLD_REPEATS=${COLD_REPEATS:-5}
BENCH_OUT=${BENCH_OUT:-docs/benchmarks.md}
BENCH_KEEP=${BENCH_KEEP:-0}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NIMBUS_BIN=$TARGET_DIR/release/nimbus
BARE_BIN=$TARGET_DIR/release/bare-host
NATIVE_BIN=$TARGET_DIR/release/native-hello
HELLO_WASM=$ROOT/examples/target/wasm32-wasip2/release/hello.wasm
EXPECTED_BODY=$'Hello from Nimbus!\n'

WORK=$(mktemp -d -t nimbus-bench.XXXXXX)
SERVER_PID=""

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

cleanup() {
    stop_server
    if [[ "$BENCH_KEEP" == 1 ]]; then
        log "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
set -o errtrace
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }

# ms between two nanosecond timestamps, 1 decimal.
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    else
        local p
        while :; do
            p=$((20000 + RANDOM % 40000))
            (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null || { echo "$p"; return; }
        done
    fi
}

# median of the numbers given as arguments
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# wait_http URL TIMEOUT_S: poll until URL answers 200
wait_http() {
    local url=$1 deadline=$(( $(date +%s) + $2 ))
    while :; do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)" == 200 ]]; then
            return 0
        fi
        if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
            return 1
        fi
        (( $(date +%s) < deadline )) || return 1
        sleep 0.005
    done
}

# start_server LOGFILE CMD...: start a server in the background, remember its pid
start_server() {
    local logfile=$1; shift
    "$@" >>"$logfile" 2>&1 &
    SERVER_PID=$!
}

# first_request URL: "CODE SECONDS" of one request
first_request() { curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 30 "$1"; }

check_body() {
    local url=$1 body
    body=$(curl -s --max-time 5 "$url"; printf x)
    [[ "${body%x}" == "$EXPECTED_BODY" ]] || die "$url answered $(printf %q "${body%x}"), expected the hello body"
}

# wrk latency figure ("512.00us", "4.30ms", "1.02s") to milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

# bench_url NAME URL: warm up, run wrk WRK_RUNS times; sets RPS P50 P99 (medians) and NOTES
declare -A RES_RPS RES_P50 RES_P99 RES_RUNS RES_NOTES
bench_url() {
    local name=$1 url=$2 i out rps p50 p99 non2xx errs
    local -a rpss=() p50s=() p99s=()
    local notes=""
    check_body "$url"
    log "$name: warm-up $WARMUP"
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    for i in $(seq 1 "$WRK_RUNS"); do
        out="$WORK/wrk-$name-$i.txt"
        wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency "$url" >"$out"
        rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
        p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
        p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
        non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
        errs=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' "$out")
        [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || { cat "$out" >&2; die "could not parse wrk output for $name"; }
        [[ -z "$non2xx" ]] || notes+="run $i: $non2xx non-2xx responses. "
        [[ -z "$errs" ]] || notes+="run $i: socket errors $errs. "
        log "$name run $i: $rps req/s, p50 ${p50} ms, p99 ${p99} ms${non2xx:+, $non2xx non-2xx}"
        rpss+=("$rps"); p50s+=("$p50"); p99s+=("$p99")
    done
    RES_RPS[$name]=$(median "${rpss[@]}")
    RES_P50[$name]=$(median "${p50s[@]}")
    RES_P99[$name]=$(median "${p99s[@]}")
    RES_RUNS[$name]="${rpss[*]}"
    RES_NOTES[$name]=$notes
}

# Prometheus histogram NAME in FILE -> "count sum mean_us p50_us" (p50 interpolated in buckets)
histogram() {
    awk -v name="$1" '
        $1 == name "_sum" { sum = $2 }
        $1 == name "_count" { count = $2 }
        index($1, name "_bucket{") == 1 {
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            nb++; les[nb] = (le == "+Inf") ? -1 : le + 0; cum[nb] = $2 + 0
        }
        END {
            if (count == 0) { print "0 0 - -"; exit }
            half = count / 2; prev_le = 0; prev_c = 0; p50 = "-"
            for (i = 1; i <= nb; i++) {
                if (cum[i] >= half) {
                    if (les[i] < 0) { p50 = sprintf(">%.1f", prev_le * 1e6) }
                    else { p50 = sprintf("%.1f", (prev_le + (les[i] - prev_le) * (half - prev_c) / (cum[i] - prev_c)) * 1e6) }
                    break
                }
                prev_le = les[i]; prev_c = cum[i]
            }
            printf "%d %.6f %.1f %s\n", count, sum, sum / count * 1e6, p50
        }' "$2"
}

# ---------------------------------------------------------------------------------------------
# Tools and builds

if ! command -v wrk >/dev/null; then
    log "installing wrk"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
fi
command -v wrk >/dev/null || die "wrk is required"
command -v curl >/dev/null || die "curl is required"

if [[ "$SKIP_BUILD" != 1 ]]; then
    if [[ "$SKIP_NIMBUS" == 1 ]]; then
        log "building bare-host and native-hello (release)"
        cargo build --release -p nimbus-bench
    else
        log "building nimbus, bare-host and native-hello (release)"
        cargo build --release -p nimbus-cli -p nimbus-bench
    fi
    log "building examples/hello (wasm32-wasip2, release)"
    (cd examples && cargo build --release --target wasm32-wasip2 -p hello)
fi
for f in "$BARE_BIN" "$NATIVE_BIN" "$HELLO_WASM"; do [[ -f "$f" ]] || die "missing $f (run without SKIP_BUILD=1)"; done
if [[ "$SKIP_NIMBUS" != 1 ]]; then [[ -x "$NIMBUS_BIN" ]] || die "missing $NIMBUS_BIN (or set SKIP_NIMBUS=1)"; fi

CLEAN_BUILD_S=""
if [[ "$BENCH_CLEAN_BUILD" == 1 ]]; then
    CLEAN_DIR=$(mktemp -d -t nimbus-clean-build.XXXXXX)
    log "clean release build of nimbus-cli in $CLEAN_DIR (takes minutes)"
    t0=$(now_ns)
    CARGO_TARGET_DIR=$CLEAN_DIR cargo build --release -p nimbus-cli
    t1=$(now_ns)
    CLEAN_BUILD_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) / 1e9 }')
    rm -rf "$CLEAN_DIR"
fi

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
HELLO_SIZE=$(stat -c %s "$HELLO_WASM")

# ---------------------------------------------------------------------------------------------
# Throughput, one server at a time

SERVERS=()

if [[ "$SKIP_NIMBUS" != 1 ]]; then
    SERVERS+=(nimbus)
    DATA=$WORK/nimbus-data
    mkdir -p "$DATA"
    PORT=$(free_port)
    NIMBUS_LOGFILE=$WORK/nimbus.log
    export NIMBUS_URL=http://127.0.0.1:$PORT NIMBUS_DATA=$DATA
    log "nimbus: starting on 127.0.0.1:$PORT (data $DATA)"
    start_server "$NIMBUS_LOGFILE" "$NIMBUS_BIN" serve --no-profile --data "$DATA" --listen "127.0.0.1:$PORT"
    wait_http "$NIMBUS_URL/healthz" 60 || { tail -n 30 "$NIMBUS_LOGFILE" >&2; die "nimbus did not become ready"; }
    grep -q "nimbus listening on" "$NIMBUS_LOGFILE" || log "warning: no 'nimbus listening on' line in the log"

    deploy() { # NAME ROUTE
        "$NIMBUS_BIN" deploy "$HELLO_WASM" --name "$1" --route "$2" --concurrency 1000 --queue 10000 \
            >>"$WORK/deploy.log" 2>&1 || { tail -n 20 "$WORK/deploy.log" >&2; die "deploy of $1 failed"; }
    }
    t0=$(now_ns); deploy hello /hello; t1=$(now_ns)
    DEPLOY_MS=$(elapsed_ms "$t0" "$t1")
    log "nimbus: deployed hello in $DEPLOY_MS ms (CLI wall time, includes compilation)"

    bench_url nimbus "$NIMBUS_URL/hello"

    curl -s "$NIMBUS_URL/metrics" >"$WORK/metrics-after-load.txt"
    read -r INST_COUNT _ INST_MEAN_US INST_P50_US < <(histogram nimbus_instantiation_seconds "$WORK/metrics-after-load.txt")
    read -r LOAD_COUNT _ LOAD_MEAN_US _ < <(histogram nimbus_component_load_seconds "$WORK/metrics-after-load.txt")

    # (a) first request after a deploy, fresh function each time
    COLD_DEPLOY=()
    for i in $(seq 1 "$COLD_REPEATS"); do
        deploy "hello-$i" "/c$i"
        read -r code secs < <(first_request "$NIMBUS_URL/c$i")
        [[ "$code" == 200 ]] || die "first request to /c$i answered $code"
        COLD_DEPLOY+=("$(awk -v s="$secs" 'BEGIN { printf "%.2f", s * 1000 }')")
    done
    log "nimbus: first request after deploy (ms): ${COLD_DEPLOY[*]}"

    # (b) restart on the same data dir: time to /healthz, then the first request to /hello
    RESTART=(); COLD_RESTART=()
    for i in $(seq 1 "$COLD_REPEATS"); do
        stop_server
        t0=$(now_ns)
        start_server "$NIMBUS_LOGFILE" "$NIMBUS_BIN" serve --no-profile --data "$DATA" --listen "127.0.0.1:$PORT"
        wait_http "$NIMBUS_URL/healthz" 60 || { tail -n 30 "$NIMBUS_LOGFILE" >&2; die "nimbus did not come back after restart $i"; }
        t1=$(now_ns)
        read -r code secs < <(first_request "$NIMBUS_URL/hello")
        [[ "$code" == 200 ]] || die "first request after restart $i answered $code"
        RESTART+=("$(elapsed_ms "$t0" "$t1")")
        COLD_RESTART+=("$(awk -v s="$secs" 'BEGIN { printf "%.2f", s * 1000 }')")
    done
    log "nimbus: restart to /healthz (ms): ${RESTART[*]}; first request after restart (ms): ${COLD_RESTART[*]}"
    curl -s "$NIMBUS_URL/metrics" >"$WORK/metrics-after-restart.txt"
    read -r RLOAD_COUNT _ RLOAD_MEAN_US _ < <(histogram nimbus_component_load_seconds "$WORK/metrics-after-restart.txt")
    stop_server

    NIMBUS_SIZE=$(stat -c %s "$NIMBUS_BIN")
    strip -o "$WORK/nimbus.stripped" "$NIMBUS_BIN"
    NIMBUS_STRIPPED=$(stat -c %s "$WORK/nimbus.stripped")
else
    log "SKIP_NIMBUS=1: Nimbus is neither built nor measured"
fi

SERVERS+=(bare-host)
PORT=$(free_port)
log "bare-host: starting on 127.0.0.1:$PORT"
start_server "$WORK/bare-host.log" "$BARE_BIN" --listen "127.0.0.1:$PORT" --component "$HELLO_WASM"
wait_http "http://127.0.0.1:$PORT/hello" 60 || { tail -n 30 "$WORK/bare-host.log" >&2; die "bare-host did not become ready"; }
bench_url bare-host "http://127.0.0.1:$PORT/hello"
stop_server

if [[ "$BENCH_BARE_LIMITS" == 1 ]]; then
    SERVERS+=(bare-limits)
    PORT=$(free_port)
    log "bare-limits: starting on 127.0.0.1:$PORT (bare host + fuel + epochs)"
    start_server "$WORK/bare-limits.log" "$BARE_BIN" --listen "127.0.0.1:$PORT" --component "$HELLO_WASM" --fuel-and-epochs
    wait_http "http://127.0.0.1:$PORT/hello" 60 || { tail -n 30 "$WORK/bare-limits.log" >&2; die "bare-host --fuel-and-epochs did not become ready"; }
    bench_url bare-limits "http://127.0.0.1:$PORT/hello"
    stop_server
fi

SERVERS+=(native)
PORT=$(free_port)
log "native: starting on 127.0.0.1:$PORT"
start_server "$WORK/native.log" "$NATIVE_BIN" --listen "127.0.0.1:$PORT"
wait_http "http://127.0.0.1:$PORT/hello" 30 || { tail -n 30 "$WORK/native.log" >&2; die "native-hello did not become ready"; }
bench_url native "http://127.0.0.1:$PORT/hello"
stop_server

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
passfail() { if awk "BEGIN { exit !($1) }"; then echo PASS; else echo FAIL; fi; }

DATE=$(date -u +%F)
CPU_MODEL=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }')
WRK_CMD="wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION --latency http://127.0.0.1:PORT/hello"
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$([[ -n "$(git status --porcelain 2>/dev/null)" ]] && echo " (uncommitted changes)" || true)

declare -A LABEL=([nimbus]="Nimbus (\`nimbus serve\`)" [bare-host]="bare wasmtime-wasi-http host" [bare-limits]="bare host + fuel + epochs (\`--fuel-and-epochs\`)" [native]="native hyper, no wasm")
SECTION=$WORK/section.md
{
    echo "## Run of $DATE ($(date -u +%H:%M) UTC)"
    echo
    echo "- Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, Linux $(uname -r); load average $LOADAVG_START at the start, $LOADAVG_END at the end"
    echo "- Commit: $GIT_REV$GIT_DIRTY; binaries built $(date -u -r "$BARE_BIN" '+%F %H:%M') UTC (bare host)$([[ "$SKIP_NIMBUS" == 1 ]] || date -u -r "$NIMBUS_BIN" '+, %F %H:%M UTC (nimbus)'); wasmtime $(awk '/^name = "wasmtime"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)"
    echo "- Load: \`$WRK_CMD\`, $WRK_RUNS runs per server after a $WARMUP warm-up, medians; servers run one at a time, wrk on the same cores"
    echo "- Component: \`examples/hello\` ($HELLO_SIZE bytes), a fresh instance per request"
    echo
    echo "| server | req/s (median of $WRK_RUNS) | p50 | p99 | ratio vs bare host | req/s of each run |"
    echo "|---|---|---|---|---|---|"
    for s in "${SERVERS[@]}"; do
        echo "| ${LABEL[$s]} | ${RES_RPS[$s]} | ${RES_P50[$s]} ms | ${RES_P99[$s]} ms | $(ratio "${RES_RPS[$s]}" "${RES_RPS[bare-host]}") | ${RES_RUNS[$s]} |"
    done
    echo
    for s in "${SERVERS[@]}"; do
        [[ -z "${RES_NOTES[$s]}" ]] || echo "- Warning, ${LABEL[$s]}: ${RES_NOTES[$s]}"
    done
    echo "The bare host uses the same pooling-allocator settings as Nimbus but no fuel metering and no"
    echo "epoch interruption: their cost is part of the platform overhead measured here."
    echo
    if [[ "$SKIP_NIMBUS" != 1 ]]; then
        echo "### Nimbus: instantiation, cold starts, size"
        echo
        echo "| figure | value |"
        echo "|---|---|"
        echo "| \`nimbus_instantiation_seconds\` after the load runs | $INST_COUNT samples, mean $INST_MEAN_US us, p50 ~$INST_P50_US us (interpolated in the histogram's power-of-2 buckets) |"
        echo "| \`nimbus_component_load_seconds\` after deploy | $LOAD_COUNT load(s), mean $(awk -v u="$LOAD_MEAN_US" 'BEGIN { printf "%.2f", u / 1000 }') ms |"
        echo "| \`nimbus_component_load_seconds\` after the last restart | $RLOAD_COUNT load(s) ($((COLD_REPEATS + 1)) functions), mean $(awk -v u="$RLOAD_MEAN_US" 'BEGIN { printf "%.2f", u / 1000 }') ms |"
        echo "| \`nimbus deploy\` of hello (CLI wall time, includes compilation) | $DEPLOY_MS ms |"
        echo "| first request after deploy (median of $COLD_REPEATS, fresh function each) | $(median "${COLD_DEPLOY[@]}") ms (${COLD_DEPLOY[*]}) |"
        echo "| restart until \`/healthz\` answers 200 (median of $COLD_REPEATS) | $(median "${RESTART[@]}") ms (${RESTART[*]}) |"
        echo "| first request to /hello after a restart (median of $COLD_REPEATS) | $(median "${COLD_RESTART[@]}") ms (${COLD_RESTART[*]}) |"
        echo "| \`target/release/nimbus\` size | $NIMBUS_SIZE bytes ($(awk -v b="$NIMBUS_SIZE" 'BEGIN { printf "%.1f", b / 1048576 }') MiB); stripped: $NIMBUS_STRIPPED bytes ($(awk -v b="$NIMBUS_STRIPPED" 'BEGIN { printf "%.1f", b / 1048576 }') MiB) |"
        [[ -z "$CLEAN_BUILD_S" ]] || echo "| clean release build of nimbus-cli | ${CLEAN_BUILD_S} s |"
        echo
        echo "First-request times are curl's \`time_total\` (connect + request + response) on loopback."
        echo
        goal1=$(passfail "${RES_RPS[nimbus]} >= 0.9 * ${RES_RPS[bare-host]}")
        if [[ "$INST_P50_US" =~ ^[0-9.]+$ ]]; then goal2=$(passfail "$INST_P50_US <= 15"); else goal2=FAIL; fi
        goal3=$(passfail "$(median "${COLD_RESTART[@]}") <= 5")
        echo "### Goals"
        echo
        echo "| goal | measured | result |"
        echo "|---|---|---|"
        echo "| Nimbus req/s >= 0.9 x bare host | $(ratio "${RES_RPS[nimbus]}" "${RES_RPS[bare-host]}") x | $goal1 |"
        echo "| instantiation p50 <= 15 us | ~$INST_P50_US us (server histogram under load; the criterion bench in crates/nimbus-runtime/benches is the in-process figure) | $goal2 |"
        echo "| first request after a restart <= 5 ms (small component) | $(median "${COLD_RESTART[@]}") ms | $goal3 |"
    else
        echo "Nimbus was skipped (\`SKIP_NIMBUS=1\`): no Nimbus throughput, cold-start or size figures, goals not evaluated."
        [[ -z "$CLEAN_BUILD_S" ]] || { echo; echo "Clean release build of nimbus-cli: ${CLEAN_BUILD_S} s."; }
    fi
    echo
} >"$SECTION"

# docs/benchmarks.md: a fixed header, then the runs, newest first. Each run inserts its section
# right below the marker and keeps everything that was already there.
MARKER="<!-- bench/run.sh inserts new runs below this line, newest first -->"
mkdir -p "$(dirname "$BENCH_OUT")"
HISTORY=$WORK/history.md
: >"$HISTORY"
if [[ -f "$BENCH_OUT" ]]; then
    if grep -qF "$MARKER" "$BENCH_OUT"; then
        awk -v m="$MARKER" 'found { print } $0 == m { found = 1 }' "$BENCH_OUT" | sed '/./,$!d' >"$HISTORY"
    else
        cp "$BENCH_OUT" "$HISTORY"
    fi
fi
{
    cat <<'EOF'
# Benchmarks

Nimbus against a bare `wasmtime-wasi-http` host and a plain hyper hello world, measured by
`bench/run.sh` (see the top of the script for its knobs). Every run of the script inserts a new
section dated in UTC right below this header and keeps the earlier runs beneath it, newest first,
so the history of the numbers stays in one file; the text above the marker is regenerated.

What is compared, each server alone on loopback while `wrk` shares the same CPUs:

- **Nimbus**: `nimbus serve`, with `examples/hello` deployed on `/hello` (concurrency 1000, queue
  10000): routing, admission, limits (fuel, epoch deadline, memory), invocation records, logs and
  metrics included.
- **bare host**: `bench/src/bin/bare-host.rs`, a minimal server modelled on `wasmtime serve`: one
  fresh `Store` + instance per request via `ProxyPre`, the same pooling-allocator settings as
  Nimbus (`crates/nimbus-runtime/src/engine.rs`) but neither fuel nor epoch interruption.
- **native**: `bench/src/bin/native-hello.rs`, hyper answering the same bytes without wasm: the
  upper bound of the machine.

The goals (from the performance issue): Nimbus req/s >= 0.9 x the bare host; instantiation p50
<= 15 us in-process; first request after a restart <= 5 ms for a small component. The machine is
shared and noisy (note the load average of each run): its speed swings by a third within minutes,
and this script measures the servers one after the other, so a ratio from one run can be off by
that much. `bench/interleaved.sh` alternates short rounds between Nimbus and the bare host, both
running side by side, and gives the steadier ratio (see the overhead analysis below).
In-process figures (criterion: instantiation, token verification, sign-in, rule evaluation) are
at the end of this file, below the load-test runs.

EOF
    echo "$MARKER"
    echo
    cat "$SECTION"
    cat "$HISTORY"
} >"$WORK/benchmarks.md"
mv "$WORK/benchmarks.md" "$BENCH_OUT"

log "results written to $BENCH_OUT"
cat "$SECTION"
