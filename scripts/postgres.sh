#!/usr/bin/env bash
# Provide PostgreSQL servers with headers for every major version pg_branch
# supports, cached under $PG_BRANCH_PG (default /var/lib/pg_branch/pg), so a
# second run is a no-op:
#
#   15   Debian's packages (postgresql-15, postgresql-server-dev-15)
#   16   the relocatable 16.2 build in the PyPI wheel pgserver==0.1.4
#   17   compiled from Debian trixie's source package
#   18   compiled from Debian sid's source package
#
#   bash scripts/postgres.sh 18       one version
#   bash scripts/postgres.sh all      all of them
#
# Prints nothing on success but progress; `pg_bin VERSION` (lib.sh) names
# the bin directory afterwards. Run as root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root

APT_DIR="$PGS/apt"
SRC_DIR="$PGS/src"

# Debian's source packages come from a private apt configuration, so the
# system's own sources stay untouched.
apt_src() {
    mkdir -p "$APT_DIR/lists/partial" "$SRC_DIR"
    cat >"$APT_DIR/sources.list" <<LIST
deb-src http://deb.debian.org/debian trixie main
deb-src http://deb.debian.org/debian sid main
LIST
    local opts=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$APT_DIR/lists")
    if [ ! -f "$APT_DIR/updated" ]; then
        apt-get "${opts[@]}" update -qq >&2
        touch "$APT_DIR/updated"
    fi
    (cd "$SRC_DIR" && apt-get "${opts[@]}" source --download-only -qq "$@" >&2)
}

# fetch_orig MAJOR: the upstream tarball of Debian's postgresql-MAJOR source
# package; prints its path. The archive's index sometimes names a point
# release the mirror no longer (or not yet) serves; then the newest
# tarball the pool does serve is taken.
fetch_orig() {
    local v=$1 f
    f=$(ls "$SRC_DIR"/postgresql-"$v"_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$f" ] && ! apt_src "postgresql-$v" 2>/dev/null; then
        local pool=http://deb.debian.org/debian/pool/main/p/postgresql-$v minor
        for minor in $(seq 30 -1 0); do
            if curl -fsS -o "$SRC_DIR/postgresql-${v}_$v.$minor.orig.tar.bz2" \
                "$pool/postgresql-${v}_$v.$minor.orig.tar.bz2" 2>/dev/null; then
                break
            fi
        done
    fi
    f=$(ls "$SRC_DIR"/postgresql-"$v"_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$f" ] || die "no source of PostgreSQL $v could be downloaded"
    echo "$f"
}

build_from_debian_source() {
    local v=$1 prefix
    prefix=$(pg_prefix "$1")
    [ -x "$prefix/bin/pg_config" ] && [ -f "$prefix/lib/postgresql/amcheck.so" -o -f "$prefix/lib/amcheck.so" ] && return
    say "PostgreSQL $v: building from Debian's source package into $prefix (several minutes)"
    apt-get install -y -qq bison flex libicu-dev libreadline-dev zlib1g-dev libssl-dev liblz4-dev bzip2 curl \
        libzstd-dev pkg-config make gcc perl >/dev/null
    local orig
    orig=$(fetch_orig "$v")
    local build="$SRC_DIR/build-$v"
    rm -rf "$build" && mkdir -p "$build"
    tar -xf "$orig" -C "$build" --strip-components=1
    (
        cd "$build"
        ./configure --prefix="$prefix" --with-icu --with-openssl --with-lz4 --with-zstd \
            --without-llvm --enable-debug >/dev/null
        make -s -j"$(nproc)" >/dev/null
        make -s -C contrib -j"$(nproc)" >/dev/null
        make -s install >/dev/null
        make -s -C contrib install >/dev/null
    )
    rm -rf "$build"
}

# The pgserver wheel carries a relocatable PostgreSQL 16.2 with server
# headers under pgserver/pginstall/ (no contrib, no ICU). Its programs find
# their shared libraries through an $ORIGIN rpath into the wheel's
# pgserver.libs/, so the wheel's layout is kept as is.
install_pgserver_16() {
    local root="$PGS/16"
    [ -x "$(pg_prefix 16)/bin/pg_config" ] && return
    say "PostgreSQL 16: unpacking the pgserver==0.1.4 wheel into $root"
    local tmp
    tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$tmp" pgserver==0.1.4 >&2
    rm -rf "$root"
    mkdir -p "$root"
    (cd "$root" && python3 -m zipfile -e "$tmp"/pgserver-*.whl .)
    chmod -R a+rX "$root"
    chmod a+x "$(pg_prefix 16)"/bin/*
    rm -rf "$tmp"
}

ensure() {
    case $1 in
        15) ;; # scripts/setup.sh installs Debian's packages
        16) install_pgserver_16 ;;
        17 | 18) build_from_debian_source "$1" ;;
        *) die "unsupported PostgreSQL version $1 (15, 16, 17, 18)" ;;
    esac
}

mkdir -p "$PGS"
if [ "${1:-all}" = all ]; then
    for v in 16 17 18; do ensure "$v"; done
else
    ensure "$1"
fi
bash "$REPO/scripts/setup.sh"   # points pgrx at what is now installed
