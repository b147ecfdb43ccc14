"""What a branch costs while a base backup runs, against core, in one run.

While a backup runs, pg_branch also writes the branch into WAL page by page
(src/backup.rs), as core's WAL_LOG strategy writes every new database. One
cluster on btrfs, a pgbench template `tpl` (SCALE); RUNS timed CREATE
DATABASE ... TEMPLATE tpl per row, interleaved, each followed by an untimed
DROP DATABASE; the backup is a session holding pg_backup_start:

  pg_branch, no backup       the fast path: snapshot, no pages in WAL
  pg_branch, during backup   snapshot, then every page as a full-page image
  core WAL_LOG               STRATEGY WAL_LOG (core's default), no backup
  core FILE_COPY             STRATEGY FILE_COPY, no backup

Prints the median milliseconds and WAL bytes of each, and the ratios.
PG_BIN selects the server (bench/run.sh sets it from PG_VERSION).
"""

import os
import statistics
import time
from pathlib import Path

from harness import Cluster

SCALE = int(os.environ.get("SCALE", "70"))
RUNS = int(os.environ.get("RUNS", "5"))

ROWS = [
    ("pg_branch, no backup", False, ""),
    ("pg_branch, during backup", True, ""),
    ("core WAL_LOG", False, "STRATEGY WAL_LOG"),
    ("core FILE_COPY", False, "STRATEGY FILE_COPY"),
]


def main():
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "during-backup"
    c = Cluster(root, 5452, extra_conf="shared_buffers = 1GB\nmax_wal_size = 8GB\n").init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE tpl")
        c.pgbench("-q", "-i", "-s", SCALE, "tpl")
        size = c.one("SELECT pg_size_pretty(pg_database_size('tpl'))")
        c.sql("CHECKPOINT")
        ms = {name: [] for name, _, _ in ROWS}
        wal = {name: [] for name, _, _ in ROWS}
        logged = {}
        with c.connect() as conn, c.connect() as backup:
            for _ in range(RUNS):
                for name, during, strategy in ROWS:
                    if during:
                        backup.execute("SELECT pg_backup_start('bench', true)")
                    start = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
                    t = time.perf_counter()
                    conn.execute(f"CREATE DATABASE bench_copy TEMPLATE tpl {strategy}")
                    ms[name].append((time.perf_counter() - t) * 1000)
                    wal[name].append(conn.execute("SELECT (pg_current_wal_insert_lsn() - %s::pg_lsn)::float8",
                                                  (start,)).fetchone()[0])
                    if not strategy:
                        logged[name] = conn.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone()[0]
                    if during:
                        backup.execute("SELECT pg_backup_stop(false)")
                    conn.execute("DROP DATABASE bench_copy")
        version = c.one("SHOW server_version")
        print(f"\nPostgreSQL {version}: CREATE DATABASE ... TEMPLATE tpl ({size}, pgbench scale {SCALE}); "
              f"{RUNS} runs per row, interleaved; medians\n")
        base = statistics.median(ms["pg_branch, no backup"])
        wal_log = statistics.median(ms["core WAL_LOG"])
        print(f"  {'method':26} {'ms':>9} {'WAL MB':>9} {'pages logged':>13} {'vs no backup':>13} {'vs WAL_LOG':>11}")
        for name, _, _ in ROWS:
            m = statistics.median(ms[name])
            w = statistics.median(wal[name]) / 1e6
            pages = logged.get(name, "")
            print(f"  {name:26} {m:9.1f} {w:9.1f} {pages!s:>13} {m / base:12.1f}x {m / wal_log:10.2f}x")
        print()
    finally:
        c.stop(check=False)


if __name__ == "__main__":
    main()
