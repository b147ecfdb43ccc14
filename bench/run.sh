#!/usr/bin/env bash
# Benchmarks: one entry point. Each prints its figures, with core's own
# strategies measured in the same run where they apply. As root:
#
#   bash bench/run.sh suite             every figure of the README (bench/suite.py): latency against
#                                       size, the snapshot floor, disk, 1000 branches, writers; CSV + plot
#   bash bench/run.sh latency           CREATE DATABASE p50/p99, idle and under load, against core
#   bash bench/run.sh live-template     pgbench writes to the template while 100 branches are made
#   bash bench/run.sh filesystems       1 GB template: btrfs snapshot, btrfs reflink, XFS reflink, core, disk growth
#   bash bench/run.sh hook-overhead     100 000 SET and CREATE TEMP TABLE ... ON COMMIT DROP, stock against pg_branch
#   bash bench/run.sh during-backup     a branch while pg_backup_start runs (written into WAL page by page), against
#                                       the fast path and core's WAL_LOG and FILE_COPY
#   bash bench/run.sh lifecycle         the registry's cost per branch (record_ms against total_ms), reading
#                                       pgbranch.branches, set_expiry(), branch_size(), diverged(), cluster_size() at 1 and 5 GB,
#                                       and reset() against DROP + CREATE DATABASE (pg_branch and core FILE_COPY)
#   bash bench/run.sh fork              pg_branch fork of a 1 GB and a 5 GB cluster, idle and under pgbench: time,
#                                       extra disk, start; against pg_basebackup to the same filesystem
#   bash bench/run.sh snapshot-latency  no server: our snapshot ioctl against the btrfsutil crate, 200 each,
#                                       interleaved (bench/snapshot_latency; installs libbtrfsutil-dev)
#
# Settings: SCALE (pgbench scale of the template); latency: RUNS;
# live-template: SECONDS_PER_RUN, BRANCHES; lifecycle: SIZES (default "70 350"), RUNS, RESETS (default 5); fork: SIZES, RUNS (default 5); filesystems, during-backup: RUNS; hook-overhead: N, CHUNK; suite: SIZES
# (pgbench scales, default "7 70 350"), RUNS, CORE_RUNS_LARGE, BRANCHES, PARTS;
# PG_VERSION picks the server (default 15).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
need_root
bash "$REPO/scripts/setup.sh"
if [ "${1:-}" = snapshot-latency ]; then
    dpkg-query -W -f='${Status}' libbtrfsutil-dev 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q libbtrfsutil-dev
    dir="$(mount_btrfs)/snapshot-latency"
    (cd "$REPO/bench/snapshot_latency" && cargo build -q --release)
    "$REPO/bench/snapshot_latency/target/release/snapshot_latency" "$dir" "${RUNS:-200}"
    btrfs subvolume delete "$dir"/snaps/* "$dir/src" >/dev/null && rm -r "$dir"
    exit
fi
[ "$PG_VERSION" = 15 ] || bash "$REPO/scripts/postgres.sh" "$PG_VERSION"
install_extension --release
export PG_BIN
# The benchmarks drive clusters with the tests' harness (tests/harness.py).
export PYTHONPATH="$REPO/tests${PYTHONPATH:+:$PYTHONPATH}"
export PG_BRANCH_BENCH_DIR
PG_BRANCH_BENCH_DIR="$(mount_btrfs)/bench"
case "${1:-}" in
    latency) exec "$VENV/bin/python" "$REPO/bench/latency.py" ;;
    live-template) exec "$VENV/bin/python" "$REPO/bench/live_template.py" ;;
    suite)
        "$VENV/bin/python" -c "import matplotlib" 2>/dev/null || "$VENV/bin/pip" install -q "matplotlib==3.*"
        exec "$VENV/bin/python" "$REPO/bench/suite.py"
        ;;
    filesystems)
        export PG_BRANCH_BENCH_XFS
        PG_BRANCH_BENCH_XFS="$(mount_xfs)"
        exec "$VENV/bin/python" "$REPO/bench/filesystems.py"
        ;;
    lifecycle) exec "$VENV/bin/python" "$REPO/bench/lifecycle.py" ;;
    fork) exec "$VENV/bin/python" "$REPO/bench/fork.py" ;;
    hook-overhead) exec "$VENV/bin/python" "$REPO/bench/hook_overhead.py" ;;
    during-backup) exec "$VENV/bin/python" "$REPO/bench/during_backup.py" ;;
    *) die "usage: bench/run.sh suite|latency|live-template|filesystems|lifecycle|fork|hook-overhead|during-backup|snapshot-latency" ;;
esac
