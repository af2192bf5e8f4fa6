"""A local Web Push service for Nimbus's tests and the fan-out benchmark.

It plays both ends a browser and its push service would: it makes subscriptions (a P-256 key
pair and a 16-byte auth secret each, endpoint http://127.0.0.1:<port>/push/<id>), and when Nimbus
POSTs a message to an endpoint it checks the VAPID header (RFC 8292: ES256 JWT verified with the
`k=` key via `cryptography`, audience, expiry, subject) and decrypts the body with the
subscription's private key (RFC 8291 via `http_ece`, the library pywebpush uses). Neither is the
code Nimbus sends with (web-push-native), so a pass is a real interoperability check.

Behaviours per subscription (`GET /new?behavior=`): `ok` (201), `gone` (410), `notfound` (404),
`busy` (429 with `Retry-After: 1` on the first attempt, then 201), `busydate` (429 with
`Retry-After` as an HTTP-date 2 s ahead on the first attempt, then 201), `busylong` (429 with
`Retry-After: 3600`, always), `fail5xx` (503 on the first attempt, then 201), `fail400` (400 on
the first attempt, then 201), `slow` (answers after 2 s).

Endpoints: `GET /new?behavior=`, `POST /new-many?n=&behavior=` (bench), `GET /received`
(every delivery, in order), `GET /stats`. Prints `PORT <n>` on stdout once listening.
Run with `--verify-every N` to check one message in N only (the benchmark: the checks are
Python and would otherwise be what is measured).
"""

import base64
import email.utils
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

LOCK = threading.Lock()
SUBS = {}  # id -> {"key": private key, "auth": bytes, "behavior": str, "attempts": int}
RECEIVED = []
STATS = {"delivered": 0, "verified": 0, "errors": 0, "answered": {}}
VERIFY_EVERY = 1
PORT = 0


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_sub(behavior):
    key = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    with LOCK:
        sid = str(len(SUBS) + 1)
        SUBS[sid] = {"key": key, "auth": auth, "behavior": behavior, "attempts": 0}
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "endpoint": f"http://127.0.0.1:{PORT}/push/{sid}",
        "keys": {"p256dh": b64u(public), "auth": b64u(auth)},
    }


def verify_vapid(header):
    """Checks `vapid t=<jwt>, k=<key>`; returns the JWT claims."""
    if not header.startswith("vapid "):
        raise ValueError(f"not a vapid authorization: {header[:40]!r}")
    params = dict(p.strip().split("=", 1) for p in header[len("vapid "):].split(","))
    token, k = params["t"], params["k"]
    head_b64, claims_b64, sig_b64 = token.split(".")
    head = json.loads(unb64u(head_b64))
    if head.get("alg") != "ES256":
        raise ValueError(f"alg {head.get('alg')}")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(k))
    sig = unb64u(sig_b64)
    if len(sig) != 64:
        raise ValueError("an ES256 JWS signature is 64 bytes")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    claims = json.loads(unb64u(claims_b64))
    now = time.time()
    if not (now < claims["exp"] <= now + 24 * 3600 + 60):
        raise ValueError(f"exp {claims['exp']} is not within 24 h from now")
    # RFC 8292: the origin of the push resource, port included (RFC 6454).
    if claims.get("aud") != f"http://127.0.0.1:{PORT}":
        raise ValueError(f"aud {claims.get('aud')!r}")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        raise ValueError(f"sub {claims.get('sub')!r}")
    return claims, k


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, value):
        self.reply(200, json.dumps(value).encode(), [("Content-Type", "application/json")])

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if url.path == "/new":
            self.reply_json(new_sub(q.get("behavior", ["ok"])[0]))
        elif url.path == "/received":
            with LOCK:
                self.reply_json(RECEIVED)
        elif url.path == "/stats":
            with LOCK:
                self.reply_json(STATS)
        else:
            self.reply(404)

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if url.path == "/new-many":
            q = parse_qs(url.query)
            n = int(q["n"][0])
            behavior = q.get("behavior", ["ok"])[0]
            self.reply_json([new_sub(behavior) for _ in range(n)])
            return
        if not url.path.startswith("/push/"):
            self.reply(404)
            return
        sid = url.path[len("/push/"):]
        with LOCK:
            sub = SUBS.get(sid)
            if sub is None:
                self.reply(404)
                return
            sub["attempts"] += 1
            attempt = sub["attempts"]
            STATS["delivered"] += 1
            n = STATS["delivered"]
        behavior = sub["behavior"]
        if behavior == "slow":
            time.sleep(2)
        record = {
            "sub": sid,
            "attempt": attempt,
            "time": time.time(),
            "ttl": self.headers.get("TTL"),
            "urgency": self.headers.get("Urgency"),
            "topic": self.headers.get("Topic"),
            "encoding": self.headers.get("Content-Encoding"),
        }
        if behavior == "gone":
            status, extra = 410, []
        elif behavior == "notfound":
            status, extra = 404, []
        elif behavior == "busy" and attempt == 1:
            status, extra = 429, [("Retry-After", "1")]
        elif behavior == "busydate" and attempt == 1:
            # RFC 9110's preferred IMF-fixdate; whole seconds, so the wait is between 1 and 2 s.
            status, extra = 429, [("Retry-After", email.utils.formatdate(time.time() + 2, usegmt=True))]
        elif behavior == "busylong":
            status, extra = 429, [("Retry-After", "3600")]
        elif behavior == "fail5xx" and attempt == 1:
            status, extra = 503, []
        elif behavior == "fail400" and attempt == 1:
            status, extra = 400, []
        else:
            status, extra = 201, [("Location", f"/messages/{sid}-{attempt}")]
        if status == 201 and (n % VERIFY_EVERY == 0 or VERIFY_EVERY == 1):
            try:
                if record["encoding"] != "aes128gcm":
                    raise ValueError(f"Content-Encoding {record['encoding']!r}")
                claims, k = verify_vapid(self.headers.get("Authorization", ""))
                payload = http_ece.decrypt(
                    body, private_key=sub["key"], auth_secret=sub["auth"], version="aes128gcm"
                )
                record.update(
                    verified=True,
                    payload=payload.decode("utf-8", "replace"),
                    aud=claims["aud"],
                    sub_claim=claims["sub"],
                    vapid_key=k,
                )
            except (ValueError, KeyError, InvalidSignature, Exception) as e:  # noqa: BLE001
                status, extra = 400, []
                record.update(verified=False, error=f"{type(e).__name__}: {e}")
        record["status"] = status
        with LOCK:
            if record.get("verified"):
                STATS["verified"] += 1
            if record.get("verified") is False:
                STATS["errors"] += 1
            STATS["answered"][str(status)] = STATS["answered"].get(str(status), 0) + 1
            if VERIFY_EVERY == 1:
                RECEIVED.append(record)
        self.reply(status, b"", extra)


def main():
    global PORT, VERIFY_EVERY
    if "--verify-every" in sys.argv:
        VERIFY_EVERY = int(sys.argv[sys.argv.index("--verify-every") + 1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    PORT = server.server_address[1]
    print(f"PORT {PORT}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
