#!/usr/bin/env bash
# Issue 10 figure (c): a quiet function called at QUIET_RATE (50) req/s for three phases of
# PHASE seconds; in the middle phase a noisy one is hit at NOISY_RATE (2000) req/s, open loop
# (scale-load: each request sent on schedule whatever the answers' speed). Prints the quiet
# function's latency percentiles before, during and after the burst, and what the noisy one got.
# Both are the hello example; the generator runs on the same machine (2 cores: it takes CPU).
#
#   bench/burst.sh
#   NOISY_RATE=200 PHASE=3 NIMBUS_BIN=target/debug/nimbus LOAD_BIN=target/debug/scale-load SKIP_BUILD=1 bench/burst.sh
source "$(dirname "${BASH_SOURCE[0]}")/scaling-lib.sh"
QUIET_RATE=${QUIET_RATE:-50}
NOISY_RATE=${NOISY_RATE:-2000}
PHASE=${PHASE:-10}

machine_line
start_server
"$NIMBUS_BIN" deploy "$HELLO_WASM" --name quiet --route /quiet >/dev/null
"$NIMBUS_BIN" deploy "$HELLO_WASM" --name noisy --route /noisy >/dev/null
"$LOAD_BIN" --url "$NIMBUS_URL" burst --quiet /quiet --noisy /noisy \
    --quiet-rate "$QUIET_RATE" --noisy-rate "$NOISY_RATE" --phase "$PHASE"
echo "node queue now: $(metric nimbus_node_queue_length); peak RSS $(rss_mib VmHWM) MiB"
