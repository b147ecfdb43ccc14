"""What a fork of a whole cluster costs (pg_branch fork), against
pg_basebackup of the same cluster to the same filesystem, in the same run.

One cluster on btrfs. For each pgbench scale in SIZES (70: about 1 GB,
350: about 5 GB): a database `app` loaded by pgbench (a plain directory)
and a branch of it (a subvolume), so the cluster is that size once and
holds both kinds of database directory. Then, idle and under a pgbench
load on `app` (4 clients), RUNS forks each: the command's wall time until
the fork's data directory is complete, and the fork's exclusive bytes
(`btrfs filesystem du`: blocks no other file shares) right after it; and
one fork started with --start (until it accepts connections, recovery
included). Against that, pg_basebackup -X stream -c fast of the same
cluster into the same filesystem: its time and its bytes, once idle and
once under load. The ratio is pg_basebackup's time over the fork's p50.

PG_BIN selects the server (bench/run.sh sets it from PG_VERSION).
"""

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from harness import PG_BIN, Cluster, as_postgres, exclusive_bytes

SIZES = [int(s) for s in os.environ.get("SIZES", "70 350").split()]
RUNS = max(1, int(os.environ.get("RUNS", "5")))


def remove(path):
    """A fork or a backup. As root, rmdir(2) removes an empty subvolume too."""
    shutil.rmtree(path, ignore_errors=True)


def fork_once(c, target, *more):
    dsn = f"host={c.sock} port={c.port} user=postgres"
    t = time.perf_counter()
    as_postgres(PG_BIN / "pg_branch", "fork", "--source-dsn", dsn, "--target", target, "--port", str(c.port + 1), *more)
    return (time.perf_counter() - t) * 1000


def basebackup_once(c, target):
    t = time.perf_counter()
    as_postgres(PG_BIN / "pg_basebackup", "-D", target, "-X", "stream", "-c", "fast", "-h", c.sock, "-p", c.port,
                "-U", "postgres")
    ms = (time.perf_counter() - t) * 1000
    out = subprocess.run(["du", "-sb", target], check=True, capture_output=True, text=True).stdout
    return ms, int(out.split()[0])


def measure(c, root, label, gb):
    target = root / "fork"
    times, extra = [], []
    for _ in range(RUNS):
        remove(target)
        times.append(fork_once(c, target))
        extra.append(exclusive_bytes(target))
    remove(target)
    fork_once(c, target)
    f = Cluster(root, c.port + 1)
    f.data, f.sock = target, c.sock
    t = time.perf_counter()
    f.start()
    started_ms = (time.perf_counter() - t) * 1000
    f.stop()
    remove(target)
    backup = root / "basebackup"
    remove(backup)
    bb_ms, bb_bytes = basebackup_once(c, backup)
    remove(backup)
    p50 = statistics.median(times)
    print(f"{gb:>5.2f} {label:>6} | {p50:>8.0f} {max(times):>7.0f} {statistics.median(extra) / 1024:>9.0f} | "
          f"{started_ms:>11.0f} | {bb_ms:>10.0f} {bb_bytes / 2**30:>8.2f} | {bb_ms / p50:>5.0f}x", flush=True)


def main():
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "fork"
    c = Cluster(root / "source", 5470, extra_conf="max_wal_size = 8GB\ncheckpoint_timeout = 1h\n").init().start()
    shutil.chown(root, "postgres", "postgres")
    try:
        c.sql("CREATE EXTENSION pg_branch")
        print(f"{'GB':>5} {'load':>6} | {'fork p50':>8} {'max':>7} {'extra kB':>9} | {'fork+start':>11} | "
              f"{'basebackup':>10} {'GB':>8} | ratio  (ms; {RUNS} forks each)")
        for scale in SIZES:
            c.sql("DROP DATABASE IF EXISTS app_branch")
            c.sql("DROP DATABASE IF EXISTS app")
            c.sql("CREATE DATABASE app STRATEGY FILE_COPY")
            c.pgbench("-q", "-i", "-s", scale, "app")
            c.sql("CREATE DATABASE app_branch TEMPLATE app")
            c.sql("CHECKPOINT")
            gb = float(c.one("SELECT sum(pg_database_size(oid)) FROM pg_database WHERE datname <> 'app_branch'")) / 1e9
            measure(c, root, "idle", gb)
            load = c.pgbench("-n", "-c", "4", "-j", "2", "-T", "36000", "app", background=True)
            try:
                time.sleep(3)  # the load is under way; not part of any figure
                measure(c, root, "pgbench", gb)
            finally:
                load.terminate()
                load.communicate()
    finally:
        c.stop(check=False)


if __name__ == "__main__":
    main()
