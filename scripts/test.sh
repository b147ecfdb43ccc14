#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, mounts
# btrfs, XFS (reflink) and ext4 loop images, checks formatting and lints,
# runs the storage tests on the real filesystems and the server tests
# against real PostgreSQL 15 clusters on them. Run as root.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -k parity       only the server tests matching "parity"
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
cd "$REPO"

bash scripts/setup.sh

export PG_BRANCH_TEST_BTRFS PG_BRANCH_TEST_BTRFS2 PG_BRANCH_TEST_XFS PG_BRANCH_TEST_EXT4
PG_BRANCH_TEST_BTRFS=$(mount_btrfs)
PG_BRANCH_TEST_BTRFS2=$(mount_btrfs2)
PG_BRANCH_TEST_XFS=$(mount_xfs)
PG_BRANCH_TEST_EXT4=$(mount_ext4)

passed=0 failed=0
step() { # step NAME COMMAND...: run a check, count it
    say "$1"; shift
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*" >&2; fi
}

if [ $# -eq 0 ]; then
    step "cargo fmt --check" cargo fmt --all -- --check
    step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
    step "pyflakes (test and benchmark scripts)" "$VENV/bin/pyflakes" tests bench
    say "storage tests on btrfs, XFS and ext4 loop mounts"
    if out=$(cargo test -p pg_branch_storage 2>&1); then :; else failed=$((failed + 1)); fi
    echo "$out"
    # cargo prints one "test result: ok. N passed; M failed" line per binary.
    read -r p f < <(echo "$out" | awk '/^test result:/ {p += $4; f += $6} END {print p+0, f+0}')
    passed=$((passed + p)); failed=$((failed + f))
fi

say "building and installing pg_branch into PostgreSQL 15"
install_extension

say "server tests (pytest) on real clusters"
log=$(mktemp)
set +e
"$VENV/bin/pytest" -p no:cacheprovider -q -rfE tests "$@" 2>&1 | tee "$log"
set -e
# pytest's summary line: "== 3 failed, 60 passed, 1 error in 12.3s ==".
read -r p f < <(awk '/ in [0-9.]+s/ && /(passed|failed|error)/ {
        p = f = 0
        for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed/) p = $(i - 1)
            if ($i ~ /^(failed|errors?)/) f += $(i - 1)
        }
        seen = 1
    }
    END { if (!seen) f = 1; print p + 0, f + 0 }' "$log")
passed=$((passed + p)); failed=$((failed + f))
rm -f "$log"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
