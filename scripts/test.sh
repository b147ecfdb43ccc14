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

export PG_BRANCH_TEST_BTRFS PG_BRANCH_TEST_XFS PG_BRANCH_TEST_EXT4
PG_BRANCH_TEST_BTRFS=$(mount_btrfs)
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
# pytest's last line: "== 3 failed, 60 passed in 12.3s ==" (any order).
last=$(grep -E "[0-9]+ (passed|failed)" "$log" | tail -1 || true)
p=$(grep -oE "[0-9]+ passed" <<<"$last" | grep -oE "[0-9]+" || echo 0)
f=$(grep -oE "[0-9]+ (failed|errors?)" <<<"$last" | awk '{s += $1} END {print s + 0}')
[ -n "$last" ] || f=$((f + 1))  # no summary at all: the run broke
passed=$((passed + p)); failed=$((failed + ${f:-0}))
rm -f "$log"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
