#!/usr/bin/env bash
# Install everything pg_branch needs to build and test on Debian 12, as
# root: Debian packages, cargo-pgrx 0.18.0, pgrx's view of PostgreSQL 15
# (and of 16-18 once scripts/postgres.sh has provided them), and the Python
# test driver. Safe to run again: each step checks first.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

need_root

APT_PACKAGES=(postgresql-15 postgresql-contrib postgresql-server-dev-15 btrfs-progs xfsprogs e2fsprogs
              libclang-dev clang pkg-config sudo util-linux procps python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
# Debian's package starts a "main" cluster on port 5432; we never use it.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q "^15 *main .*online"; then
    pg_ctlcluster 15 main stop || true
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.0"; then
    say "installing cargo-pgrx 0.18.0 (about 3 minutes)"
    cargo install cargo-pgrx --version 0.18.0 --locked
fi
# Every installed version must be in pgrx's configuration.
for v in 15 16 17 18; do
    [ -x "$(pg_prefix "$v")/bin/pg_config" ] || continue
    if ! grep -qs "pg$v = \"$(pg_prefix "$v")/bin/pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        say "pointing pgrx at every installed PostgreSQL"
        pgrx_init
        break
    fi
done

if [ ! -x "$VENV/bin/pytest" ] || [ ! -x "$VENV/bin/pyflakes" ]; then
    say "installing the Python test driver into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "pytest==8.3.*" "psycopg[binary]==3.2.*" "pyflakes==3.*"
fi
