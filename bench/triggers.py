#!/usr/bin/env python3
"""Event trigger figures (issue 9), against a real `nimbus serve` on loopback.

  triggers.py latency  --nimbus BIN --guest events.wasm [--n 300]
  triggers.py rate     --nimbus BIN --guest events.wasm [--n 10000] [--wrk-duration 10s]
  triggers.py crash    --nimbus BIN --guest events.wasm [--rounds 8] [--deadline 300]

The subscriber is the `events` test guest (crates/test-programs/guests/events), which prints
`started_us`, the wall clock when its handler started, into its invocation record.

* latency: one change at a time (an object upload through REST, or a document created through
  REST), then the time from the moment the client had the 2xx answer to the start of the
  subscribed function, read from the guest's own clock (same machine, same clock). Negative means
  the function had started before the answer reached the client (the event commits with the
  change, before the response is written).
* rate: N queue messages are dead-lettered by a subscriber that fails (max_attempts 1), the
  subscriber is redeployed to succeed, and all N are replayed at once: events/s = N / (time from
  the replay call until no delivery is pending). Against it, the same function's HTTP
  requests/s (wrk), both on the same server.
* crash: writers upload objects, create documents and publish queue messages while the server is
  killed with SIGKILL at random instants, ROUNDS times; then one last start, and every change
  that was acknowledged (a 2xx reached the client) must have had its event delivered (a
  `delivered` delivery, which is recorded only after the function answered 2xx). Exits 1 if any
  acknowledged change's event was not delivered, or if the run exceeds its deadline.

Standard library only, so that it runs wherever the test suite runs.
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Api:
    """One keep-alive connection. No retries: a request that fails is reported to the caller,
    which decides whether the change was acknowledged."""

    def __init__(self, port, token):
        self.port, self.token, self.conn = port, token, None

    def req(self, method, path, body=None, headers=None, timeout=30):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"authorization": "Bearer " + self.token}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["content-type"] = "application/json"
        h.update(headers or {})
        try:
            self.conn.request(method, path, body=body, headers=h)
            r = self.conn.getresponse()
            return r.status, r.read()
        except Exception:
            self.conn.close()
            self.conn = None
            raise

    def json(self, method, path, body=None, headers=None, expect=(200, 201, 202)):
        status, data = self.req(method, path, body, headers)
        if status not in expect:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None


class Server:
    def __init__(self, binary, data, extra=()):
        self.binary, self.data, self.extra = binary, data, list(extra)
        self.port = free_port()
        self.proc = None

    def start(self):
        log = open(os.path.join(os.path.dirname(self.data), "server.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--no-profile", "--data", self.data,
             "--listen", f"127.0.0.1:{self.port}", *self.extra],
            stdout=log, stderr=log, env={**os.environ, "NIMBUS_LOG": "warn"})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"nimbus serve exited with {self.proc.returncode}")
            time.sleep(0.05)
        else:
            raise RuntimeError("nimbus serve did not answer /healthz within 60 s")
        token = open(os.path.join(self.data, "admin-token")).read().strip()
        return Api(self.port, token)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def deploy(api, wasm, spec):
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n".encode()
        + json.dumps(spec).encode() + b"\r\n",
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"module\"; filename=\"m.wasm\"\r\n"
        "Content-Type: application/wasm\r\n\r\n".encode() + wasm + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return api.json("POST", "/v1/functions", b"".join(parts),
                    {"content-type": f"multipart/form-data; boundary={boundary}"})


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def machine():
    load = open("/proc/loadavg").read().split()[:3]
    return (f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} cores, "
            f"load {' '.join(load)}")


def last_seq(api, function):
    page = api.json("GET", f"/v1/invocations?function={function}&limit=1")
    recs = page["invocations"]
    return recs[0]["seq"] if recs else 0


def next_event_record(api, function, after, deadline_s=10):
    """The first record of `function` with a trigger stored after position `after`."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        page = api.json("GET", f"/v1/invocations?function={function}&after={after}&order=asc&limit=100")
        for r in page["invocations"]:
            after = max(after, r["seq"])
            if r["trigger"] != "http":
                return r, after
        time.sleep(0.002)
    raise RuntimeError(f"{function}: no delivery within {deadline_s} s")


def cmd_latency(args):
    wasm = open(args.guest, "rb").read()
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(args.nimbus, os.path.join(scratch, "data"))
        api = server.start()
        try:
            api.json("POST", "/v1/buckets", {"name": "lat"})
            api.json("POST", "/v1/collections", {"name": "lat"})
            deploy(api, wasm, {"name": "on-upload", "routes": ["/on-upload"],
                               "triggers": [{"kind": "storage", "bucket": "lat"}]})
            deploy(api, wasm, {"name": "on-doc", "routes": ["/on-doc"],
                               "triggers": [{"kind": "documents", "collection": "lat"}]})
            print(f"trigger latency, {args.n} sequential changes each; {machine()}")
            for label, function, change in [
                ("upload (REST PUT, 1 KiB)", "on-upload",
                 lambda i: api.req("PUT", f"/v1/projects/default/buckets/lat/objects/k{i}",
                                   b"x" * 1024, {"content-type": "application/octet-stream"})),
                ("document write (REST POST)", "on-doc",
                 lambda i: api.req("POST", "/v1/projects/default/collections/lat/documents",
                                   json.dumps({"n": i}).encode(),
                                   {"content-type": "application/json"})),
            ]:
                seq = last_seq(api, function)
                from_answer, from_send = [], []
                for i in range(args.warmup + args.n):
                    t0 = time.time_ns() // 1000
                    status, body = change(i)
                    t1 = time.time_ns() // 1000
                    if status not in (200, 201):
                        raise RuntimeError(f"{label}: {status} {body[:200]!r}")
                    rec, seq = next_event_record(api, function, seq)
                    started = json.loads(rec["stdout"].splitlines()[0])["started_us"]
                    if i >= args.warmup:
                        from_answer.append((started - t1) / 1000)
                        from_send.append((started - t0) / 1000)
                print(f"  {label}: change answered -> function started: p50 {pct(from_answer, 50):.2f} ms, "
                      f"p99 {pct(from_answer, 99):.2f} ms, max {max(from_answer):.2f} ms; "
                      f"request sent -> function started: p50 {pct(from_send, 50):.2f} ms, "
                      f"p99 {pct(from_send, 99):.2f} ms")
        finally:
            server.stop()


def wait_idle(api, function, want_dead=None, deadline_s=300, poll=0.05):
    """Poll the function's subscriptions until nothing is pending (and `want_dead` are dead)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        subs = [s for s in api.json("GET", "/v1/triggers")["subscriptions"]
                if function is None or s["function"] == function]
        pending = sum(s["pending"] for s in subs)
        dead = sum(s["dead"] for s in subs)
        if pending == 0 and (want_dead is None or dead == want_dead):
            return dead
        time.sleep(poll)
    raise RuntimeError(f"deliveries still pending after {deadline_s} s")


def publish_many(port, token, n, threads=8, queue="bench"):
    def worker(lo, hi):
        api = Api(port, token)
        for i in range(lo, hi):
            api.json("POST", f"/v1/queues/{queue}/messages", {"body": {"n": i}})
    step = (n + threads - 1) // threads
    ts = [threading.Thread(target=worker, args=(k * step, min(n, (k + 1) * step))) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# How often `rate` asks whether the replayed deliveries are done. Each ask is `GET /v1/triggers`,
# whose counts scan the pending and dead deliveries: at 100 asks a second over 5,000 pending
# ones, the asking took a large share of the two cores the deliveries needed (seen with
# callgrind, 2026-12-01). Ten a second costs ~0.1 s of resolution on a run of several seconds.
POLL = float(os.environ.get("RATE_POLL", "0.1"))


def cmd_rate(args):
    wasm = open(args.guest, "rb").read()
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(args.nimbus, os.path.join(scratch, "data"),
                        ["--max-pending-events", str(max(100000, args.n * 2))])
        api = server.start()
        try:
            trig = [{"kind": "queue", "queue": "bench", "max_attempts": 1}]
            spec = {"name": "noop", "routes": ["/noop"], "triggers": trig}
            deploy(api, wasm, {**spec, "env": {"STATUS": "500"}})
            publish_many(server.port, api.token, args.n)
            wait_idle(api, "noop", want_dead=args.n)
            deploy(api, wasm, spec)
            t0 = time.time()
            replayed = api.json("POST", "/v1/deliveries/replay?function=noop")["count"]
            wait_idle(api, "noop", want_dead=0, poll=POLL)
            elapsed = time.time() - t0
            assert replayed == args.n, replayed
            rate = args.n / elapsed
            wrk = subprocess.run(["wrk", "-t2", "-c16", f"-d{args.wrk_duration}",
                                  f"http://127.0.0.1:{server.port}/noop"],
                                 capture_output=True, text=True, check=True).stdout
            http_rate = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
            print(f"events/s vs HTTP, same function (`events` guest), {machine()}")
            print(f"  {args.n} queue events delivered in {elapsed:.2f} s: {rate:.0f} events/s")
            print(f"  HTTP, wrk -t2 -c16 -d{args.wrk_duration}: {http_rate:.0f} requests/s")
            print(f"  ratio events/HTTP: {rate / http_rate:.2f}")
        finally:
            server.stop()


def cmd_crash(args):
    wasm = open(args.guest, "rb").read()
    started = time.time()
    rng = random.Random(args.seed)
    scratch = tempfile.mkdtemp(prefix="nimbus-crash-")
    server = Server(args.nimbus, os.path.join(scratch, "data"),
                    ["--event-retry-base", "100ms", "--event-retry-max", "2s"])
    api = server.start()
    api.json("POST", "/v1/buckets", {"name": "crash"})
    api.json("POST", "/v1/collections", {"name": "crash"})
    for name, trig in [("sink-upload", {"kind": "storage", "bucket": "crash"}),
                       ("sink-doc", {"kind": "documents", "collection": "crash"}),
                       ("sink-queue", {"kind": "queue", "queue": "crash"})]:
        deploy(api, wasm, {"name": name, "routes": [f"/{name}"], "triggers": [trig]})
    acked = {"upload": set(), "document": set(), "queue": set()}
    attempted = {k: 0 for k in acked}
    lock = threading.Lock()

    def writer(kind, port, token, stop):
        w = Api(port, token)
        i = 0
        while not stop.is_set():
            i += 1
            tag = uuid.uuid4().hex[:12]
            with lock:
                attempted[kind] += 1
            try:
                if kind == "upload":
                    status, body = w.req("PUT", f"/v1/projects/default/buckets/crash/objects/{tag}",
                                         tag.encode(), {"content-type": "text/plain"}, timeout=5)
                    ident = tag
                elif kind == "document":
                    status, body = w.req("POST", "/v1/projects/default/collections/crash/documents",
                                         json.dumps({"tag": tag}).encode(),
                                         {"content-type": "application/json"}, timeout=5)
                    ident = json.loads(body)["id"] if status == 201 else None
                else:
                    status, body = w.req("POST", "/v1/queues/crash/messages",
                                         json.dumps({"body": {"tag": tag}}).encode(),
                                         {"content-type": "application/json"}, timeout=5)
                    ident = json.loads(body)["id"] if status == 202 else None
            except Exception:
                time.sleep(0.05)  # the server is down: try again once it is back
                continue
            if status in (200, 201, 202) and ident:
                with lock:
                    acked[kind].add(ident)

    for rnd in range(args.rounds):
        if time.time() - started > args.deadline:
            raise SystemExit(f"crash test: over its {args.deadline} s deadline in round {rnd}")
        stop = threading.Event()
        ws = [threading.Thread(target=writer, args=(k, server.port, api.token, stop)) for k in acked]
        for t in ws:
            t.start()
        time.sleep(rng.uniform(0.5, 2.0))
        server.kill9()
        stop.set()
        for t in ws:
            t.join()
        api = server.start()

    # Last start: let every pending delivery finish, then compare.
    remaining = max(10.0, args.deadline - (time.time() - started))
    dead = wait_idle(api, None, deadline_s=remaining, poll=0.2)
    delivered = {"upload": {}, "document": {}, "queue": {}}
    kind_of = {"sink-upload": "upload", "sink-doc": "document", "sink-queue": "queue"}
    after = 0
    while True:
        page = api.json("GET", f"/v1/deliveries?state=delivered&after={after}&limit=1000")["deliveries"]
        if not page:
            break
        for d in page:
            after = d["id"]
            kind = kind_of.get(d["function"])
            ev = d["event"]
            if kind == "upload" and not ev["type"].endswith("created"):
                continue
            if kind:
                delivered[kind][ev["subject"]] = max(delivered[kind].get(ev["subject"], 0), d["attempts"])
    server.stop()
    print(f"crash test: {args.rounds} kill -9 rounds in {time.time() - started:.0f} s; {machine()}")
    missing_total = 0
    for kind in acked:
        got = delivered[kind]
        missing = [x for x in acked[kind] if x not in got]
        missing_total += len(missing)
        retried = sum(1 for a in got.values() if a > 1)
        print(f"  {kind}: {attempted[kind]} attempted, {len(acked[kind])} acknowledged, "
              f"{len(got)} events delivered ({len(got) - len(acked[kind] & set(got))} of changes the "
              f"client saw no answer for), {retried} needed more than one attempt, "
              f"{len(missing)} acknowledged but not delivered")
    print(f"  dead letters: {dead}")
    if missing_total or dead:
        print("  FAILED: an acknowledged change's event was lost or dead-lettered")
        print(f"  data kept in {scratch}")
        raise SystemExit(1)
    shutil.rmtree(scratch, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["latency", "rate", "crash"])
    p.add_argument("--nimbus", required=True)
    p.add_argument("--guest", required=True, help="the events guest component")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--wrk-duration", default="10s")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--deadline", type=float, default=300)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    if args.mode == "latency":
        args.n = args.n or 300
        cmd_latency(args)
    elif args.mode == "rate":
        args.n = args.n or 10000
        cmd_rate(args)
    else:
        cmd_crash(args)


if __name__ == "__main__":
    main()
