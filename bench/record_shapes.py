#!/usr/bin/env python3
"""Instructions per invocation record for candidate shapes of the `invocations` table.

Each shape inserts the same N records (the hello benchmark's: one project, three functions, no
logs) in batches of 200, one transaction each, WAL and synchronous=NORMAL as Nimbus's store sets
them, in a process of its own under callgrind; the script prints the instructions per row beyond
a run that builds the rows and inserts nothing. Instruction counts are deterministic, so shapes
differ by what SQLite does, not by the machine's mood. Python's sqlite3 module binds the values
(its per-row cost is in every shape alike) and links the system's SQLite, not the bundled one
Nimbus is built with: read the differences between shapes, not the absolute numbers.

    python3 bench/record_shapes.py            # N=20000; needs valgrind
"""

import os
import re
import subprocess
import sys
import tempfile

COLS = (
    "seq INTEGER NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, function TEXT NOT NULL, "
    "version INTEGER NOT NULL, trig TEXT NOT NULL, started_at INTEGER NOT NULL, "
    "duration_us INTEGER NOT NULL, queue_us INTEGER NOT NULL, fuel INTEGER NOT NULL, "
    "peak INTEGER NOT NULL, status TEXT NOT NULL, http_status INTEGER, error TEXT, "
    "stdout TEXT NOT NULL, stderr TEXT NOT NULL, lt INTEGER NOT NULL, method TEXT NOT NULL, "
    "path TEXT NOT NULL, mem INTEGER NOT NULL, ob INTEGER NOT NULL"
)
PK = f"CREATE TABLE inv ({COLS}, PRIMARY KEY (project, seq)) STRICT, WITHOUT ROWID;"
UNIQUE_ID = "CREATE UNIQUE INDEX i1 ON inv (project, id);"
BY_FUNCTION = "CREATE INDEX i2 ON inv (project, function, seq);"
SHAPES = {
    "none (rows built, nothing inserted)": (None, None),
    "rowid table, no index": (f"CREATE TABLE inv ({COLS}) STRICT;", ""),
    "PK (project, seq) only": (PK, ""),
    "PK + (project, function, seq)": (PK + BY_FUNCTION, ""),
    "PK + UNIQUE (project, id)": (PK + UNIQUE_ID, "ON CONFLICT (project, id) DO NOTHING"),
    "Nimbus today: PK + both": (PK + UNIQUE_ID + BY_FUNCTION, "ON CONFLICT (project, id) DO NOTHING"),
    "today without ON CONFLICT": (PK + UNIQUE_ID + BY_FUNCTION, ""),
}


def child(shape, n, path):
    import random
    import sqlite3

    ddl, conflict = SHAPES[shape]
    random.seed(1)
    ids = [
        "019ad%03x-%04x-7%03x-8%03x-%012x"
        % (i >> 16 & 0xFFF, i & 0xFFFF, random.getrandbits(12), random.getrandbits(12),
           random.getrandbits(48))
        for i in range(n)
    ]
    rows = [
        (i + 1, ids[i], "default", ["hello", "world", "api"][i % 3], 1, "http",
         1764590000000 + i, 812, 3, 51234, 1114112, "ok", 200, None, "", "", 0, "GET", "/hello",
         64, 0)
        for i in range(n)
    ]
    if ddl is None:
        return
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.executescript(ddl)
    sql = f"INSERT INTO inv VALUES ({', '.join('?' * 21)}) {conflict}"
    for k in range(0, n, 200):
        c.execute("BEGIN IMMEDIATE")
        c.executemany(sql, rows[k : k + 200])
        c.execute("COMMIT")


def main():
    if len(sys.argv) == 4 and sys.argv[1] in SHAPES:
        return child(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    n = int(os.environ.get("N", "20000"))
    work = tempfile.mkdtemp(prefix="nimbus-record-shapes.")
    counts = {}
    for i, shape in enumerate(SHAPES):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.{i}",
             sys.executable, __file__, shape, str(n), f"{work}/{i}.db"],
            capture_output=True, text=True, check=True,
        ).stderr
        counts[shape] = int(re.search(r"Collected : (\d+)", out).group(1))
    base = counts.pop(next(iter(SHAPES)))
    sqlite_version = subprocess.run(
        [sys.executable, "-c", "import sqlite3; print(sqlite3.sqlite_version)"],
        capture_output=True, text=True).stdout.strip()
    print(f"{n} records in batches of 200, SQLite {sqlite_version}: instructions per record")
    for shape, count in counts.items():
        print(f"  {shape:30} {(count - base) / n:8.0f}")


if __name__ == "__main__":
    main()
