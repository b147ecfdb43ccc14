"""Branching a template while pgbench writes to it.

Two pgbench runs of the same length on the template, 4 clients each: one
alone, one while a loop makes BRANCHES branches of the template. Prints the
writer pause per branch (the fence: from "every writer has finished" to
"the clone and its WAL record exist"), how long each branch waited for
writers, total CREATE DATABASE time, and pgbench's TPS and maximum latency
in both runs.
"""

import os
import re
import tempfile
import threading
import time
from pathlib import Path

from harness import Cluster, pct

SCALE = int(os.environ.get("SCALE", "20"))
SECONDS = int(os.environ.get("SECONDS_PER_RUN", "60"))
BRANCHES = int(os.environ.get("BRANCHES", "100"))


def measured_load(cluster, seconds, logdir):
    """Run pgbench on `tpl`; return (tps, max latency ms, failed)."""
    out = cluster.pgbench("-c", "4", "-j", "2", "-T", seconds, "-l", "--log-prefix", f"{logdir}/tx", "tpl").stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out)
    latencies = []
    for log in Path(logdir).glob("tx*"):
        for line in log.read_text().splitlines():
            latencies.append(int(line.split()[2]) / 1000.0)  # microseconds -> ms
        log.unlink()
    return tps, max(latencies), int(failed.group(1)) if failed else 0


def main():
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "live-template"
    c = Cluster(root, 5450, extra_conf="shared_buffers = 1GB\nmax_wal_size = 4GB\n")
    c.init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE tpl")
        c.pgbench("-q", "-i", "-s", SCALE, "tpl")
        size = c.one("SELECT pg_size_pretty(pg_database_size('tpl'))")
        logdir = tempfile.mkdtemp(dir=root)
        os.chown(logdir, *(lambda s: (s.st_uid, s.st_gid))(os.stat(c.data)))

        c.sql("CHECKPOINT")
        alone = measured_load(c, SECONDS, logdir)

        c.sql("CHECKPOINT")
        stats = []
        result = {}
        load = threading.Thread(target=lambda: result.setdefault("run", measured_load(c, SECONDS, logdir)))
        load.start()
        time.sleep(2)
        # Spread the branches evenly over the run, leaving 4 s at the end.
        interval = (SECONDS - 6) / BRANCHES
        start = time.time()
        with c.connect() as conn:
            for n in range(BRANCHES):
                if not load.is_alive():
                    break
                conn.execute(f"CREATE DATABASE b{n} TEMPLATE tpl")
                stats.append(conn.execute(
                    "SELECT fence_ms, fence_wait_ms, sync_ms, clone_ms, checkpoint_ms, total_ms "
                    "FROM pgbranch.last_branch()").fetchone())
                time.sleep(max(0.0, start + (n + 1) * interval - time.time()))
        load.join()
        with_branches = result["run"]

        fence, wait, sync, clone, ckpt, total = (list(x) for x in zip(*stats))
        print(f"\npg_branch live-template benchmark: template tpl ({size}, pgbench scale {SCALE}), "
              f"pgbench -c 4 -j 2 -T {SECONDS} on the template\n")
        print(f"{len(stats)} branches made while pgbench wrote to their template\n")
        print(f"  {'per branch (ms)':28} {'p50':>9} {'p99':>9} {'max':>9}")
        for name, v in [("writers paused (fence)", fence), ("waiting for writers", wait),
                        ("sync before the fence", sync), ("clone", clone),
                        ("checkpoint after branch", ckpt), ("CREATE DATABASE total", total)]:
            print(f"  {name:28} {pct(v, 50):9.2f} {pct(v, 99):9.2f} {max(v):9.2f}")
        print(f"\n  {'pgbench on the template':28} {'TPS':>9} {'max latency ms':>15} {'failed':>7}")
        print(f"  {'alone':28} {alone[0]:9.0f} {alone[1]:15.1f} {alone[2]:7d}")
        print(f"  {'while branching':28} {with_branches[0]:9.0f} {with_branches[1]:15.1f} {with_branches[2]:7d}")
        print(f"\n  TPS while branching: {100 * with_branches[0] / alone[0]:.1f} % of TPS alone")
    finally:
        c.stop(check=False)


if __name__ == "__main__":
    main()
