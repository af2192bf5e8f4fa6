#!/usr/bin/env python3
"""Time migration 15 (invocation rows -> segments) on a large version-14 database.

Builds a database with migrations 1-14 taken verbatim from
crates/nimbus-store-local/src/migrations.rs, fills `invocations` with ROWS records shaped like a
busy node's (several projects and functions, one record per few ms, short logs on some), and
times migration 15's SQL in one transaction, with the pragmas Nimbus's store sets (WAL,
synchronous=NORMAL). Python's sqlite3 module runs the SQL, not the SQLite that rusqlite bundles:
the figure is for the SQL, on this machine's SQLite (printed).

    python3 bench/migration-15.py [ROWS] [DIR]     # defaults: 1000000, a temporary directory
"""
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="nimbus-migration-15.")

source = open(os.path.join(ROOT, "crates/nimbus-store-local/src/migrations.rs")).read()
body = source[source.index("const MIGRATIONS: &[&str] = &["):]
body = body[: body.index("\n];\n")]
migrations = re.findall(r'r#"(.*?)"#', body, re.S)
assert len(migrations) >= 15, f"found {len(migrations)} migrations"

path = os.path.join(work, "nimbus.db")
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
for sql in migrations[:14]:
    conn.executescript(sql)
conn.execute("PRAGMA user_version=14")

t0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC
projects = ["default", "shop", "blog", "acme"]
functions = [f"fn{i}" for i in range(8)]
statuses = ["ok"] * 18 + ["trap", "timeout"]


def record(i):
    p = projects[i % len(projects)]
    f = functions[(i // 7) % len(functions)]
    status = statuses[i % len(statuses)]
    return (
        i + 1, f"0193{i:028x}", p, f, 1 + i % 3, "http", t0 + i * 3, 900 + i % 5000, i % 50,
        150_000 + i % 100_000, 1_179_648, status, 200 if status == "ok" else None,
        None if status == "ok" else f"wasm trap: {status}", "log line\n" if i % 10 == 0 else "",
        "", 0, "GET", f"/api/items/{i % 1000}", 128, 0,
    )


start = time.perf_counter()
conn.execute("BEGIN")
conn.executemany(
    'INSERT INTO invocations (seq, id, project, function, version, "trigger", started_at, '
    "duration_us, queue_us, fuel, peak_memory_bytes, status, http_status, error, stdout, stderr, "
    "logs_truncated, method, path, memory_limit_mb, outbound_bytes) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    (record(i) for i in range(rows)),
)
conn.execute("COMMIT")
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
filled = time.perf_counter() - start
size = os.path.getsize(path)

start = time.perf_counter()
# One transaction, as `migrate` applies it.
conn.executescript("BEGIN IMMEDIATE;\n" + migrations[14] + "\nPRAGMA user_version=15;\nCOMMIT;")
took = time.perf_counter() - start
segments = conn.execute("SELECT count(*), sum(len) FROM invocation_segments").fetchone()
print(
    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
    f"SQLite {sqlite3.sqlite_version}: {rows} rows ({size / 2**20:.0f} MiB, filled in {filled:.1f} s); "
    f"migration 15 took {took:.1f} s ({took / rows * 1e6:.1f} us per row) -> "
    f"{segments[0]} segments holding {segments[1]} records"
)
assert segments[1] == rows, "every row became a record of a segment"
conn.close()
if len(sys.argv) <= 2:
    shutil.rmtree(work)
