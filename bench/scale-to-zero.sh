#!/usr/bin/env bash
# Issue 10 figure (a): COUNT deployed functions on one node. Deploys them through the API (the
# same component under COUNT names: each is its own version with its own code slot; the
# artifact is compiled once and reused), restarts the server (the path a restart takes), then
# prints the start time, idle RSS, and the latency of first requests to functions whose code is
# not resident (after the restart nothing but min_warm functions is), then the same SAMPLE again
# after a pass that evicts them (a budget of BUDGET), and the eviction count.
#
#   bench/scale-to-zero.sh                         # release build, COUNT=10000
#   COUNT=200 SAMPLE=50 NIMBUS_BIN=target/debug/nimbus LOAD_BIN=target/debug/scale-load \
#       SKIP_BUILD=1 bench/scale-to-zero.sh        # a small trial on a debug build
#
# Env: COUNT=10000 SAMPLE=200 DEPLOY_CONCURRENCY=4 BUDGET=64MiB (serve --code-memory-budget
# on the restart).
source "$(dirname "${BASH_SOURCE[0]}")/scaling-lib.sh"
COUNT=${COUNT:-10000}
SAMPLE=${SAMPLE:-200}
DEPLOY_CONCURRENCY=${DEPLOY_CONCURRENCY:-4}
BUDGET=${BUDGET:-64MiB}

machine_line
start_server
log "deploying $COUNT functions"
"$LOAD_BIN" --url "$NIMBUS_URL" deploy-many --token "$(token)" --wasm "$HELLO_WASM" \
    --count "$COUNT" --concurrency "$DEPLOY_CONCURRENCY"
echo "RSS after deploying (every function loaded once, budget 1GiB default): $(rss_mib VmRSS) MiB"
stop_server

log "restarting with $COUNT functions"
start_server --code-memory-budget "$BUDGET"
echo "start with $COUNT functions: ${START_SECONDS}s (spawn to /healthz 200)"
sleep 2
echo "idle RSS after start: $(rss_mib VmRSS) MiB; resident functions: $(metric nimbus_resident_functions)"
"$LOAD_BIN" --url "$NIMBUS_URL" first-requests --count "$COUNT" --sample "$SAMPLE"
echo "artifact size: $(stat -c %s "$NIMBUS_DATA"/artifacts/*.cwasm | head -1) bytes; code budget $BUDGET"
echo "resident functions: $(metric nimbus_resident_functions), resident code bytes: $(metric nimbus_resident_code_bytes), evictions: $(metric nimbus_code_evictions_total)"
# Load every other function once, so that the sample's code is evicted (LRU) before it is asked
# again: this pass measures the path of an evicted function, not just a never-loaded one.
"$LOAD_BIN" --url "$NIMBUS_URL" first-requests --count "$COUNT" --sample "$COUNT" >/dev/null
"$LOAD_BIN" --url "$NIMBUS_URL" first-requests --count "$COUNT" --sample "$SAMPLE" |
    sed 's/non-resident/evicted/'
echo "after the passes: evictions $(metric nimbus_code_evictions_total), resident $(metric nimbus_resident_functions), RSS $(rss_mib VmRSS) MiB, peak RSS $(rss_mib VmHWM) MiB"
echo "cold start histogram: count $(metric nimbus_cold_start_seconds_count), sum $(metric nimbus_cold_start_seconds_sum) s"
