#!/usr/bin/env bash
# Benchmarks: one entry point. Each prints its figures, with core's own
# strategies measured in the same run where they apply. As root:
#
#   sudo bench/run.sh latency           CREATE DATABASE p50/p99, idle and under load, against core
#   sudo bench/run.sh live-template     pgbench writes to the template while 100 branches are made
#   sudo bench/run.sh filesystems       1 GB template: btrfs snapshot, btrfs reflink, XFS reflink, core, disk growth
#
# Settings: SCALE (pgbench scale of the template); latency: RUNS;
# live-template: SECONDS_PER_RUN, BRANCHES; filesystems: RUNS.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
need_root
bash "$REPO/scripts/setup.sh"
[ "$PG_VERSION" = 15 ] || bash "$REPO/scripts/postgres.sh" "$PG_VERSION"
install_extension --release
export PG_BIN
export PG_BRANCH_BENCH_DIR
PG_BRANCH_BENCH_DIR="$(mount_btrfs)/bench"
case "${1:-}" in
    latency) exec "$VENV/bin/python" "$REPO/bench/latency.py" ;;
    live-template) exec "$VENV/bin/python" "$REPO/bench/live_template.py" ;;
    filesystems)
        export PG_BRANCH_BENCH_XFS
        PG_BRANCH_BENCH_XFS="$(mount_xfs)"
        exec "$VENV/bin/python" "$REPO/bench/filesystems.py"
        ;;
    *) die "usage: bench/run.sh latency|live-template|filesystems" ;;
esac
