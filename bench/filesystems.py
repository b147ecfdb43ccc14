"""Branch time and disk growth of a ~1 GB template on each copy-on-write
path: btrfs snapshot (template is a subvolume), btrfs reflink (template is
a plain directory, e.g. restored before pg_branch), XFS reflink. Core's
FILE_COPY on the same filesystem is measured in the same run for scale.

Disk growth is the change in the filesystem's used bytes (statvfs, after
a sync) across the CREATE DATABASE; on btrfs also the branch's exclusive
bytes (`btrfs filesystem du`). RUNS branches per path, each dropped after.
"""

import os
import statistics
import subprocess
import time
from pathlib import Path

from harness import Cluster, exclusive_bytes

SCALE = int(os.environ.get("SCALE", "70"))
RUNS = int(os.environ.get("RUNS", "5"))


def used(path):
    """Used bytes of the filesystem, once freeing has settled (XFS and
    btrfs release the blocks of dropped files in the background)."""
    last = None
    for _ in range(100):
        subprocess.run(["sync", "-f", str(path)], check=True)
        st = os.statvfs(path)
        now = (st.f_blocks - st.f_bfree) * st.f_frsize
        if now == last:
            return now
        last = now
        time.sleep(0.3)
    return last


def run(c, template, label, strategy=""):
    times, growth, exclusive, methods = [], [], [], set()
    with c.connect() as conn:
        for _ in range(RUNS):
            before = used(c.data)
            t = time.perf_counter()
            conn.execute(f"CREATE DATABASE fs_bench TEMPLATE {template} {strategy}")
            times.append((time.perf_counter() - t) * 1000)
            conn.execute("CHECKPOINT")
            growth.append(used(c.data) - before)
            row = conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()
            methods.add(row[0] if row and not strategy else "core copy")
            if c.fs == "btrfs":
                oid = conn.execute("SELECT oid FROM pg_database WHERE datname = 'fs_bench'").fetchone()[0]
                exclusive.append(exclusive_bytes(c.data / "base" / str(oid)))
            conn.execute("DROP DATABASE fs_bench")
    size = c.one(f"SELECT pg_database_size('{template}')")
    ex = f"{statistics.median(exclusive) / 1024:.0f} kB" if exclusive else "n/a"
    print(f"{label:<34} {'/'.join(sorted(methods)):<10} template {size / 2**30:5.2f} GiB  "
          f"p50 {statistics.median(times):9.1f} ms  max {max(times):9.1f} ms  "
          f"disk growth p50 {statistics.median(growth) / 2**20:8.2f} MiB  exclusive p50 {ex}", flush=True)


def cluster(root, port, fs):
    c = Cluster(root, port).init().start()
    c.fs = fs
    c.sql("CREATE EXTENSION pg_branch")
    c.sql("CREATE DATABASE tpl")
    c.pgbench("-q", "-i", "-s", SCALE, "tpl")
    c.sql("CHECKPOINT")
    return c


def main():
    btrfs = Path(os.environ["PG_BRANCH_BENCH_DIR"])
    xfs = Path(os.environ["PG_BRANCH_BENCH_XFS"])
    print(f"pgbench scale {SCALE}, {RUNS} runs per path; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs\n")
    c = cluster(btrfs / "fs-btrfs", 5453, "btrfs")
    try:
        # The same data in a plain directory, as core copies it.
        c.sql("CREATE DATABASE tpl_plain TEMPLATE tpl STRATEGY wal_log")
        run(c, "tpl", "btrfs, template a subvolume")
        run(c, "tpl_plain", "btrfs, template a plain directory")
        run(c, "tpl", "btrfs, core FILE_COPY", "STRATEGY FILE_COPY")
    finally:
        c.stop(check=False)
        subprocess.run(["rm", "-rf", str(btrfs / "fs-btrfs")])
    c = cluster(xfs / "fs-xfs", 5454, "xfs")
    try:
        run(c, "tpl", "xfs (reflink=1)")
        run(c, "tpl", "xfs, core FILE_COPY", "STRATEGY FILE_COPY")
    finally:
        c.stop(check=False)
        subprocess.run(["rm", "-rf", str(xfs / "fs-xfs")])


if __name__ == "__main__":
    main()
