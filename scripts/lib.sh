# Shared settings and helpers for pg_branch's scripts (sourced, not run).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Loop-mounted images live here unless the user names a directory.
IMAGES="${PG_BRANCH_IMAGES:-/var/lib/pg_branch}"
MOUNTS="${PG_BRANCH_MOUNTS:-/mnt/pg_branch}"
VENV="${PG_BRANCH_VENV:-/var/lib/pg_branch/venv}"
export PATH="$HOME/.cargo/bin:$PATH"
# PostgreSQL 16-18 are built or unpacked here by scripts/postgres.sh.
PGS="${PG_BRANCH_PG:-/var/lib/pg_branch/pg}"

# pg_prefix MAJOR: the installation prefix of PostgreSQL MAJOR.
pg_prefix() {
    case $1 in
        15) echo /usr/lib/postgresql/15 ;;
        16) echo "$PGS/16/pgserver/pginstall" ;;
        *) echo "$PGS/$1" ;;
    esac
}
# The version the scripts work with: PG_VERSION=18 bash scripts/demo.sh.
PG_VERSION="${PG_VERSION:-15}"
PG_BIN="$(pg_prefix "$PG_VERSION")/bin"
PG_CONFIG=$PG_BIN/pg_config

# pgrx_init: point pgrx at every PostgreSQL that is installed (it forgets
# the versions a call does not name).
pgrx_init() {
    local args=() v
    for v in 15 16 17 18; do
        [ -x "$(pg_prefix "$v")/bin/pg_config" ] && args+=("--pg$v" "$(pg_prefix "$v")/bin/pg_config")
    done
    cargo pgrx init "${args[@]}" >&2
}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and mounts loop images)"; }

# mount_image NAME SIZE MKFS...: a sparse image file formatted by MKFS,
# loop-mounted at $MOUNTS/NAME; prints the mount point. Idempotent.
mount_image() {
    local name=$1 size=$2; shift 2
    local img="$IMAGES/$name.img" mnt="$MOUNTS/$name"
    mkdir -p "$IMAGES" "$mnt"
    if ! mountpoint -q "$mnt"; then
        if [ ! -s "$img" ]; then
            truncate -s "$size" "$img"
            "$@" "$img" >/dev/null
        fi
        mount -o loop "$img" "$mnt"
    fi
    chmod 755 "$mnt"
    echo "$mnt"
}

mount_btrfs() { mount_image btrfs "${1:-40G}" mkfs.btrfs -q; }
# A second btrfs filesystem, for standbys: a standby shares no blocks with its primary.
mount_btrfs2() { mount_image btrfs2 20G mkfs.btrfs -q; }
mount_xfs() { mount_image xfs 4G mkfs.xfs -q -m reflink=1; }
mount_ext4() { mount_image ext4 2G mkfs.ext4 -q; }

# fs_type DIR: the filesystem type of DIR (btrfs, xfs, ext4, ...).
fs_type() { stat -f -c %T "$1"; }

# pgrx_test: the `cargo pgrx test` suite (src/pg_tests/) for $PG_VERSION.
# pgrx-tests starts its own server as user postgres (through sudo) with
# its data directory under $PG_BRANCH_TEST_BTRFS/pgrx, and installs a test
# build of the extension there first (the old library unlinked, as below).
pgrx_test() {
    local data="$PG_BRANCH_TEST_BTRFS/pgrx"
    mkdir -p "$data" && chmod 777 "$data"
    rm -f "$("$PG_CONFIG" --pkglibdir)/pg_branch.so"
    local target="$REPO/target" flags=()
    [ "$PG_VERSION" = 15 ] || { target="$REPO/target/pg$PG_VERSION"; flags=(--no-default-features); }
    (cd "$REPO" && CARGO_TARGET_DIR="$target" CARGO_PGRX_TEST_RUNAS=postgres CARGO_PGRX_TEST_PGDATA="$data" \
        cargo pgrx test "pg$PG_VERSION" "${flags[@]}")
}

# install_extension [--release]: build pg_branch for $PG_VERSION and
# install it there (each version builds in its own target directory).
# The old library is unlinked first: cargo pgrx rewrites it in place, and a
# server that has it mapped would die of SIGBUS; unlinked, it keeps its copy.
install_extension() {
    rm -f "$("$PG_CONFIG" --pkglibdir)/pg_branch.so"
    if [ "$PG_VERSION" = 15 ]; then
        (cd "$REPO" && cargo pgrx install --pg-config "$PG_CONFIG" "$@") >&2
    else
        (cd "$REPO" && CARGO_TARGET_DIR="$REPO/target/pg$PG_VERSION" cargo pgrx install \
            --pg-config "$PG_CONFIG" --no-default-features --features "pg$PG_VERSION" "$@") >&2
    fi
    # The command-line tool (pg_branch fork) goes beside pg_ctl and
    # pg_basebackup.
    local tool
    tool=$(build_command_line_tool) || return 1
    install -m 755 "$tool" "$("$PG_CONFIG" --bindir)/pg_branch"
}

# build_command_line_tool: build `pg_branch` (fork/), print its path. It
# speaks the wire protocol, so one build serves every version.
build_command_line_tool() {
    (cd "$REPO" && cargo build --release -p pg_branch_fork) >&2 || return 1
    echo "$REPO/target/release/pg_branch"
}
