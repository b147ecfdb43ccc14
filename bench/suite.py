"""The benchmark suite of the README: every figure in one run, on one btrfs
loop mount, with core measured beside pg_branch in the same run.

Parts (PARTS, default all of them, in this order):

  latency   CREATE DATABASE p50/p99 against template size (SIZES, pgbench
            scales), for pg_branch, core WAL_LOG and core FILE_COPY: idle,
            with pgbench writing to another database, and with pgbench
            writing to the template itself (core refuses that: recorded as
            "impossible" with its SQLSTATE, never as a time)
  floor     a raw btrfs snapshot ioctl of the same template directory: the
            physical floor under a branch
  disk      exclusive bytes of a fresh branch, then after it rewrites the
            first 1 % and 10 % of pgbench_accounts' rows
  scale     1 000 live branches of one template: latency of each, disk
            used, and DROP DATABASE of a branch against a core copy
  writers   pgbench on the template with and without a branching loop
            (bench/live_template.py)

Results go to RESULTS (default bench/results/<date>) as CSV, and the plot
of branch time against template size to assets/branch_time_vs_size.png.
Targets are printed next to the figures; nothing is asserted.
"""

import csv
import fcntl
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from harness import PG_BIN, Cluster, exclusive_bytes, pct

REPO = Path(__file__).resolve().parent.parent
SIZES = [int(s) for s in os.environ.get("SIZES", "7 70 350").split()]
RUNS = int(os.environ.get("RUNS", "10"))
# Core copies of the largest templates take minutes each: fewer runs.
CORE_RUNS_LARGE = int(os.environ.get("CORE_RUNS_LARGE", "3"))
BRANCHES = int(os.environ.get("BRANCHES", "1000"))
PARTS = os.environ.get("PARTS", "latency floor disk scale writers").split()
RESULTS = Path(os.environ.get("RESULTS", REPO / "bench" / "results" / time.strftime("%Y-%m-%d")))
PLOT = Path(os.environ.get("PLOT", REPO / "assets" / "branch_time_vs_size.png"))

CORE = [("core WAL_LOG", None, "STRATEGY WAL_LOG"), ("core FILE_COPY", None, "STRATEGY FILE_COPY")]
# PostgreSQL 18's own copy-on-write option for FILE_COPY.
CLONE = [("core FILE_COPY", "SET file_copy_method = copy", "STRATEGY FILE_COPY"),
         ("core FILE_COPY, clone", "SET file_copy_method = clone", "STRATEGY FILE_COPY")]


def core_methods(c):
    if c.one("SELECT current_setting('server_version_num')::int") < 180000:
        return CORE
    return CORE[:1] + CLONE


def say(*a):
    print(*a, flush=True)


def write_csv(name, header, rows):
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def load_on(c, db):
    """pgbench -n -c 4 writing to `db` until stopped."""
    p = c.pgbench("-n", "-c", "4", "-j", "2", "-T", "36000", db, background=True)
    time.sleep(3)
    return p


def timed_create(conn, sql):
    t = time.perf_counter()
    conn.execute(sql)
    return (time.perf_counter() - t) * 1000


def used_bytes(path):
    subprocess.run(["btrfs", "filesystem", "sync", str(path)], check=True, capture_output=True)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# --- latency -------------------------------------------------------------

def latency(c):
    rows = []
    plot = {}  # (method) -> [(size_mb, p50)]
    for scale in SIZES:
        tpl = f"tpl_{scale}"
        size_mb = c.one(f"SELECT pg_database_size('{tpl}')") / 2**20
        core_runs = RUNS if scale < 300 else CORE_RUNS_LARGE
        for scenario in ("idle", "pgbench on another database", "pgbench on the template"):
            load = None
            if scenario == "pgbench on another database":
                load = load_on(c, "loaddb")
            elif scenario == "pgbench on the template":
                load = load_on(c, tpl)
            try:
                with c.connect() as conn:
                    times = {"pg_branch": []}
                    for _ in range(RUNS):
                        times["pg_branch"].append(timed_create(conn, f"CREATE DATABASE bench_copy TEMPLATE {tpl}"))
                        conn.execute("DROP DATABASE bench_copy")
                    for name, setting, strategy in core_methods(c):
                        times[name] = []
                        if setting:
                            conn.execute(setting)
                        for _ in range(core_runs):
                            try:
                                times[name].append(timed_create(
                                    conn, f"CREATE DATABASE bench_copy TEMPLATE {tpl} {strategy}"))
                                conn.execute("DROP DATABASE bench_copy")
                            except psycopg.Error as e:
                                times[name] = f"impossible ({e.diag.sqlstate})"
                                break
            finally:
                if load:
                    load.terminate()
                    load.wait()
            base = statistics.median(times["pg_branch"])
            say(f"  {size_mb:8.0f} MB  {scenario}")
            for name, v in times.items():
                if isinstance(v, str):
                    say(f"    {name:16} {v}")
                    rows.append([round(size_mb), scenario, name, 0, "", "", "", v])
                    continue
                say(f"    {name:16} p50 {pct(v, 50):9.1f}  p99 {pct(v, 99):9.1f}  max {max(v):9.1f} ms"
                    f"  ({len(v)} runs, {statistics.median(v) / base:7.0f}x pg_branch)")
                rows.append([round(size_mb), scenario, name, len(v), round(pct(v, 50), 2), round(pct(v, 99), 2),
                             round(max(v), 2), ""])
                if scenario == "idle":
                    plot.setdefault(name, []).append((size_mb, pct(v, 50)))
    write_csv("latency.csv", ["template_mb", "scenario", "method", "runs", "p50_ms", "p99_ms", "max_ms", "note"], rows)
    # Targets.
    idle = {(r[0], r[2]): r[4] for r in rows if r[1] == "idle" and r[4] != ""}
    branch = sorted((mb, p) for (mb, m), p in idle.items() if m == "pg_branch")
    say("\n  targets: branch p50 <= 50 ms at every size: "
        + ", ".join(f"{mb} MB {p:.1f} ms {'met' if p <= 50 else 'NOT met'}" for mb, p in branch))
    if len(branch) >= 2:
        (mb1, p1), (mb2, p2) = branch[-2], branch[-1]
        say(f"  flat: {mb2} MB within 2x of {mb1} MB: {p2 / p1:.2f}x {'met' if p2 <= 2 * p1 else 'NOT met'}")
        for name in ("core WAL_LOG", "core FILE_COPY", "core FILE_COPY, clone"):
            v = idle.get((mb2, name))
            if v:
                say(f"  at {mb2} MB pg_branch is {v / p2:.0f}x faster than {name}")
        wal = idle.get((mb2, "core WAL_LOG"))
        if wal:
            say(f"  >= 1000x faster than WAL_LOG at {mb2} MB: {wal / p2:.0f}x {'met' if wal / p2 >= 1000 else 'NOT met'}")
    return plot


# --- floor ---------------------------------------------------------------

BTRFS_IOC_SNAP_CREATE_V2 = (1 << 30) | (4096 << 16) | (0x94 << 8) | 23


def raw_snapshot(src, dst):
    """One BTRFS_IOC_SNAP_CREATE_V2 ioctl: the cheapest possible copy."""
    s = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    d = os.open(os.path.dirname(dst), os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = bytearray(4096)
        struct.pack_into("q", args, 0, s)
        name = os.path.basename(dst).encode()
        args[56:56 + len(name)] = name  # after fd, transid, flags and a 32-byte union
        fcntl.ioctl(d, BTRFS_IOC_SNAP_CREATE_V2, args)
    finally:
        os.close(s)
        os.close(d)


def floor(c, plot):
    rows = []
    for scale in SIZES:
        tpl = f"tpl_{scale}"
        size_mb = c.one(f"SELECT pg_database_size('{tpl}')") / 2**20
        src = c.db_path(tpl)
        c.sql("CHECKPOINT")
        times = []
        for i in range(RUNS):
            dst = c.root / f"floor_{i}"
            t = time.perf_counter()
            raw_snapshot(src, dst)
            times.append((time.perf_counter() - t) * 1000)
            subprocess.run(["btrfs", "subvolume", "delete", dst], check=True, capture_output=True)
        branch = [r for r in (plot.get("pg_branch") or []) if abs(r[0] - size_mb) < 1]
        over = f", pg_branch p50 is {branch[0][1] - pct(times, 50):.1f} ms above it" if branch else ""
        say(f"  {size_mb:8.0f} MB  raw snapshot ioctl p50 {pct(times, 50):.2f}  p99 {pct(times, 99):.2f} ms{over}")
        rows.append([round(size_mb), RUNS, round(pct(times, 50), 3), round(pct(times, 99), 3)])
        plot.setdefault("raw btrfs snapshot (floor)", []).append((size_mb, pct(times, 50)))
    write_csv("floor.csv", ["template_mb", "runs", "p50_ms", "p99_ms"], rows)


# --- disk ----------------------------------------------------------------

def disk(c):
    scale = 70 if 70 in SIZES else SIZES[-1]
    rows = []
    # A template nobody touches while we measure: a branch's exclusive bytes
    # also grow when its *template* rewrites shared blocks (autovacuum after
    # the load scenarios would), which is not what this part measures.
    tpl = "disk_tpl"
    c.sql("DROP DATABASE IF EXISTS disk_b")
    c.sql("DROP DATABASE IF EXISTS disk_tpl")
    c.sql(f"CREATE DATABASE disk_tpl TEMPLATE tpl_{scale}")
    c.sql("VACUUM (FREEZE, ANALYZE)", dbname=tpl)
    c.sql("ALTER DATABASE disk_tpl ALLOW_CONNECTIONS false")
    c.sql("CHECKPOINT")
    c.sql(f"CREATE DATABASE disk_b TEMPLATE {tpl}")
    c.sql("CHECKPOINT")
    path = c.db_path("disk_b")
    accounts = c.one("SELECT pg_relation_size('pgbench_accounts')", dbname="disk_b")
    fresh = exclusive_bytes(path)
    rows.append(["fresh branch", 0, fresh])
    say(f"  fresh branch of {tpl}: {fresh / 1024:.1f} kB exclusive (target <= 1 MB: {'met' if fresh <= 2**20 else 'NOT met'})")
    rows_total = c.one("SELECT count(*) FROM pgbench_accounts", dbname="disk_b")
    # A contiguous 1 % (then 10 %) of the rows, so about that share of the
    # table's pages: every 100th row would touch every page.
    for share, fraction in (("1 %", 100), ("10 %", 10)):
        c.sql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {rows_total // fraction}",
              dbname="disk_b")
        c.sql("CHECKPOINT")
        ex = exclusive_bytes(path)
        rows.append([f"after rewriting {share} of pgbench_accounts", share, ex])
        say(f"  after rewriting {share:>4} of pgbench_accounts ({accounts / 2**20:.0f} MB): {ex / 2**20:8.1f} MB exclusive")
    c.sql("DROP DATABASE disk_b")
    c.sql("DROP DATABASE disk_tpl")
    write_csv("disk.csv", ["state", "rewritten", "exclusive_bytes"], rows)


# --- scale ---------------------------------------------------------------

def scale_part(c):
    scale = 70 if 70 in SIZES else SIZES[-1]
    tpl = f"tpl_{scale}"
    c.sql("CHECKPOINT")
    before = used_bytes(c.data)
    times, parts = [], []
    stats = "SELECT sync_ms, fence_wait_ms, fence_ms, clone_ms, checkpoint_ms FROM pgbranch.last_branch()"
    with c.connect() as conn:
        for i in range(1, BRANCHES + 1):
            times.append(timed_create(conn, f"CREATE DATABASE many_{i} TEMPLATE {tpl}"))
            parts.append(conn.execute(stats).fetchone())
    c.sql("CHECKPOINT")
    grown = used_bytes(c.data) - before
    rows = [[i + 1, round(t, 2), *(round(x, 2) for x in p)] for i, (t, p) in enumerate(zip(times, parts))]
    write_csv("scale.csv", ["branch", "ms", "sync_ms", "fence_wait_ms", "fence_ms", "clone_ms", "checkpoint_ms"], rows)
    marks = [n for n in (1, 100, 1000, BRANCHES) if n <= BRANCHES]
    say("  " + ", ".join(f"branch {n}: {times[n - 1]:.1f} ms" for n in sorted(set(marks))))
    per_hundred = [statistics.median(times[i:i + 100]) for i in range(0, len(times), 100)]
    say("  p50 per hundred: " + " ".join(f"{p:.1f}" for p in per_hundred) + " ms")
    for k, name in enumerate(["sync", "fence wait", "fence", "clone", "checkpoint"]):
        hundreds = [statistics.median(p[k] for p in parts[i:i + 100]) for i in range(0, len(parts), 100)]
        say(f"    of which {name:10}: " + " ".join(f"{h:.1f}" for h in hundreds) + " ms")
    first, last = per_hundred[0], per_hundred[-1]
    say(f"  no growth from the first hundred to the last: {last / first:.2f}x "
        f"({'met' if last <= 1.5 * first else 'NOT met'}, counting within 1.5x as flat)")
    say(f"  disk used by {BRANCHES} branches: {grown / 2**20:.1f} MB ({grown / BRANCHES / 1024:.1f} kB each)")

    drops = []
    with c.connect() as conn:
        for i in range(1, 11):
            t = time.perf_counter()
            conn.execute(f"DROP DATABASE many_{i}")
            drops.append((time.perf_counter() - t) * 1000)
        core_drops = []
        for i in range(3):
            conn.execute(f"CREATE DATABASE core_copy TEMPLATE {tpl} STRATEGY FILE_COPY")
            t = time.perf_counter()
            conn.execute("DROP DATABASE core_copy")
            core_drops.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        for i in range(11, BRANCHES + 1):
            conn.execute(f"DROP DATABASE many_{i}")
        rest = time.perf_counter() - t
    say(f"  DROP DATABASE: a branch p50 {pct(drops, 50):.1f} ms, a FILE_COPY copy p50 {pct(core_drops, 50):.1f} ms; "
        f"the other {BRANCHES - 10} branches in {rest:.1f} s")
    write_csv("drop.csv", ["what", "runs", "p50_ms", "max_ms"],
              [["branch", len(drops), round(pct(drops, 50), 2), round(max(drops), 2)],
               ["core FILE_COPY copy", len(core_drops), round(pct(core_drops, 50), 2), round(max(core_drops), 2)]])
    write_csv("scale_summary.csv", ["branches", "disk_bytes", "first_ms", "p50_first_100_ms", "p50_last_100_ms"],
              [[BRANCHES, grown, round(times[0], 2), round(first, 2), round(last, 2)]])


# --- writers -------------------------------------------------------------

def writers():
    env = dict(os.environ, BRANCHES=os.environ.get("WRITER_BRANCHES", "20"))
    out = subprocess.run([sys.executable, REPO / "bench" / "live_template.py"], env=env,
                         capture_output=True, text=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "writers.txt").write_text(out.stdout + out.stderr)
    say("\n".join("  " + line for line in out.stdout.strip().splitlines()))


# --- plot ----------------------------------------------------------------

def draw(plot):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    style = {"pg_branch": ("o-", "tab:green"), "core WAL_LOG": ("s-", "tab:red"),
             "core FILE_COPY": ("^-", "tab:orange"), "core FILE_COPY, clone": ("v--", "tab:purple"),
             "raw btrfs snapshot (floor)": (":", "gray")}
    for name, points in plot.items():
        points = sorted(points)
        fmt, color = style.get(name, ("x-", None))
        ax.plot([p[0] for p in points], [p[1] for p in points], fmt, color=color, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("template size (MB, pgbench)")
    ax.set_ylabel("CREATE DATABASE, p50 (ms)")
    version = subprocess.run([PG_BIN / "postgres", "--version"], capture_output=True, text=True).stdout.split()[2]
    ax.set_title(f"CREATE DATABASE time against template size\n(PostgreSQL {version.split('-')[0]}, btrfs loop mount, idle)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.text(0.99, 0.01, f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} vCPU, bench/run.sh suite",
             ha="right", fontsize=7, color="gray")
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT)
    say(f"  plot: {PLOT}")


def main():
    started = time.time()
    say(f"pg_branch benchmark suite, {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}; sizes (pgbench scale) {SIZES}; {RUNS} runs; parts {PARTS}")
    root = Path(os.environ["PG_BRANCH_BENCH_DIR"]) / "suite"
    c = Cluster(root, 5452, extra_conf="shared_buffers = 1GB\nmax_wal_size = 8GB\n"
                "max_locks_per_transaction = 256\n").init().start()
    plot = {}
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE loaddb")
        c.pgbench("-q", "-i", "-s", 10, "loaddb")
        for scale in SIZES:
            t = time.time()
            c.sql(f"CREATE DATABASE tpl_{scale}")
            c.pgbench("-q", "-i", "-s", scale, f"tpl_{scale}")
            size = c.one("SELECT pg_size_pretty(pg_database_size(%s))", params=(f"tpl_{scale}",))
            say(f"template tpl_{scale}: {size} loaded in {time.time() - t:.0f} s")
        c.sql("CHECKPOINT")
        if "latency" in PARTS:
            say("\n== latency against template size (ms)")
            plot = latency(c)
        if "floor" in PARTS:
            say("\n== physical floor: raw btrfs snapshot of the same directory")
            floor(c, plot)
        if "disk" in PARTS:
            say("\n== disk")
            disk(c)
        if "scale" in PARTS:
            say(f"\n== {BRANCHES} live branches of one template")
            scale_part(c)
    finally:
        c.stop(check=False)
        subprocess.run(["rm", "-rf", str(root)])
    if "writers" in PARTS:
        say("\n== writers of the template, with and without a branching loop")
        writers()
    if plot:
        draw(plot)
    say(f"\nresults in {RESULTS}; the whole run took {(time.time() - started) / 60:.1f} min; "
        f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
