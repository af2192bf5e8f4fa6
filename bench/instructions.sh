#!/usr/bin/env bash
# Instructions per request: Nimbus, the bare wasmtime-wasi-http host, and the bare host with fuel
# and epochs, each serving the hello example under valgrind's callgrind. Instruction counts do not
# depend on how fast this shared machine is at the moment, so unlike req/s or CPU time they can
# tell a change of 1% apart in one run, and they say where the instructions went: the script
# prints the totals per request and a breakdown by crate (exclusive cost, grouped by the first
# path segment of each symbol; SQLite, the allocators and libc's mem* functions by name), Nimbus
# minus the bare host with fuel and epochs, largest differences first.
#
# Instructions are not time (cache misses, syscalls and the kernel are not counted; neither is
# wrk), and valgrind runs one thread at a time, so batches (invocation records) are smaller than
# at full speed. bench/interleaved.sh and bench/cpu-per-request.sh remain the measures of the
# goal; this one is for finding what to cut and for A/B of small changes (NIMBUS_B as there).
#
#   bench/instructions.sh        # after bench/run.sh (or SKIP_BUILD=0 to build first)
#
# Env: DURATION=20s (measured, after a 10 s warm-up) CONNECTIONS=8 TOP=30 (breakdown rows),
# NIMBUS_B=/path/to/another/nimbus (adds it as a fourth server), KEEP=DIR (keeps the profiles). Needs valgrind (apt-get install
# valgrind). The pooling allocators are shrunk to four instances for both hosts (the most valgrind can
# reserve address space for; the default pools need far more), which leaves Nimbus's fair share
# (pool - 1) above the requests valgrind keeps in flight, so none waits at the node gate.
set -euo pipefail
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-8}
TOP=${TOP:-30}
# shellcheck source=bench/hello-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/hello-lib.sh"
command -v valgrind > /dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }

work=$(mktemp -d -t nimbus-instructions.XXXXXX)
pid=
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# A profile per thread: the request path (tokio's two workers, the busiest threads) is told
# apart from background threads (the invocation recorder, pollers, the epoch ticker), whose
# share per request depends on how many requests valgrind lets through.
callgrind() { exec valgrind --tool=callgrind --smc-check=all-non-file --separate-threads=yes --callgrind-out-file="$work/$1.out" "${@:2}"; }

# profile NAME URL-PATH COMMAND...: start the server under callgrind, warm up, zero the counters,
# measure, dump; writes NAME.requests and NAME.out.1-NN (one per thread).
profile() {
    local name=$1 path=$2 port
    shift 2
    port=$(free_port)
    local cmd=("${@//@PORT@/$port}")
    case "$name" in
        nimbus*)
            NIMBUS_INSTANCE_POOL=4 NIMBUS_MAX_MEMORY=64MiB callgrind "$name" "${cmd[@]}" \
                --data "$work/data-$name" > "$work/$name.log" 2>&1 & ;;
        *) callgrind "$name" "${cmd[@]}" > "$work/$name.log" 2>&1 & ;;
    esac
    pid=$!
    local ready=http://127.0.0.1:$port/
    [[ "$name" == nimbus* ]] && ready=http://127.0.0.1:$port/healthz
    for _ in $(seq 1 300); do curl -s -o /dev/null -m 5 "$ready" && break; sleep 1; done
    if [[ "$name" == nimbus* ]]; then
        NIMBUS_URL="http://127.0.0.1:$port" NIMBUS_DATA="$work/data-$name" \
            "${cmd[0]}" deploy "$HELLO_WASM" --name hello --route /hello > /dev/null
    fi
    wrk -t1 -c"$CONNECTIONS" -d10s "http://127.0.0.1:$port$path" > /dev/null
    callgrind_control -z "$pid" > /dev/null
    local out
    out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port$path")
    callgrind_control -d "$pid" > /dev/null
    if [[ "$name" == nimbus* ]]; then
        # Requests that waited for a slot (admission or the node gate) count no instructions a
        # real run at this load would: say so if there were any.
        curl -s -H "Authorization: Bearer $(cat "$work/data-$name/admin-token")" \
            "http://127.0.0.1:$port/metrics" | awk -v n="$name" \
            '/^nimbus_queue_wait_seconds_count/ { w += $2 } END { if (w > 0) print n ": " w " requests waited for a slot" }'
    fi
    if grep -q "Non-2xx" <<< "$out"; then echo "$name: non-2xx responses" >&2; exit 1; fi
    grep -oE '[0-9]+ requests in' <<< "$out" | cut -d' ' -f1 > "$work/$name.requests"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, valgrind $(valgrind --version | cut -d- -f2), wrk -t1 -c$CONNECTIONS -d$DURATION after 10 s of warm-up"
profile nimbus /hello "$NIMBUS" serve --no-profile --listen 127.0.0.1:@PORT@
profile bare / "$BARE" --listen 127.0.0.1:@PORT@ --component "$HELLO_WASM" \
    --max-instances 4 --max-memory-bytes $((64 << 20))
profile bare-fuel / "$BARE" --listen 127.0.0.1:@PORT@ --component "$HELLO_WASM" \
    --max-instances 4 --max-memory-bytes $((64 << 20)) --fuel-and-epochs
names=(nimbus bare bare-fuel)
if [[ -n "${NIMBUS_B:-}" ]]; then
    profile nimbus-b /hello "$NIMBUS_B" serve --no-profile --listen 127.0.0.1:@PORT@
    names+=(nimbus-b)
fi
for n in "${names[@]}"; do
    for f in "$work/$n".out.1-*; do
        callgrind_annotate --threshold=100 "$f" > "$work/$n.t${f##*-}.txt"
    done
done
# KEEP=DIR keeps the profiles (for callgrind_annotate --inclusive=yes, or kcachegrind).
if [[ -n "${KEEP:-}" ]]; then mkdir -p "$KEEP" && cp "$work"/*.out.1-* "$work"/*.txt "$work"/*.requests "$KEEP"/; fi
python3 - "$work" "$TOP" "${names[@]}" <<'PY'
import collections, glob, re, sys
work, top, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
GROUPS = [
    (r"^(sqlite3|vdbe|btree|balance|wal|pager|pcache|yy|getPage|releaseMem|sqlite)", "sqlite"),
    (r"^_?mi_", "mimalloc"), (r"memset", "libc memset"), (r"memmove|memcpy", "libc memcpy"),
    (r"memcmp", "libc memcmp"), (r"pthread_mutex", "libc mutex"),
    (r"malloc|free|_int_|arena|unlink_chunk", "glibc malloc"), (r"^0x", "wasm (JIT code)"),
]
def load_thread(path):
    text = open(path).read()
    groups = collections.Counter()
    found = re.search(r"([\d,]+) \([\s\d.]+%\)\s+PROGRAM TOTALS", text)
    if not found or "file:function" not in text:
        return 0, groups  # a thread that ran nothing while measured
    total = int(found.group(1).replace(",", ""))
    body = text.split("file:function", 1)[1]
    for line in body.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        fn = m.group(2).split(":", 1)[-1].split(" [")[0].lstrip("<")
        key = next((g for pat, g in GROUPS if re.search(pat, fn)), None)
        if key is None:
            crate = re.match(r"(\w+)::", fn)
            key = crate.group(1) if crate else fn[:40]
        groups[key] += int(m.group(1).replace(",", ""))
    return total, groups
def load(name):
    reqs = int(open(f"{work}/{name}.requests").read())
    threads = sorted((load_thread(p) for p in glob.glob(f"{work}/{name}.t*.txt")), key=lambda t: -t[0])
    groups = collections.Counter()
    for _, g in threads:
        groups.update(g)
    total = sum(t for t, _ in threads)
    workers = sum(t for t, _ in threads[:2])
    return total / reqs, reqs, {k: v / reqs for k, v in groups.items()}, workers / reqs, (total - workers) / reqs
data = {n: load(n) for n in names}
for n in names:
    print(f"{n:10} {data[n][0]:9.0f} instructions per request ({data[n][1]} requests): "
          f"{data[n][3]:.0f} on the two busiest threads (the workers), {data[n][4]:.0f} on the others")
t = {n: data[n][0] for n in names}
print(f"ratio bare/nimbus {t['bare'] / t['nimbus']:.3f}, (bare+fuel+epochs)/nimbus {t['bare-fuel'] / t['nimbus']:.3f}; "
      f"fuel and epochs {t['bare-fuel'] - t['bare']:+.0f}, the platform beyond them {t['nimbus'] - t['bare-fuel']:+.0f} per request")
w = {n: data[n][3] for n in names}
print(f"workers only: bare/nimbus {w['bare'] / w['nimbus']:.3f}, (bare+fuel+epochs)/nimbus {w['bare-fuel'] / w['nimbus']:.3f}")
if "nimbus-b" in t:
    print(f"A/B: nimbus / nimbus-b {t['nimbus'] / t['nimbus-b']:.3f} ({t['nimbus'] - t['nimbus-b']:+.0f} per request); "
          f"workers only {w['nimbus'] / w['nimbus-b']:.3f} ({w['nimbus'] - w['nimbus-b']:+.0f} per request)")
# std/core frames are mostly closures that callgrind cannot place on the fibers' stacks, where it
# charges their callees' cost to them as well: leave them out of the breakdown.
skip = {"std", "core", "clone", "start_thread", "__rust_begin_short_backtrace"}
a, b = data["nimbus"][2], data["bare-fuel"][2]
keys = sorted((set(a) | set(b)) - skip, key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))[:top]
cols = ["nimbus", "bare-fuel"] + (["nimbus-b"] if "nimbus-b" in data else [])
print(f"\nexclusive instructions per request by crate, largest |nimbus - bare-fuel| first:")
print(f"{'group':28}" + "".join(f"{c:>11}" for c in cols) + f"{'nimbus-bare':>12}")
for k in keys:
    print(f"{k[:28]:28}" + "".join(f"{data[c][2].get(k, 0):11.0f}" for c in cols)
          + f"{a.get(k, 0) - b.get(k, 0):12.0f}")
PY
