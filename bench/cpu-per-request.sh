#!/usr/bin/env bash
# Server CPU per request: Nimbus, the bare wasmtime-wasi-http host, the bare host with fuel and
# epochs as Nimbus sets them (`--fuel-and-epochs`), and that with its guests on a runtime of
# their own as Nimbus runs them (`--guest-runtime`), serving the hello example. Short wrk
# rounds alternate between the servers (all running, idle when not measured; which goes first
# rotates); each round reads the server's user+system CPU time from /proc/PID/stat before and
# after, and divides by the requests wrk completed. CPU per request does not depend on how fast the machine is at the
# moment as much as req/s does, and it splits the overhead: (bare+fuel - bare) is the cost of
# metering and timeouts in Wasmtime, (guest runtime - bare+fuel) the cost of running guests on
# threads of their own (what a Nimbus guest pays when it moves to the guest pool; one that
# answers at once, like hello, stays on its caller's task), (Nimbus - bare+fuel) the platform.
#
#   bench/cpu-per-request.sh         # after bench/run.sh (or SKIP_BUILD=0 to build first)
#
# Env: ROUNDS=6 ROUND=4s WRK_THREADS=2 WRK_CONNECTIONS=50.
set -euo pipefail
ROUNDS=${ROUNDS:-6}
ROUND=${ROUND:-4s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
# shellcheck source=bench/hello-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/hello-lib.sh"

work=$(mktemp -d -t nimbus-cpu.XXXXXX)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NPORT=$(free_port); BPORT=$(free_port); FPORT=$(free_port); GPORT=$(free_port)
"$NIMBUS" serve --no-profile --data "$work/data" --listen "127.0.0.1:$NPORT" > "$work/nimbus.log" 2>&1 &
npid=$!
"$BARE" --listen "127.0.0.1:$BPORT" --component "$HELLO_WASM" > "$work/bare.log" 2>&1 &
bpid=$!
"$BARE" --listen "127.0.0.1:$FPORT" --component "$HELLO_WASM" --fuel-and-epochs > "$work/fuel.log" 2>&1 &
fpid=$!
"$BARE" --listen "127.0.0.1:$GPORT" --component "$HELLO_WASM" --fuel-and-epochs --guest-runtime > "$work/guest.log" 2>&1 &
gpid=$!
trap 'kill $npid $bpid $fpid $gpid 2>/dev/null || true; wait $npid $bpid $fpid $gpid 2>/dev/null || true; rm -rf "$work"' EXIT
for url in "http://127.0.0.1:$NPORT/healthz" "http://127.0.0.1:$BPORT/" "http://127.0.0.1:$FPORT/" "http://127.0.0.1:$GPORT/"; do
    for _ in $(seq 1 100); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
done
NIMBUS_URL="http://127.0.0.1:$NPORT" NIMBUS_DATA="$work/data" \
    "$NIMBUS" deploy "$HELLO_WASM" --name hello --route /hello > /dev/null

tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# measure NAME PID URL -> one line "NAME req/s us-per-request"
measure() {
    local t0 t1 out
    t0=$(cpu_ticks "$2")
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$ROUND" "$3")
    t1=$(cpu_ticks "$2")
    python3 - "$1" "$t0" "$t1" "$tck" "$out" <<'PY'
import re, sys
name, t0, t1, tck, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
reqs = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if non2xx:
    sys.exit(f"{name}: {non2xx.group(1)} non-2xx responses")
print(name, f"{rps:.0f}", f"{(t1 - t0) / tck / reqs * 1e6:.1f}")
PY
}
for url in "http://127.0.0.1:$NPORT/hello" "http://127.0.0.1:$BPORT/" "http://127.0.0.1:$FPORT/" "http://127.0.0.1:$GPORT/"; do
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d1s "$url" > /dev/null # warm-up
done
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $ROUNDS rounds of $ROUND per server, wrk -t$WRK_THREADS -c$WRK_CONNECTIONS"
: > "$work/rows"
for i in $(seq 1 "$ROUNDS"); do
    # Which server goes first rotates from round to round, so that none is always measured
    # right after the same one, or at the same point of the machine's swings.
    for k in 0 1 2 3; do
        case $(( (i + k) % 4 )) in
            0) n=$(measure nimbus "$npid" "http://127.0.0.1:$NPORT/hello") ;;
            1) b=$(measure bare "$bpid" "http://127.0.0.1:$BPORT/") ;;
            2) f=$(measure bare+fuel+epochs "$fpid" "http://127.0.0.1:$FPORT/") ;;
            3) g=$(measure +guest-runtime "$gpid" "http://127.0.0.1:$GPORT/") ;;
        esac
    done
    printf '%s\n%s\n%s\n%s\n' "$n" "$b" "$f" "$g" >> "$work/rows"
    fmt() { echo "$1" | awk '{print $1" "$2" req/s "$3" us/req"}'; }
    echo "round $i: $(fmt "$n"); $(fmt "$b"); $(fmt "$f"); $(fmt "$g")"
done
python3 - "$work/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = lambda name, i: statistics.median(float(r[i]) for r in rows if r[0] == name)
n, b, f, g = (med(x, 2) for x in ("nimbus", "bare", "bare+fuel+epochs", "+guest-runtime"))
print(f"median server CPU per request: nimbus {n:.1f} us, bare {b:.1f} us, "
      f"bare+fuel+epochs {f:.1f} us, +guest-runtime {g:.1f} us")
print(f"  fuel and epochs: {f - b:+.1f} us; the platform beyond them: {n - f:+.1f} us; "
      f"(guests on a runtime of their own would cost {g - f:+.1f} us)")
print(f"  CPU ratio bare/nimbus {b / n:.3f}, (bare+fuel+epochs)/nimbus {f / n:.3f}")
print(f"median req/s: nimbus {med('nimbus', 1):.0f}, bare {med('bare', 1):.0f}, "
      f"bare+fuel+epochs {med('bare+fuel+epochs', 1):.0f}, +guest-runtime {med('+guest-runtime', 1):.0f}")
PY
