#!/usr/bin/env bash
# Nimbus vs the bare wasmtime-wasi-http host, interleaved: both servers run side by side (idle
# when not measured) and short wrk rounds alternate between them (which one goes first
# alternates too), so a change in the machine's speed during the run hits both alike. Prints
# each round's req/s and ratio, and the median ratio with its quartiles.
# This machine's speed swings by a third within minutes; bench/run.sh measures the servers one
# after the other, so its ratio can move with those swings.
#
#   bench/interleaved.sh                 # after bench/run.sh (or SKIP_BUILD=0 to build first)
#
# Env: ROUNDS=20 ROUND=3s WRK_THREADS=2 WRK_CONNECTIONS=50 BARE_ARGS=; extra env for `nimbus serve` can be
# passed as arguments: bench/interleaved.sh NIMBUS_LOG_BYTES=0
#
# A/B mode: NIMBUS_B=/path/to/another/nimbus compares two builds of Nimbus instead (B takes the
# bare host's place; the ratio is A / B). Build B from another commit with, for example,
#   git worktree add /tmp/b <commit> && (cd /tmp/b && cargo build --release -p nimbus-cli)
#   NIMBUS_B=/tmp/b/target/release/nimbus bench/interleaved.sh
set -euo pipefail
ROUNDS=${ROUNDS:-20}
ROUND=${ROUND:-3s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
# shellcheck source=bench/hello-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/hello-lib.sh"

work=$(mktemp -d -t nimbus-interleaved.XXXXXX)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NPORT=$(free_port)
BPORT=$(free_port)
env "$@" "$NIMBUS" serve --no-profile --data "$work/data" --listen "127.0.0.1:$NPORT" > "$work/nimbus.log" 2>&1 &
npid=$!
if [[ -n "${NIMBUS_B:-}" ]]; then
    env "$@" "$NIMBUS_B" serve --no-profile --data "$work/data-b" --listen "127.0.0.1:$BPORT" > "$work/bare.log" 2>&1 &
    B_NAME="nimbus B ($NIMBUS_B)"
else
    # BARE_ARGS=--fuel-and-epochs: the bare host with fuel metering and epoch interruption as
    # Nimbus configures them, to tell their cost apart from the rest of the platform's.
    # shellcheck disable=SC2086
    "$BARE" --listen "127.0.0.1:$BPORT" --component "$HELLO_WASM" ${BARE_ARGS:-} > "$work/bare.log" 2>&1 &
    B_NAME="bare host${BARE_ARGS:+ ($BARE_ARGS)}"
fi
bpid=$!
trap 'kill $npid $bpid 2>/dev/null || true; wait $npid $bpid 2>/dev/null || true; rm -rf "$work"' EXIT
B_READY="http://127.0.0.1:$BPORT/"
[[ -n "${NIMBUS_B:-}" ]] && B_READY="http://127.0.0.1:$BPORT/healthz"
for url in "http://127.0.0.1:$NPORT/healthz" "$B_READY"; do
    for _ in $(seq 1 100); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
done
NIMBUS_URL="http://127.0.0.1:$NPORT" NIMBUS_DATA="$work/data" \
    "$NIMBUS" deploy "$HELLO_WASM" --name hello --route /hello > /dev/null
if [[ -n "${NIMBUS_B:-}" ]]; then
    NIMBUS_URL="http://127.0.0.1:$BPORT" NIMBUS_DATA="$work/data-b" \
        "$NIMBUS_B" deploy "$HELLO_WASM" --name hello --route /hello > /dev/null
fi
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg): nimbus ($NIMBUS) vs $B_NAME"
rps() { wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$1" "$2" | awk '/Requests\/sec/ { print $2 }'; }
rps 2s "http://127.0.0.1:$NPORT/hello" > /dev/null
rps 2s "http://127.0.0.1:$BPORT/hello" > /dev/null
ratios=()
for i in $(seq 1 "$ROUNDS"); do
    # Which server goes first alternates, so that a machine speeding up or slowing down during
    # the run does not favour the one always measured first.
    if (( i % 2 )); then
        n=$(rps "$ROUND" "http://127.0.0.1:$NPORT/hello")
        b=$(rps "$ROUND" "http://127.0.0.1:$BPORT/hello")
    else
        b=$(rps "$ROUND" "http://127.0.0.1:$BPORT/hello")
        n=$(rps "$ROUND" "http://127.0.0.1:$NPORT/hello")
    fi
    r=$(python3 -c "print(f'{$n / $b:.3f}')")
    ratios+=("$r")
    echo "round $i: nimbus $n req/s, $B_NAME $b req/s, ratio $r"
done
# The quartiles show the spread: on this machine single rounds range over ±15%, and many short
# rounds give a steadier median than a few long ones.
python3 -c "
import statistics, sys
r = sorted(map(float, sys.argv[1:]))
q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
print(f'median ratio {statistics.median(r):.3f} over $ROUNDS rounds of $ROUND each (quartiles {q[0]:.3f} and {q[2]:.3f})')
" "${ratios[@]}"
