"""Driver of bench/push-fanout.sh: register, send once, wait, print the figures."""
import http.client
import json
import sys
import time
from urllib.parse import urlparse

nimbus, token, push_service, subs, pid = sys.argv[1:6]
subs = int(subs)


def conn(url):
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def call(c, method, path, body=None, auth=True):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data) if data else None


def status(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) // 1024
    return -1


n, ps = conn(nimbus), conn(push_service)
t0 = time.time()
made = 0
while made < subs:
    batch = min(1000, subs - made)
    for sub in call(ps, "POST", f"/new-many?n={batch}", auth=False):
        sub["topics"] = ["bench"]
        call(n, "POST", "/v1/push/subscriptions", sub)
    made += batch
print(f"registered {subs} subscriptions in {time.time() - t0:.1f} s", file=sys.stderr)
rss_before = status("VmRSS")
start = time.time()
sent = call(n, "POST", "/v1/push/messages", {"to": {"topic": "bench"}, "payload": "fan-out"})
assert sent["deliveries"] == subs, sent
while True:
    m = call(n, "GET", f"/v1/push/messages/{sent['id']}")
    if m["deliveries"]["queued"] == 0:
        break
    time.sleep(0.02)
elapsed = time.time() - start
stats = call(ps, "GET", "/stats", auth=False)
d = m["deliveries"]
print(f"push fan-out: {subs} subscriptions, one message to topic `bench`")
print(f"  all delivered (none queued) after {elapsed:.2f} s "
      f"({subs / elapsed:.0f} deliveries/s); sent={d['sent']} failed={d['failed']} "
      f"expired={d['expired']}")
print(f"  push service answered {stats['answered']}; verified {stats['verified']} "
      f"(1 in N decrypted + VAPID-checked), errors {stats['errors']}")
print(f"  nimbus RSS: {rss_before} MiB before the send, {status('VmRSS')} MiB after; "
      f"peak (VmHWM, whole run) {status('VmHWM')} MiB")
