#!/usr/bin/env bash
# Two builds of Nimbus side by side, serving the hello example: per round, each one's req/s and
# its CPU per request split into tokio's two workers (the two busiest threads: the request path)
# and all its other threads (the recorder's thread, the epoch ticker, the blocking pool). Short
# wrk rounds alternate between the two (which goes first alternates too); each reads the
# threads' user+system time from /proc/PID/task/*/stat before and after. CPU per request moves
# less with this machine's speed than req/s does, and the split tells the request path from the
# work done beside it.
#
#   bench/threads-ab.sh /path/to/nimbus-A /path/to/nimbus-B
#
# Build B from another commit with, for example,
#   git worktree add /tmp/b <commit> && (cd /tmp/b && cargo build --release -p nimbus-cli)
# Env: ROUNDS=8 ROUND=4s WRK_THREADS=2 WRK_CONNECTIONS=50.
set -euo pipefail
A=${1:?usage: bench/threads-ab.sh NIMBUS_A NIMBUS_B}
B=${2:?usage: bench/threads-ab.sh NIMBUS_A NIMBUS_B}
ROUNDS=${ROUNDS:-8}
ROUND=${ROUND:-4s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
# shellcheck source=bench/hello-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/hello-lib.sh"

work=$(mktemp -d -t nimbus-threads-ab.XXXXXX)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
APORT=$(free_port)
BPORT=$(free_port)
"$A" serve --no-profile --data "$work/a" --listen "127.0.0.1:$APORT" > "$work/a.log" 2>&1 &
apid=$!
"$B" serve --no-profile --data "$work/b" --listen "127.0.0.1:$BPORT" > "$work/b.log" 2>&1 &
bpid=$!
trap 'kill $apid $bpid 2>/dev/null || true; wait $apid $bpid 2>/dev/null || true; rm -rf "$work"' EXIT
for side in "a $APORT $A" "b $BPORT $B"; do
    read -r name port bin <<< "$side"
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    NIMBUS_URL="http://127.0.0.1:$port" NIMBUS_DATA="$work/$name" \
        "$bin" deploy "$HELLO_WASM" --name hello --route /hello > /dev/null
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d2s "http://127.0.0.1:$port/hello" > /dev/null
done
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg): A ($A) vs B ($B)"

ticks() { for t in /proc/"$1"/task/*; do echo "$(basename "$t") $(awk '{print $14 + $15}' "$t/stat")"; done; }
# One round against PID on PORT: prints "req/s workers-us others-us".
round() {
    ticks "$1" > "$work/t0"
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$ROUND" "http://127.0.0.1:$2/hello")
    ticks "$1" > "$work/t1"
    python3 - "$work/t0" "$work/t1" "$(echo "$out" | awk '/requests in/ {print $1}')" \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" <<'PY'
import os, sys
before = dict(line.split() for line in open(sys.argv[1]))
after = dict(line.split() for line in open(sys.argv[2]))
n = int(sys.argv[3])
us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
spent = sorted((int(v) - int(before.get(k, 0)) for k, v in after.items()), reverse=True)
print(sys.argv[4], sum(spent[:2]) * us_per_tick / n, sum(spent[2:]) * us_per_tick / n)
PY
}
rows=()
for i in $(seq 1 "$ROUNDS"); do
    if (( i % 2 )); then
        read -r ra wa oa < <(round $apid "$APORT"); read -r rb wb ob < <(round $bpid "$BPORT")
    else
        read -r rb wb ob < <(round $bpid "$BPORT"); read -r ra wa oa < <(round $apid "$APORT")
    fi
    printf "round %d: A %.0f req/s, workers %.1f us, others %.2f us | B %.0f req/s, workers %.1f us, others %.2f us\n" \
        "$i" "$ra" "$wa" "$oa" "$rb" "$wb" "$ob"
    rows+=("$ra $wa $oa $rb $wb $ob")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin]
med = lambda i: statistics.median(r[i] for r in rows)
ratio = statistics.median(r[0] / r[3] for r in rows)
print(f"medians over {len(rows)} rounds: A workers {med(1):.1f} us, others {med(2):.2f} us | "
      f"B workers {med(4):.1f} us, others {med(5):.2f} us per request; req/s ratio A/B {ratio:.3f}")
'
