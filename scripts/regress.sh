#!/usr/bin/env bash
# PostgreSQL's own regression suite (src/test/regress, parallel schedule,
# as `make installcheck-parallel` runs it) against two clusters of one
# version: a stock one, and one with pg_branch preloaded and RUST_BACKTRACE=1
# in its environment, both on btrfs so that the suite's CREATE DATABASEs
# are branches. Fails unless the same tests fail on both (issue 12).
#
#   bash scripts/regress.sh 18        one version (15, 16, 17, 18)
#
# pg_branch must be installed into that version first (test.sh does it).
# The suite comes from the version's source tree: for 17 and 18 the
# upstream tarball scripts/postgres.sh keeps; for 15 Debian 12's
# postgresql-15 source package; for 16 Debian's postgresql-16 source
# package if an archive suite still carries it. Only what installcheck
# needs is built (configure; make -C src/test/regress for pg_regress and
# regress.so; the tree's own psql), once, under $PGS/regress/VERSION; the
# servers are the installed ones. Exits 77 (skipped) when no source can be
# had.
#
# PG_BRANCH_REGRESS_DIR (default $MOUNTS/btrfs/regress) holds the clusters
# and the results; ports are 5510/5511 + PG_BRANCH_TEST_PORT_OFFSET.
# PG_BRANCH_LIBRARY (default pg_branch) is what shared_preload_libraries
# names: a path tries a build without installing it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root

v=${1:?usage: regress.sh VERSION}
PG_BIN=$(pg_prefix "$v")/bin
[ -x "$PG_BIN/postgres" ] || die "PostgreSQL $v is not installed (scripts/postgres.sh $v)"
SRC_DIR="$PGS/src"
APT_DIR="$PGS/apt-regress"
BUILD="$PGS/regress/$v"
offset=${PG_BRANCH_TEST_PORT_OFFSET:-0}

# apt_source PACKAGE: download Debian's source package into $SRC_DIR from a
# private apt configuration (the system's sources stay untouched).
apt_source() {
    mkdir -p "$APT_DIR/lists/partial" "$SRC_DIR"
    cat >"$APT_DIR/sources.list" <<LIST
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
deb-src http://deb.debian.org/debian trixie main
deb-src http://deb.debian.org/debian sid main
LIST
    local opts=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$APT_DIR/lists")
    if [ ! -f "$APT_DIR/updated" ]; then
        apt-get "${opts[@]}" update -qq >&2 || true
        touch "$APT_DIR/updated"
    fi
    # The newest version the indexes list whose files the mirror serves
    # (its security pool, which the index names first, may be missing).
    local ver
    for ver in $(apt-cache "${opts[@]}" showsrc "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -urV); do
        (cd "$SRC_DIR" && apt-get "${opts[@]}" source --download-only -qq "$1=$ver" >&2 2>/dev/null) && return 0
    done
    return 1
}

# source_tarball: the newest upstream tarball of major $v that is at hand,
# downloaded if need be; prints its path, or nothing.
source_tarball() {
    local f
    f=$(ls "$SRC_DIR"/postgresql-"$v"_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$f" ]; then
        apt_source "postgresql-$v" >/dev/null 2>&1 || true
        f=$(ls "$SRC_DIR"/postgresql-"$v"_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    fi
    echo "$f"
}

build_suite() {
    [ -x "$BUILD/src/test/regress/pg_regress" ] && [ -f "$BUILD/src/test/regress/regress.so" ] &&
        [ -x "$BUILD/src/bin/psql/psql" ] && return
    local orig
    orig=$(source_tarball)
    if [ -z "$orig" ]; then
        echo "PostgreSQL $v: SKIPPED: no source of PostgreSQL $v's regression suite can be had" \
            "(no suite of Debian's archive carries postgresql-$v's source any more)" >&2
        exit 77
    fi
    say "PostgreSQL $v: building pg_regress and regress.so from $(basename "$orig")"
    apt-get install -y -qq bison flex make gcc perl bzip2 >/dev/null
    rm -rf "$BUILD" && mkdir -p "$BUILD"
    tar -xf "$orig" -C "$BUILD" --strip-components=1
    (
        cd "$BUILD"
        ./configure --without-icu --without-readline --without-zlib --without-llvm >/dev/null
        make -s -j"$(nproc)" -C src/test/regress >/dev/null
        # The suite's own psql: Debian's 15.20 psql stops reading a script
        # after some failed COPY FROM STDIN of 15.18's suite.
        make -s -j"$(nproc)" -C src/interfaces/libpq >/dev/null
        make -s -j"$(nproc)" -C src/bin/psql >/dev/null
    )
    chmod -R a+rX "$BUILD"
}

# The names of the failing tests in pg_regress's output (15's "... FAILED"
# and 16+'s TAP "not ok N - name").
failing() {
    sed -nE -e 's/^not ok +[0-9]+ +[-+] +([^ ]+).*/\1/p' \
        -e 's/^ *(test +)?([^ ]+) +\.\.\. +FAILED.*/\2/p' \
        -e 's/^ *(test +)?([^ ]+) +\.\.\. +failed( \(ignored\))?.*/\2/p' "$1" | sort
}

# run_suite NAME PORT PRELOAD ENV...: a fresh cluster, the schedule, its output.
run_suite() {
    local name=$1 port=$(($2 + offset)) preload=$3; shift 3
    local root="$DIR/$name"
    if [ -f "$root/data/postmaster.pid" ]; then
        sudo -u postgres "$PG_BIN/pg_ctl" -D "$root/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$root" && mkdir -p "$root/sock" "$root/out"
    chown -R postgres:postgres "$root"
    sudo -u postgres "$PG_BIN/initdb" -D "$root/data" -E UTF8 --locale=C -A trust -U postgres >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$root/sock'"
        echo "max_prepared_transactions = 10"
        if [ "$preload" = yes ]; then echo "shared_preload_libraries = '${PG_BRANCH_LIBRARY:-pg_branch}'"; fi
    } >>"$root/data/postgresql.conf"
    sudo -u postgres env "$@" "$PG_BIN/pg_ctl" -D "$root/data" -l "$root/log" -w -t 60 start >/dev/null
    local t0=$SECONDS
    # As the installcheck-parallel target runs it (REGRESS_OPTS).
    (cd "$root/out" && sudo -u postgres env LD_LIBRARY_PATH="$BUILD/src/interfaces/libpq" \
        "$BUILD/src/test/regress/pg_regress" \
        --inputdir="$BUILD/src/test/regress" --outputdir="$root/out" --bindir="$BUILD/src/bin/psql" \
        --dlpath="$BUILD/src/test/regress" --max-concurrent-tests=20 \
        --schedule="$BUILD/src/test/regress/parallel_schedule" \
        --host="$root/sock" --port="$port" --user=postgres) >"$root/regress.out" 2>&1 || true
    echo "PostgreSQL $v, $name: $(failing "$root/regress.out" | wc -l) failing, $((SECONDS - t0)) s" >&2
    sudo -u postgres "$PG_BIN/pg_ctl" -D "$root/data" -m fast -w stop >/dev/null
}

build_suite
DIR=${PG_BRANCH_REGRESS_DIR:-$(mount_btrfs)/regress}/$v
mkdir -p "$DIR" && chmod 755 "$DIR"

run_suite stock 5510 no
run_suite pg_branch 5511 yes RUST_BACKTRACE=1

failing "$DIR/stock/regress.out" >"$DIR/stock.failing"
failing "$DIR/pg_branch/regress.out" >"$DIR/pg_branch.failing"
ran=$(grep -cE '^(not )?ok +[0-9]+|\.\.\. +(ok|FAILED|failed)' "$DIR/stock/regress.out" || true)
if [ "$ran" -eq 0 ]; then
    tail -20 "$DIR/stock/regress.out" >&2
    die "PostgreSQL $v: the regression suite ran no test"
fi
if diff -u "$DIR/stock.failing" "$DIR/pg_branch.failing" >&2; then
    echo "PostgreSQL $v: regression suite: $ran tests, the same $(wc -l <"$DIR/stock.failing") fail with and without pg_branch" >&2
else
    echo "PostgreSQL $v: regression suite: the failing tests differ (- stock, + pg_branch); diffs in $DIR/pg_branch/out/regression.diffs" >&2
    head -c 20000 "$DIR/pg_branch/out/regression.diffs" >&2 2>/dev/null || true
    exit 1
fi
