#!/usr/bin/env bash
# File storage benchmark (issue 8): prints a Markdown section to paste into docs/benchmarks.md.
#
#   bench/files.sh                 # builds the release binary if missing
#
# 1. Large object throughput: PUT and GET of a LARGE_MIB object through REST (curl) and through
#    the S3 endpoint (boto3, one stream, no multipart), against `dd conv=fsync` writing and
#    reading the same amount on the same disk.
# 2. 4 KiB objects: PUT and GET per second at concurrency 64 (wrk + Lua, REST).
# 3. Memory: the server's peak RSS (VmHWM) idle, then after streaming a STREAM_MIB object up and
#    down through REST.
#
# Knobs: LARGE_MIB=1024 STREAM_MIB=2048 WRK_DURATION=10s WRK_CONNECTIONS=64 BENCH_DIR=<scratch>
# Needs: curl, wrk, python3 with boto3, dd.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LARGE_MIB=${LARGE_MIB:-1024}
STREAM_MIB=${STREAM_MIB:-2048}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NIMBUS=${NIMBUS_BIN:-$TARGET_DIR/release/nimbus}
if [[ ! -x $NIMBUS ]]; then
  CARGO_INCREMENTAL=0 cargo build --release --locked -p nimbus-cli -p nimbus-bench >&2
fi
SCRATCH=${BENCH_DIR:-$(mktemp -d "$ROOT/target/bench-files.XXXXXX")}
mkdir -p "$SCRATCH"
DATA=$SCRATCH/data
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n ${BENCH_DIR:-} ]] || rm -rf "$SCRATCH"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(port); S3_PORT=$(port)
NIMBUS_LOG=warn "$NIMBUS" serve --no-profile --data "$DATA" --listen "127.0.0.1:$HTTP_PORT" \
  --s3-listen "127.0.0.1:$S3_PORT" >"$SCRATCH/server.out" 2>"$SCRATCH/server.log" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$DATA/admin-token")
API="http://127.0.0.1:$HTTP_PORT"
AUTH=(-H "authorization: Bearer $TOKEN")
JSON=(-H "content-type: application/json")
curl -sf "${AUTH[@]}" "${JSON[@]}" -X POST "$API/v1/buckets" -d '{"name":"bench"}' >/dev/null
KEYS=$(curl -sf "${AUTH[@]}" "${JSON[@]}" -X POST "$API/v1/s3-keys" -d '{"name":"bench"}')
export AWS_ACCESS_KEY_ID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["access_key_id"])' "$KEYS")
export AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["secret_access_key"])' "$KEYS")
OBJ="$API/v1/projects/default/buckets/bench/objects"

mibps() { python3 -c "print(f'{$1 / $2:.0f}')"; }   # MiB, seconds
now() { date +%s.%N; }
elapsed() { python3 -c "print($(now) - $1)"; }

echo "## File storage ($(date -u +%Y-%m-%d), 2 cores, \`bench/files.sh\`)"
echo
# --- 1. large objects -------------------------------------------------------------------------
SRC=$SCRATCH/src.bin
head -c $((LARGE_MIB << 20)) /dev/urandom >"$SRC"
sync
T=$(now); dd if=/dev/zero of="$SCRATCH/dd.bin" bs=1M count="$LARGE_MIB" conv=fsync status=none; DD_W=$(elapsed "$T")
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
T=$(now); dd if="$SCRATCH/dd.bin" of=/dev/null bs=1M status=none; DD_R=$(elapsed "$T")
rm -f "$SCRATCH/dd.bin"

T=$(now); curl -sf "${AUTH[@]}" -X PUT -H 'content-type: application/octet-stream' \
  -T "$SRC" "$OBJ/large.bin" >/dev/null; REST_W=$(elapsed "$T")
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
T=$(now); curl -sf "${AUTH[@]}" "$OBJ/large.bin" -o /dev/null; REST_R=$(elapsed "$T")

read -r S3_W S3_R S3_MP < <(python3 - "$S3_PORT" "$SRC" <<'PY'
import sys, time, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path",
                                "payload_signing_enabled": False}))
t = time.time()
with open(sys.argv[2], "rb") as f:
    s3.put_object(Bucket="bench", Key="large-s3.bin", Body=f)
w = time.time() - t
t = time.time()
body = s3.get_object(Bucket="bench", Key="large-s3.bin")["Body"]
while body.read(1 << 20):
    pass
r = time.time() - t
# A multipart upload as `aws s3 cp` and boto3's upload_file do it (8 MiB parts, 10 at a time):
# each part is hashed on its own stream, so MD5 (one core per stream) is no longer the bound.
from boto3.s3.transfer import TransferConfig
t = time.time()
s3.upload_file(sys.argv[2], "bench", "large-mp.bin", Config=TransferConfig())
print(w, r, time.time() - t)
PY
)
echo "Large object, $LARGE_MIB MiB, one stream (MiB/s; share of dd on the same disk):"
echo
echo "| | write | read |"
echo "|---|---|---|"
echo "| \`dd conv=fsync\` | $(mibps "$LARGE_MIB" "$DD_W") | $(mibps "$LARGE_MIB" "$DD_R") |"
echo "| REST (curl) | $(mibps "$LARGE_MIB" "$REST_W") ($(python3 -c "print(f'{100*$DD_W/$REST_W:.0f}')")%) | $(mibps "$LARGE_MIB" "$REST_R") ($(python3 -c "print(f'{100*$DD_R/$REST_R:.0f}')")%) |"
echo "| S3 (boto3) | $(mibps "$LARGE_MIB" "$S3_W") ($(python3 -c "print(f'{100*$DD_W/$S3_W:.0f}')")%) | $(mibps "$LARGE_MIB" "$S3_R") ($(python3 -c "print(f'{100*$DD_R/$S3_R:.0f}')")%) |"
echo "| S3 multipart (boto3 upload_file, 8 MiB parts, 10 in flight) | $(mibps "$LARGE_MIB" "$S3_MP") ($(python3 -c "print(f'{100*$DD_W/$S3_MP:.0f}')")%) | |"
echo
rm -f "$SRC"

# --- 2. 4 KiB objects at concurrency 64 -------------------------------------------------------
head -c 4096 /dev/urandom >"$SCRATCH/4k.bin"
cat >"$SCRATCH/put.lua" <<LUA
local n = 0
local body = io.open("$SCRATCH/4k.bin", "rb"):read("*a")
wrk.method = "PUT"
wrk.body = body
wrk.headers["authorization"] = "Bearer $TOKEN"
wrk.headers["content-type"] = "application/octet-stream"
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/projects/default/buckets/bench/objects/small/" .. math.random(1, 1000000000) .. "-" .. n)
end
LUA
for i in $(seq 0 99); do curl -sf "${AUTH[@]}" -X PUT --data-binary "@$SCRATCH/4k.bin" "$OBJ/get/$i" >/dev/null; done
cat >"$SCRATCH/get.lua" <<LUA
wrk.headers["authorization"] = "Bearer $TOKEN"
request = function()
  return wrk.format("GET", "/v1/projects/default/buckets/bench/objects/get/" .. math.random(0, 99))
end
LUA
PUT_OUT=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" -s "$SCRATCH/put.lua" "$API")
GET_OUT=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" -s "$SCRATCH/get.lua" "$API")
rps() { awk '/Requests\/sec/ {print $2}' <<<"$1"; }
lat() { awk '/Latency/ {print $2 " avg, " $4 " max"}' <<<"$1"; }
errs() { awk '/Non-2xx|Socket errors/ {print}' <<<"$1" | tr '\n' ' '; }
echo "4 KiB objects over REST, $WRK_CONNECTIONS connections, $WRK_DURATION (wrk):"
echo
echo "| | requests/s | latency | errors |"
echo "|---|---|---|---|"
echo "| PUT (new keys) | $(rps "$PUT_OUT") | $(lat "$PUT_OUT") | $(errs "$PUT_OUT") |"
echo "| GET | $(rps "$GET_OUT") | $(lat "$GET_OUT") | $(errs "$GET_OUT") |"
echo

# --- 3. memory while streaming a large object up and down ------------------------------------
hwm() { awk '/VmHWM/ {print $2}' "/proc/$SERVER/status"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
IDLE=$(rss)
# Reset the peak (VmHWM) to the current RSS, so that it measures this round trip alone.
echo 5 >"/proc/$SERVER/clear_refs" 2>/dev/null || true
head -c $((STREAM_MIB << 20)) /dev/zero | curl -sf "${AUTH[@]}" -X PUT -T - \
  -H 'content-type: application/octet-stream' "$OBJ/stream.bin" >/dev/null
curl -sf "${AUTH[@]}" "$OBJ/stream.bin" -o /dev/null
PEAK=$(hwm)
echo "Memory while a $STREAM_MIB MiB object streams up (curl -T -, no length) and down: RSS before" \
  "$((IDLE / 1024)) MiB, peak during (VmHWM after resetting it) $((PEAK / 1024)) MiB:" \
  "$(((PEAK - IDLE) / 1024)) MiB over idle."
