#!/usr/bin/env bash
# Issue 10 figure (b): N (1000) concurrent in-flight invocations of a guest that sleeps 1 s
# (test-programs/sleep, idle in a host call): all must answer 200; prints wall time, latency
# percentiles and the server's peak RSS.
#
#   bench/sleep-1000.sh
#   N=100 NIMBUS_BIN=target/debug/nimbus LOAD_BIN=target/debug/scale-load SKIP_BUILD=1 bench/sleep-1000.sh
#
# Env: N=1000 POOL (serve --instance-pool; default N + N/10, so that one function's fair share
# of the node, pool - pool/16, holds all N).
source "$(dirname "${BASH_SOURCE[0]}")/scaling-lib.sh"
N=${N:-1000}
POOL=${POOL:-$((N + N / 10))}

machine_line
start_server --instance-pool "$POOL" --max-concurrency "$((N > 1000 ? N : 1000))"
"$NIMBUS_BIN" deploy "$SLEEP_WASM" --name sleep --route /sleep --concurrency "$N" >/dev/null
curl -s -o /dev/null "$NIMBUS_URL/sleep?ms=1"
echo "RSS before: $(rss_mib VmRSS) MiB"
"$LOAD_BIN" --url "$NIMBUS_URL" concurrent --path "/sleep?ms=1000" --n "$N"
echo "RSS after: $(rss_mib VmRSS) MiB, peak RSS: $(rss_mib VmHWM) MiB (instance pool $POOL)"
