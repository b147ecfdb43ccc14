"""The ProcessUtility hook's overhead on statements pg_branch does not handle.

Two clusters of the same version, started together: stock, and with
pg_branch preloaded. One session on each runs N (default 100 000)
`SET work_mem = ...` and N `CREATE TEMP TABLE ... ON COMMIT DROP`, each its
own statement and transaction, one round trip each over the Unix socket.
The two sessions take turns in chunks of CHUNK statements so that both see
the same machine; the time of each kind is summed per cluster. Prints the
time per statement on each and the ratio pg_branch / stock.

    sudo bench/run.sh hook-overhead            (N=20000 for a quick look)

PG_BIN selects the server (bench/run.sh sets it from PG_VERSION).
"""

import os
import time
from pathlib import Path

from harness import PG_BIN, Cluster

N = int(os.environ.get("N", "100000"))
CHUNK = int(os.environ.get("CHUNK", "5000"))

KINDS = [
    ("SET", lambda i: f"SET work_mem = '{4 + i % 4}MB'"),
    ("CREATE TEMP TABLE ... ON COMMIT DROP", lambda i: "CREATE TEMP TABLE hook_t (a int) ON COMMIT DROP"),
]


def main():
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "hook_overhead"
    conf = "fsync = off\nsynchronous_commit = off\n"
    clusters = {
        "stock": Cluster(root / "stock", 5520, preload=False, extra_conf=conf).init().start(),
        "pg_branch": Cluster(root / "pg_branch", 5521, extra_conf=conf).init().start(),
    }
    version = clusters["stock"].one("SHOW server_version")
    try:
        conns = {name: c.connect() for name, c in clusters.items()}
        totals = {(name, kind): 0.0 for name in clusters for kind, _ in KINDS}
        for kind, make in KINDS:
            # Warm up each session's caches (catalog, plan) first.
            for conn in conns.values():
                for i in range(200):
                    conn.execute(make(i))
            done = 0
            while done < N:
                n = min(CHUNK, N - done)
                # Alternate which session goes first.
                order = list(conns.items())
                if (done // CHUNK) % 2:
                    order.reverse()
                for name, conn in order:
                    t0 = time.perf_counter()
                    for i in range(done, done + n):
                        conn.execute(make(i))
                    totals[(name, kind)] += time.perf_counter() - t0
                done += n
        for conn in conns.values():
            conn.close()
    finally:
        for c in clusters.values():
            c.stop(check=False)

    print(f"PostgreSQL {version} ({PG_BIN}), {N} statements of each kind, one session per cluster,")
    print(f"taking turns every {CHUNK}:")
    print(f"{'statement':40} {'stock':>12} {'pg_branch':>12} {'ratio':>8}")
    for kind, _ in KINDS:
        s, b = totals[("stock", kind)], totals[("pg_branch", kind)]
        print(f"{kind:40} {s / N * 1e6:9.1f} µs {b / N * 1e6:9.1f} µs {b / s:8.3f}")
        print(f"{'  (total)':40} {s:10.2f} s {b:10.2f} s")


if __name__ == "__main__":
    main()
