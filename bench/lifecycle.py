"""What managing branches costs: the registry record per branch, reading
the registry, setting an expiry, branch_size() / cluster_size() and
diverged().

One cluster on btrfs. For each pgbench scale in SIZES (70: about 1 GB,
350: about 5 GB) a template is loaded, then RUNS branches are made of it,
each timed, with last_branch()'s record_ms (writing the registry record)
and total_ms; the record's share of the branch is their ratio, measured in
the same statements. Core's FILE_COPY is timed once per size for scale.
Then, with those RUNS branches in place: SELECT * FROM pgbranch.branches,
set_expiry(), diverged() of an untouched branch, branch_size() and
diverged() of one branch after an UPDATE of 1 % of its accounts,
branch_size() of the template, and cluster_size().

Reset in place: RESETS times, a branch whose accounts were updated (1 %)
is reset to the template with pgbranch.reset(), timed, against what a
user does without it in the same run: DROP DATABASE and CREATE DATABASE
... TEMPLATE again (a new OID, settings and grants lost), by pg_branch and
by core's FILE_COPY. Printed as a second table after the first.

PG_BIN selects the server (bench/run.sh sets it from PG_VERSION).
"""

import os
import statistics
import time
from pathlib import Path

from harness import Cluster, pct

SIZES = [int(s) for s in os.environ.get("SIZES", "70 350").split()]
RUNS = max(4, int(os.environ.get("RUNS", "50")))
RESETS = int(os.environ.get("RESETS", "5"))


def timed(c, sql, dbname="postgres"):
    start = time.perf_counter()
    rows = c.sql(sql, dbname=dbname)
    return (time.perf_counter() - start) * 1000, rows


def main():
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "lifecycle"
    c = Cluster(root, 5460, extra_conf="max_wal_size = 8GB\ncheckpoint_timeout = 1h\n").init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        print(f"{'scale':>5} {'GB':>5} | {'branch p50':>10} {'p99':>7} {'record p50':>10} {'p99':>6} {'share':>6} | "
              f"{'core FILE_COPY':>14} | {'branches':>8} {'set_expiry':>10} | {'diverged, idle':>14} {'rows':>4} | "
              f"{'branch_size':>11} {'diverged':>8} {'rows':>4} {'of template':>11} {'cluster_size':>12}  (ms)")
        resets = []
        for scale in SIZES:
            c.sql("DROP DATABASE IF EXISTS tpl")
            c.sql("CREATE DATABASE tpl")
            c.pgbench("-q", "-i", "-s", scale, "tpl")
            c.sql("CHECKPOINT")
            gb = c.one("SELECT pg_database_size('tpl')") / 1e9
            totals, records = [], []
            with c.connect() as conn:
                for i in range(RUNS):
                    conn.execute(f"CREATE DATABASE lc_{i} TEMPLATE tpl")
                    total, record = conn.execute("SELECT total_ms, record_ms FROM pgbranch.last_branch()").fetchone()
                    totals.append(total)
                    records.append(record)
            share = statistics.median(r / t for r, t in zip(records, totals))
            core_ms, _ = timed(c, "CREATE DATABASE lc_core TEMPLATE tpl STRATEGY FILE_COPY")
            c.sql("DROP DATABASE lc_core")
            view_ms, rows = timed(c, "SELECT * FROM pgbranch.branches")
            assert len(rows) >= RUNS
            expiry_ms, _ = timed(c, "SELECT pgbranch.set_expiry('lc_0', '1 day')")
            idle_ms, idle = timed(c, "SELECT * FROM pgbranch.diverged('lc_1')")
            c.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0", dbname="lc_0")
            c.sql("CHECKPOINT")
            size_ms, _ = timed(c, "SELECT * FROM pgbranch.branch_size('lc_0')")
            diverged_ms, diverged = timed(c, "SELECT * FROM pgbranch.diverged('lc_0')")
            assert "public.pgbench_accounts" in {r[0] for r in diverged}, diverged
            tpl_ms, _ = timed(c, "SELECT * FROM pgbranch.branch_size('tpl')")
            cluster_ms, _ = timed(c, "SELECT * FROM pgbranch.cluster_size()")
            print(f"{scale:>5} {gb:>5.2f} | {statistics.median(totals):>10.1f} {pct(totals, 99):>7.1f} "
                  f"{statistics.median(records):>10.3f} {pct(records, 99):>6.3f} {share:>6.1%} | {core_ms:>14.0f} | "
                  f"{view_ms:>8.1f} {expiry_ms:>10.1f} | {idle_ms:>14.0f} {len(idle):>4} | {size_ms:>11.0f} {diverged_ms:>8.0f} "
                  f"{len(diverged):>4} {tpl_ms:>11.0f} {cluster_ms:>12.0f}",
                  flush=True)
            reset, recreate, core = [], [], []
            touch = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 1"
            for _ in range(RESETS):
                c.sql(touch, dbname="lc_2")
                reset.append(timed(c, "SELECT pgbranch.reset('lc_2')")[0])
                c.sql(touch, dbname="lc_3")
                recreate.append(timed(c, "DROP DATABASE lc_3")[0] + timed(c, "CREATE DATABASE lc_3 TEMPLATE tpl")[0])
            assert c.one("SELECT reset_count FROM pgbranch.branches WHERE name = 'lc_2'") == RESETS
            for _ in range(min(RESETS, 2)):
                c.sql(touch, dbname="lc_3")
                core.append(timed(c, "DROP DATABASE lc_3")[0]
                            + timed(c, "CREATE DATABASE lc_3 TEMPLATE tpl STRATEGY FILE_COPY")[0])
            resets.append((scale, gb, reset, recreate, core))
            for i in range(RUNS):
                c.sql(f"DROP DATABASE lc_{i}")
        print(f"\n{'scale':>5} {'GB':>5} | {'reset p50':>9} {'max':>7} | {'DROP+CREATE (pg_branch) p50':>27} | "
              f"{'DROP+CREATE (core FILE_COPY) p50':>32} {'ratio':>6}  (ms, {RESETS} resets)")
        for scale, gb, reset, recreate, core in resets:
            r = statistics.median(reset)
            print(f"{scale:>5} {gb:>5.2f} | {r:>9.1f} {max(reset):>7.1f} | {statistics.median(recreate):>27.1f} | "
                  f"{statistics.median(core):>32.0f} {statistics.median(core) / r:>5.0f}x", flush=True)
    finally:
        c.stop(check=False)


if __name__ == "__main__":
    main()
