"""CREATE DATABASE latency: pg_branch against core, idle and under load.

One cluster on btrfs; a pgbench template `tpl` and a separate database
`loaddb`. For each scenario (idle; pgbench -c 4 writing to loaddb), RUNS
timed CREATE DATABASE ... TEMPLATE tpl for each method, interleaved so
that every method sees the same conditions, each followed by an untimed
DROP DATABASE:

  pg_branch                  the default (own WAL record, waits for a checkpoint to start)
  pg_branch, wal_record=core core's record, waits for a whole checkpoint (as FILE_COPY)
  core FILE_COPY             STRATEGY FILE_COPY
  core WAL_LOG               STRATEGY WAL_LOG (the default since PostgreSQL 15)
  core FILE_COPY, clone      PostgreSQL 18+: STRATEGY FILE_COPY with file_copy_method = clone
                             (core's own reflink copy; its FILE_COPY row then sets
                             file_copy_method = copy explicitly)

PG_BIN selects the server (bench/run.sh sets it from PG_VERSION).
"""

import os
import statistics
import subprocess
import time
from pathlib import Path

from harness import PG_BIN, Cluster, pct

SCALE = int(os.environ.get("SCALE", "70"))
RUNS = int(os.environ.get("RUNS", "20"))

METHODS = [
    ("pg_branch", "SET pg_branch.wal_record = pg_branch", ""),
    ("pg_branch, wal_record=core", "SET pg_branch.wal_record = core", ""),
    ("core FILE_COPY", "SELECT 1", "STRATEGY FILE_COPY"),
    ("core WAL_LOG", "SELECT 1", "STRATEGY WAL_LOG"),
]


CLONE_METHODS = [
    ("core FILE_COPY", "SET file_copy_method = copy", "STRATEGY FILE_COPY"),
    ("core FILE_COPY, clone", "SET file_copy_method = clone", "STRATEGY FILE_COPY"),
]


def methods(c):
    """METHODS, plus core's clone strategy where the server has it (18+)."""
    if c.one("SELECT current_setting('server_version_num')::int") < 180000:
        return METHODS
    return [m for m in METHODS if m[0] != "core FILE_COPY"] + CLONE_METHODS


def measure(c):
    times = {name: [] for name, _, _ in methods(c)}
    with c.connect() as conn:
        for n in range(RUNS):
            for name, setting, strategy in methods(c):
                conn.execute(setting)
                t = time.perf_counter()
                conn.execute(f"CREATE DATABASE bench_copy TEMPLATE tpl {strategy}")
                times[name].append((time.perf_counter() - t) * 1000)
                conn.execute("DROP DATABASE bench_copy")
    return times


def main():
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "latency"
    c = Cluster(root, 5451, extra_conf="shared_buffers = 1GB\nmax_wal_size = 4GB\n").init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        for db, scale in (("tpl", SCALE), ("loaddb", 10)):
            c.sql(f"CREATE DATABASE {db}")
            c.pgbench("-q", "-i", "-s", scale, db)
        size = c.one("SELECT pg_size_pretty(pg_database_size('tpl'))")
        c.sql("CHECKPOINT")
        results = {"idle": measure(c)}
        load = subprocess.Popen(["sudo", "-u", "postgres", PG_BIN / "pgbench", "-n", "-c", "4", "-j", "2", "-T", "3600",
                                 "-h", c.sock, "-p", str(c.port), "-U", "postgres", "loaddb"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)
            results["pgbench -c 4 on another database"] = measure(c)
        finally:
            load.terminate()
            load.wait()
        version = c.one("SHOW server_version")
        print(f"\nPostgreSQL {version}: CREATE DATABASE ... TEMPLATE tpl ({size}, pgbench scale {SCALE}); "
              f"{RUNS} runs per method and scenario, interleaved; milliseconds\n")
        for scenario, times in results.items():
            base = statistics.median(times["pg_branch"])
            print(f"  {scenario}")
            print(f"    {'method':30} {'p50':>9} {'p99':>9} {'max':>9} {'p50 vs pg_branch':>17}")
            for name, _, _ in methods(c):
                v = times[name]
                print(f"    {name:30} {pct(v, 50):9.1f} {pct(v, 99):9.1f} {max(v):9.1f} "
                      f"{statistics.median(v) / base:16.1f}x")
            print()
    finally:
        c.stop(check=False)


if __name__ == "__main__":
    main()
