#!/usr/bin/env bash
# The pg_branch demo: a PostgreSQL 15 cluster with pg_branch preloaded on a
# copy-on-write filesystem, a ~1 GB pgbench database, and one branch of it,
# timed next to core's WAL_LOG and FILE_COPY copies of the same template.
#
#   bash scripts/demo.sh            cluster on a loop-mounted btrfs image
#                                   ($PG_BRANCH_IMAGES/btrfs.img, default
#                                   /var/lib/pg_branch, mounted on
#                                   /mnt/pg_branch/btrfs)
#   bash scripts/demo.sh DIR        cluster in DIR, which must be on btrfs
#                                   or on XFS formatted with reflink=1
#
# Settings: SCALE (pgbench scale, default 70 = about 1 GB), PORT (5440),
# PG_VERSION (15, 16, 17 or 18; default 15). Running it again reuses the
# cluster and the template.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root

SCALE=${SCALE:-70}
PORT=${PORT:-5440}

bash "$REPO/scripts/setup.sh"
[ "$PG_VERSION" = 15 ] || bash "$REPO/scripts/postgres.sh" "$PG_VERSION"
say "building pg_branch (release) and installing it into PostgreSQL $PG_VERSION"
install_extension --release

if [ $# -ge 1 ]; then
    mkdir -p "$1"
    BASE=$(cd "$1" && pwd)
    case $(fs_type "$BASE") in
        btrfs|xfs|bcachefs|zfs) ;;
        *) die "$BASE is on $(fs_type "$BASE"), which cannot clone files; name a directory on btrfs or XFS (reflink=1), or run without DIR to use a loop-mounted btrfs image" ;;
    esac
else
    BASE="$(mount_btrfs)/demo"
    [ "$PG_VERSION" = 15 ] || BASE="$BASE-pg$PG_VERSION"
fi
DATA=$BASE/data SOCK=$BASE/sock
mkdir -p "$SOCK"
chown postgres:postgres "$BASE" "$SOCK"

pg() { sudo -u postgres -- "$@"; }
psql_() { pg env PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres "$@"; }

if [ ! -f "$DATA/PG_VERSION" ]; then
    say "creating a cluster in $DATA"
    pg "$PG_BIN/initdb" -D "$DATA" -E UTF8 --locale=C.UTF-8 -A trust -U postgres >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_branch'
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_buffers = 1GB
max_wal_size = 4GB
CONF
fi
if ! pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$BASE/server.log" -w start >/dev/null
fi
psql_ -c "CREATE EXTENSION IF NOT EXISTS pg_branch"

if [ "$(psql_ -tAc "SELECT count(*) FROM pg_database WHERE datname = 'app'")" = 0 ]; then
    say "loading the template: pgbench -i -s $SCALE app (about a minute per 1 GB)"
    psql_ -c "CREATE DATABASE app"
    pg "$PG_BIN/pgbench" -q -i -s "$SCALE" -h "$SOCK" -p "$PORT" -U postgres app
    say "running 2000 pgbench transactions so the template has history"
    pg "$PG_BIN/pgbench" -c 4 -t 500 -h "$SOCK" -p "$PORT" -U postgres app >/dev/null
fi
for db in feature_x copy_file_copy copy_wal_log; do
    psql_ -c "DROP DATABASE IF EXISTS $db"
done
psql_ -c "CHECKPOINT"

# time_create NAME SQL: milliseconds psql's \timing reports for SQL.
time_create() {
    psql_ -c '\timing on' -c "$2" | awk '/^Time:/ {print $2}'
}
fingerprint() {
    psql_ -d "$1" -tAc "SELECT (SELECT count(*) FROM pgbench_accounts) || ' accounts, sum ' || (SELECT sum(abalance) FROM pgbench_accounts) || ', ' || (SELECT count(*) FROM pgbench_branches) || ' branches'"
}
exclusive() {
    local oid
    oid=$(psql_ -tAc "SELECT oid FROM pg_database WHERE datname = '$1'")
    btrfs filesystem sync "$DATA" >/dev/null 2>&1 || sync
    if [ "$(fs_type "$DATA")" = btrfs ]; then
        btrfs filesystem du -s --raw "$DATA/base/$oid" |
            awk 'END {if ($2 < 1e6) printf "%.1f kB", $2 / 1e3; else printf "%.1f MB", $2 / 1e6}'
    else
        echo "n/a on $(fs_type "$DATA")"
    fi
}

size=$(psql_ -tAc "SELECT pg_size_pretty(pg_database_size('app'))")
say "timing CREATE DATABASE on template app ($size)"
t_branch=$(time_create feature_x "CREATE DATABASE feature_x TEMPLATE app")
psql_ -c "CHECKPOINT"
x_branch=$(exclusive feature_x)
t_file=$(time_create copy_file_copy "CREATE DATABASE copy_file_copy TEMPLATE app STRATEGY FILE_COPY")
psql_ -c "CHECKPOINT"
x_file=$(exclusive copy_file_copy)
psql_ -c "DROP DATABASE copy_file_copy"
t_wal=$(time_create copy_wal_log "CREATE DATABASE copy_wal_log TEMPLATE app STRATEGY WAL_LOG")
psql_ -c "CHECKPOINT"
x_wal=$(exclusive copy_wal_log)
psql_ -c "DROP DATABASE copy_wal_log"

tpl=$(fingerprint app) br=$(fingerprint feature_x)
[ "$tpl" = "$br" ] || die "the branch differs from its template: $br vs $tpl"
method=$(psql_ -tAc "SELECT branch_method FROM pgbranch.database_storage() WHERE datname = 'feature_x' AND tablespace = 'pg_default'")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0fx", a / b}'; }
row() { printf '  %-28s %12s %10s   %s\n' "$@"; }
echo
echo "  CREATE DATABASE ... TEMPLATE app ($size, pgbench scale $SCALE), same cluster, same run"
echo
row "method" "time" "vs branch" "exclusive disk of the copy"
row "pg_branch ($method)" "$t_branch ms" "1x" "$x_branch"
row "core STRATEGY FILE_COPY" "$t_file ms" "$(ratio "$t_file" "$t_branch")" "$x_file"
row "core STRATEGY WAL_LOG" "$t_wal ms" "$(ratio "$t_wal" "$t_branch")" "$x_wal"
cat <<REPORT

  feature_x equals app: $br

  Connect:   sudo -u postgres psql -h $SOCK -p $PORT feature_x
  Check:     SELECT * FROM pgbranch.doctor();
  Branch:    CREATE DATABASE my_branch TEMPLATE app;
  Stop:      sudo -u postgres $PG_BIN/pg_ctl -D $DATA stop
REPORT
