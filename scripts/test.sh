#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (PostgreSQL
# 16-18 included, cached after the first run), mounts btrfs, XFS (reflink)
# and ext4 loop images, checks formatting and lints for every PostgreSQL
# version, runs the storage tests on the real filesystems, then for each
# version the pgrx suite (src/pg_tests/: one server, the SQL API, settings,
# option parsing and the hook's decisions) and the server tests (tests/:
# real clusters, crashes, standbys, backups, filesystems). Run as root.
#
#   scripts/test.sh                          everything
#   scripts/test.sh -k parity                only the server tests matching "parity"
#   PG_VERSIONS=18 scripts/test.sh           one PostgreSQL version
#
# PostgreSQL 15 and 18 run every server test; 16 and 17 run the parity,
# fidelity, branch, filesystem, live-template and upgrade suites (FULL_VERSIONS,
# SOME_TESTS). Every version then runs PostgreSQL's own regression suite
# with and without pg_branch (scripts/regress.sh), one counted step each.
# Last, the Debian package of PostgreSQL 15 is built and tested.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
cd "$REPO"

PG_VERSIONS=${PG_VERSIONS:-15 18 16 17}
FULL_VERSIONS=${FULL_VERSIONS:-15 18}
SOME_TESTS=(tests/test_parity.py tests/test_fidelity.py tests/test_branch.py tests/test_filesystems.py tests/test_live_template.py
            tests/test_upgrade.py tests/test_registry.py tests/test_diverged.py tests/test_fork.py)

bash scripts/setup.sh
for v in $PG_VERSIONS; do
    [ "$v" = 15 ] || bash scripts/postgres.sh "$v"
done

export PG_BRANCH_TEST_BTRFS PG_BRANCH_TEST_BTRFS2 PG_BRANCH_TEST_XFS PG_BRANCH_TEST_EXT4
PG_BRANCH_TEST_BTRFS=$(mount_btrfs)
PG_BRANCH_TEST_BTRFS2=$(mount_btrfs2)
PG_BRANCH_TEST_XFS=$(mount_xfs)
PG_BRANCH_TEST_EXT4=$(mount_ext4)

passed=0 failed=0 skipped=0
count_cargo_tests() { # cargo prints one "test result: ok. N passed; M failed" line per binary
    local p f
    read -r p f < <(echo "$1" | awk '/^test result:/ {p += $4; f += $6} END {print p+0, f+0}')
    passed=$((passed + p)); failed=$((failed + f))
}
step() { # step NAME COMMAND...: run a check, count it
    say "$1"; shift
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*" >&2; fi
}

if [ $# -eq 0 ]; then
    step "cargo fmt --check" cargo fmt --all -- --check
    for v in $PG_VERSIONS; do
        if [ "$v" = 15 ]; then
            step "cargo clippy -D warnings (PostgreSQL 15)" cargo clippy --workspace --all-targets -- -D warnings
        else
            step "cargo clippy -D warnings (PostgreSQL $v)" env CARGO_TARGET_DIR="$REPO/target/pg$v" \
                cargo clippy --all-targets --no-default-features --features "pg$v" -- -D warnings
        fi
    done
    step "pyflakes (test and benchmark scripts)" "$VENV/bin/pyflakes" tests bench scripts
    step "no import circles between modules" python3 scripts/import_cycles.py src storage/src fork/src
    say "storage tests on btrfs, XFS and ext4 loop mounts; the fork command's unit tests"
    if out=$(cargo test -p pg_branch_storage -p pg_branch_fork 2>&1); then :; else failed=$((failed + 1)); fi
    echo "$out"
    count_cargo_tests "$out"
fi

for v in $PG_VERSIONS; do
    # The pgrx suite first: it installs a test build, which the next step
    # replaces with the real one.
    if [ $# -eq 0 ]; then
        say "PostgreSQL $v: the pgrx test suite (cargo pgrx test pg$v)"
        if out=$(PG_VERSION=$v PG_CONFIG="$(pg_prefix "$v")/bin/pg_config" pgrx_test 2>&1); then :; else
            failed=$((failed + 1)); echo "FAILED: cargo pgrx test pg$v" >&2
        fi
        echo "$out" | grep -v '^ *Compiling '
        count_cargo_tests "$out"
    fi
    (
        PG_VERSION=$v
        PG_BIN="$(pg_prefix "$v")/bin"
        PG_CONFIG=$PG_BIN/pg_config
        say "PostgreSQL $v: building and installing pg_branch"
        install_extension
    ) || { failed=$((failed + 1)); echo "FAILED: install into PostgreSQL $v" >&2; continue; }

    # Named test files replace the default selection.
    tests=(tests)
    [[ " $FULL_VERSIONS " == *" $v "* ]] || tests=("${SOME_TESTS[@]}")
    for a in "$@"; do [[ $a == tests/* ]] && tests=(); done
    say "PostgreSQL $v: server tests (pytest) on real clusters: ${tests[*]}"
    log=$(mktemp)
    set +e
    PG_BIN="$(pg_prefix "$v")/bin" "$VENV/bin/pytest" -p no:cacheprovider -q -rfEs "${tests[@]}" "$@" 2>&1 | tee "$log"
    set -e
    # pytest's summary line: "== 3 failed, 60 passed, 1 error in 12.3s ==".
    read -r p f < <(awk '/ in [0-9.]+s/ && /(passed|failed|error|skipped|deselected)/ {
            p = f = 0
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^passed/) p = $(i - 1)
                if ($i ~ /^(failed|errors?)/) f += $(i - 1)
            }
            seen = 1
        }
        END { if (!seen) f = 1; print p + 0, f + 0 }' "$log")
    rm -f "$log"
    echo "PostgreSQL $v: $p passed, $f failed"
    passed=$((passed + p)); failed=$((failed + f))

    # PostgreSQL's own regression suite, stock and with pg_branch: one
    # counted step per version (exit 77: no source of the suite, skipped).
    if [ $# -eq 0 ]; then
        say "PostgreSQL $v: PostgreSQL's regression suite, stock and with pg_branch preloaded"
        set +e
        bash scripts/regress.sh "$v"
        rc=$?
        set -e
        case $rc in
            0) passed=$((passed + 1)) ;;
            77) skipped=$((skipped + 1)) ;;
            *) failed=$((failed + 1)); echo "FAILED: scripts/regress.sh $v" >&2 ;;
        esac
    fi
done

# The Debian package (scripts/package.sh) installed into Debian's own
# PostgreSQL 15 with apt-get, used, removed and purged
# (tests/test_package.py); then the source build goes back in its place.
package_test() {
    local deb
    deb=$(PG_VERSION=15 bash scripts/package.sh) || return 1
    ls -l "$deb"
    PG_BRANCH_DEB=$deb PG_BIN=/usr/lib/postgresql/15/bin "$VENV/bin/pytest" -p no:cacheprovider -q -rfEs \
        tests/test_package.py
}
if [ $# -eq 0 ] && [[ " $PG_VERSIONS " == *" 15 "* ]]; then
    step "the Debian package: built, installed with apt-get into PostgreSQL 15, used, removed, purged" package_test
    (PG_VERSION=15 PG_BIN=/usr/lib/postgresql/15/bin PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config install_extension) ||
        { failed=$((failed + 1)); echo "FAILED: reinstall into PostgreSQL 15" >&2; }
fi

echo
echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
