#!/usr/bin/env bash
# Deploy time with the compile cache, for the JavaScript (ComponentizeJS) and Python
# (componentize-py) hello worlds of crates/test-programs/foreign:
#   - the first deploy (empty compile cache: everything compiled),
#   - EDITS edited deploys (a one-line change of the user's code, rebuilt with the pinned
#     toolchain of scripts/build-foreign-guests.sh), median. A build takes ~20 s on 2 cores, so
#     VARIANTS distinct edits are built and cycled: edit i deploys variant ((i-1) % VARIANTS)+1
#     (a repeat of earlier content reuses its artifact and compiles nothing: reported apart),
#   - requests/s (wrk) after the first deploy and after the last edited deploy,
#   - the compile cache's size after the edits,
#   - a kill -9 of the server in the middle of a deploy, then a restart and a deploy,
#   - where the time of a deploy goes (the server's "deploy phases" debug event): SHA-256,
#     compile (parse, validate, Cranelift through the cache; cache read/write time summed over
#     the compile threads), link check, serialize, blob store write, artifact write, database,
#     load; for the first deploy and the median over the edits.
# Everything runs against a release `nimbus serve` on a temporary data directory.
#
# Usage: bench/deploy-cache.sh   (EDITS=20 VARIANTS=5 WRK_SECONDS=10 WRK_CONNECTIONS=16;
#        VARIANTS_DIR=dir keeps the built variants there and reuses them)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
edits="${EDITS:-20}"
variants="${VARIANTS:-5}"
wrk_seconds="${WRK_SECONDS:-10}"
wrk_connections="${WRK_CONNECTIONS:-16}"
target="${CARGO_TARGET_DIR:-$root/target}"
nimbus="$target/release/nimbus"

command -v wrk >/dev/null || { echo "wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
# Built unless present: a `-p nimbus-cli` build alone resolves features differently from the
# other harnesses' `-p nimbus-cli -p nimbus-bench` and would rebuild the whole release tree.
if [[ ! -x "$nimbus" ]]; then
    echo "# building the release binary" >&2
    CARGO_INCREMENTAL=0 cargo build --release --locked -p nimbus-cli -p nimbus-bench >&2
fi
scripts/build-foreign-guests.sh >&2

work="$(mktemp -d)"
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
data="$work/data"
variants_dir="${VARIANTS_DIR:-$work/variants}"

# Variants: the guest's source with its greeting changed (a one-line edit of user code).
echo "# building $variants edited variants of each guest (this takes a while)" >&2
for lang in js python; do
    case $lang in
        js) src=crates/test-programs/foreign/js-hello; file=app.js; from='Hello from JavaScript!' ;;
        python) src=crates/test-programs/foreign/python-hello; file=app.py; from='Hello from Python!' ;;
    esac
    for i in $(seq 1 "$variants"); do
        dir="$variants_dir/src/$lang-$i"
        [[ -f "$variants_dir/$lang-$i.wasm" ]] && continue
        mkdir -p "$dir"
        sed "s/$from/$from (edit $i)/" "$src/$file" > "$dir/$file"
        grep -q "(edit $i)" "$dir/$file"
        scripts/build-foreign-guests.sh --one "$lang" "$dir" "$variants_dir/$lang-$i.wasm" 2>/dev/null
    done
done

start_server() {
    : > "$work/serve.out"
    # JSON logs with nimbus_functions at debug: the "deploy phases" events below.
    NIMBUS_LOG_FORMAT=json NIMBUS_LOG="info,nimbus_functions=debug" \
        "$nimbus" serve --no-profile --listen 127.0.0.1:0 --data "$data" "$@" > "$work/serve.out" 2>> "$work/serve.log" &
    server_pid=$!
    for _ in $(seq 1 600); do
        url="$(sed -n 's/^nimbus listening on //p' "$work/serve.out" | head -1)"
        [[ -n "$url" ]] && return
        sleep 0.1
    done
    echo "server did not start; log:" >&2
    cat "$work/serve.log" >&2
    exit 1
}

now_ms() { date +%s%3N; }

# deploy WASM NAME ROUTE -> prints "ms cached compiled untranslated" (wall time of `nimbus deploy`)
deploy() {
    local t0 t1 out
    t0=$(now_ms)
    out="$("$nimbus" --url "$url" --data-dir "$data" --json deploy "$1" --name "$2" --route "$3")"
    t1=$(now_ms)
    # `compile` is null when these exact bytes were compiled before (an edit reverted to earlier
    # content): the artifact is reused and nothing is compiled; printed as "reused".
    python3 -c 'import json,sys; c=json.loads(sys.argv[2])["compile"]; print(sys.argv[1], *((c["cached_functions"], c["compiled_functions"], c.get("untranslated_functions")) if c else ("reused", "reused", "reused")))' \
        "$((t1 - t0))" "$out"
}
# A failed deploy inside `< <(...)` would not stop the script: check what was read.
check() { [[ -n "${ms:-}" && -n "${compiled:-}" ]] || { echo "deploy failed; log: $work/serve.log" >&2; tail -20 "$work/serve.log" >&2; exit 1; }; }

# The last "deploy phases" event of the server's log, as one JSON line.
last_phases() {
    python3 - "$work/serve.log" <<'PY'
import json, sys
last = None
for line in open(sys.argv[1], errors="replace"):
    try:
        f = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if f.get("message") == "deploy phases":
        last = f
print(json.dumps(last))
PY
}

# phases LABEL FILE: one line per phase, the median over the JSON lines of FILE.
phases() {
    python3 - "$1" "$2" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip() and l.strip() != "null"]
if not rows:
    print(f"{sys.argv[1]}: no deploy phases logged"); sys.exit()
med = lambda k: statistics.median(r.get(k, 0) for r in rows)
mib = lambda b: b / 1048576
print(f"{sys.argv[1]} phases (ms, median of {len(rows)}): total {med('total_ms'):.0f} = "
      f"sha {med('sha_ms'):.0f} + compile {med('compile_ms'):.0f} "
      f"[cache read {med('cache_read_ms'):.0f} of {mib(med('cache_read_bytes')):.0f} MiB, "
      f"cache write {med('cache_write_ms'):.0f}, summed over threads] + link {med('link_ms'):.0f} "
      f"+ serialize {med('serialize_ms'):.0f} ({mib(med('artifact_bytes')):.0f} MiB) "
      f"+ blob put {med('blob_put_ms'):.0f} + artifact write {med('artifact_write_ms'):.0f} "
      f"+ db {med('db_ms'):.0f} + load {med('load_ms'):.0f}")
PY
}

rps() {
    wrk -t2 -c"$wrk_connections" -d"${wrk_seconds}s" "$url$1" | awk '/Requests\/sec/ {print $2}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

# The reference: a deploy with the compile cache off (what every deploy cost before).
data="$work/data-nocache"
start_server --compile-cache-size 0
for lang in js python; do
    base=target/foreign-guests/$lang-hello.wasm
    t0=$(now_ms)
    "$nimbus" --url "$url" --data-dir "$data" --json deploy "$base" --name "$lang" --route "/$lang/..." > /dev/null
    echo "$lang: deploy with the compile cache off: $(($(now_ms) - t0)) ms" >> "$work/nocache.txt"
done
stop_server
data="$work/data"

start_server
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg)  edits: $edits ($variants distinct)  wrk: -t2 -c$wrk_connections -d${wrk_seconds}s"
for lang in js python; do
    case $lang in
        js) base=target/foreign-guests/js-hello.wasm; route=/js ;;
        python) base=target/foreign-guests/python-hello.wasm; route=/py ;;
    esac
    size=$(wc -c < "$base")
    ms=""; read -r ms cached compiled untranslated < <(deploy "$base" "$lang-hello" "$route/...")
    check
    grep "^$lang:" "$work/nocache.txt"
    echo "$lang: size $((size / 1024 / 1024)) MiB, first deploy ${ms} ms (cached_functions $cached, compiled_functions $compiled, untranslated_functions $untranslated)"
    last_phases > "$work/$lang.first-phases"
    phases "$lang: first deploy" "$work/$lang.first-phases"
    body="$(curl -fsS "$url$route/")"
    first_rps=$(rps "$route/")
    : > "$work/$lang.times"
    : > "$work/$lang.reused"
    : > "$work/$lang.phases"
    for i in $(seq 1 "$edits"); do
        v=$(( (i - 1) % variants + 1 ))
        ms=""; read -r ms cached compiled untranslated < <(deploy "$variants_dir/$lang-$v.wasm" "$lang-hello" "$route/...")
        check
        # Only edits that compiled count towards the median: a repeat of earlier content
        # reuses its artifact and would flatter it.
        if [[ "$compiled" == reused ]]; then
            echo "$ms" >> "$work/$lang.reused"
        else
            echo "$ms" >> "$work/$lang.times"
            last_phases >> "$work/$lang.phases"
        fi
        body="$(curl -fsS "$url$route/")"
        [[ "$body" == *"(edit $v)"* ]] || { echo "edit $i (variant $v) not live: $body" >&2; exit 1; }
        [[ $i == 1 || $i == "$edits" ]] &&
            echo "$lang: edit $i deployed in ${ms} ms (cached_functions $cached, compiled_functions $compiled, untranslated_functions $untranslated)"
    done
    edited_rps=$(rps "$route/")
    echo "$lang: edited deploy median $(median < "$work/$lang.times") ms, max $(sort -n "$work/$lang.times" | tail -1) ms over $(wc -l < "$work/$lang.times") edits that compiled"
    [[ -s "$work/$lang.reused" ]] &&
        echo "$lang: $(wc -l < "$work/$lang.reused") edits back to earlier content reused their artifact: median $(median < "$work/$lang.reused") ms"
    phases "$lang: edited deploy" "$work/$lang.phases"
    echo "$lang: requests/s after first deploy $first_rps, after edited deploy $edited_rps"
done
cache_bytes=$(du -sb "$data/compile-cache" | cut -f1)
entries=$(find "$data/compile-cache" -path "$data/compile-cache/tmp" -prune -o -type f -print | wc -l)
echo "compile cache after $edits edits ($variants distinct) of each: $((cache_bytes / 1024 / 1024)) MiB in $entries entries (bound: --compile-cache-size, default 1GiB)"

# kill -9 in the middle of a deploy (after the figures above), then a restart on that data.
"$nimbus" --url "$url" --data-dir "$data" --json deploy "$variants_dir/js-1.wasm" --name crash --route /crash/... > /dev/null &
deploy_pid=$!
sleep 0.3
kill -9 "$server_pid"
wait "$server_pid" 2>/dev/null || true
wait "$deploy_pid" 2>/dev/null || true
server_pid=""
t0=$(now_ms)
start_server
echo "after kill -9 mid-deploy: restart in $(($(now_ms) - t0)) ms, js answers: $(curl -fsS "$url/js/" | head -c 40)"
read -r ms cached compiled untranslated < <(deploy target/foreign-guests/js-hello.wasm js-hello "/js/...")
echo "after kill -9: deploy ${ms} ms (cached_functions $cached, compiled_functions $compiled), answers: $(curl -fsS "$url/js/" | head -c 40)"
