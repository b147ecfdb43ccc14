"""The branch suite on every filesystem pg_branch meets: btrfs (snapshot and
reflink), XFS (reflink) and ext4 (core's copy with one NOTICE); templates
spread over tablespaces on different filesystems; and the filesystem's own
failures (full, read-only, permission denied): a clear error naming the
path and the errno, and nothing left behind."""

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from harness import fingerprint as app_contents, exclusive_bytes, is_subvolume, mount, tablespace

APP = """
    CREATE TABLE accounts (id bigserial PRIMARY KEY, balance int NOT NULL, note text);
    INSERT INTO accounts (balance, note) SELECT g % 1000, repeat('x', g % 50) FROM generate_series(1, 20000) g;
    CREATE INDEX ON accounts (balance);
    CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 100) g;
"""


def fingerprint(cluster, db):
    """The contents of the app tables, table scratch included."""
    return app_contents(cluster, db, "(SELECT count(*) FROM scratch)")


def create(cluster, statement):
    """Run a CREATE DATABASE; return its NOTICEs as (message, detail)."""
    notices = []
    with cluster.connect() as conn:
        # A notice's fields are readable only inside the handler.
        conn.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail)))
        conn.execute(statement)
    return notices


def last_method(cluster, statement):
    """Run `statement` in one session and return what last_branch() says
    (None when no branch was made)."""
    with cluster.connect() as conn:
        conn.execute(statement)
        row = conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()
        return row[0] if row else None


EXPECTED = {"branch": "snapshot", "xfs": "reflink", "ext4": None}


@pytest.mark.parametrize("fs", ["branch", "xfs", "ext4"])
def test_branch_suite_on_each_filesystem(request, fs):
    """The same branch behaviour on btrfs, XFS and ext4; only the method
    differs (ext4: core's copy, announced by one NOTICE)."""
    c = request.getfixturevalue(fs)
    for db in ("fs_app", "fs_b1", "fs_b2"):
        c.sql(f"DROP DATABASE IF EXISTS {db}")
    c.sql("CREATE DATABASE fs_app")
    c.sql(APP, dbname="fs_app")
    if EXPECTED[fs] is None:
        # Core's copy: nobody may be connected to the template.
        notices, temp = create(c, "CREATE DATABASE fs_b1 TEMPLATE fs_app"), None
    else:
        with c.connect(dbname="fs_app") as holder:
            # A temporary table of a session connected to the template.
            holder.execute("CREATE TEMP TABLE mine AS SELECT 1 AS x")
            temp = holder.execute("SELECT pg_relation_filepath('mine')").fetchone()[0].split("/")[-1]
            notices = create(c, "CREATE DATABASE fs_b1 TEMPLATE fs_app")
    if EXPECTED[fs] is None:
        assert [m for m, _ in notices] == ['template "fs_app" cannot be branched, copying it instead']
        assert "cannot clone files" in notices[0][1]
    else:
        assert notices == []
    assert fingerprint(c, "fs_b1") == fingerprint(c, "fs_app")
    if EXPECTED[fs] is not None:
        assert not (c.db_path("fs_b1") / temp).exists(), "temporary relations are not copied"

    # Changes stay apart, both ways.
    c.sql("UPDATE accounts SET balance = balance + 1 WHERE id <= 100", dbname="fs_b1")
    c.sql("DELETE FROM accounts WHERE id > 19000", dbname="fs_app")
    assert c.one("SELECT count(*) FROM accounts", dbname="fs_b1") == 20000
    assert c.one("SELECT count(*) FROM accounts", dbname="fs_app") == 19000

    # A branch of a branch, made by the best method this filesystem has.
    assert last_method(c, "CREATE DATABASE fs_b2 TEMPLATE fs_b1") == EXPECTED[fs]
    assert fingerprint(c, "fs_b2") == fingerprint(c, "fs_b1")
    c.sql("CHECKPOINT")
    # The unlogged table is empty after a crash only if its init fork came along.
    assert c.one("SELECT count(*) FROM scratch", dbname="fs_b2") == 100
    storage = c.sql("SELECT branch_method FROM pgbranch.database_storage() WHERE datname = 'fs_b2'")
    assert storage == [(EXPECTED[fs],)]
    for db in ("fs_app", "fs_b1", "fs_b2"):
        c.sql(f"DROP DATABASE {db}")


def tablespace_dirs(cluster, ts):
    """The database directories in tablespace `ts`, by name."""
    oid = cluster.one("SELECT oid FROM pg_tablespace WHERE spcname = %s", params=(ts,))
    link = cluster.data / "pg_tblspc" / str(oid)
    (version,) = list(link.iterdir())
    return version, sorted(p.name for p in version.iterdir())


def all_extents_shared(path):
    out = subprocess.run(["filefrag", "-v", path], capture_output=True, text=True, check=True).stdout
    extents = [line for line in out.splitlines() if line.strip()[:1].isdigit() and ":" in line]
    return bool(extents) and all("shared" in line for line in extents)


@pytest.fixture
def spread(branch):
    """Tablespaces on the data directory's btrfs, on XFS and on ext4."""
    dbs = ("ts_tpl", "ts_b1", "ts_moved_same", "ts_moved_xfs", "ts_ext4_tpl", "ts_b2")
    for db in dbs:
        branch.sql(f"DROP DATABASE IF EXISTS {db}")
    names = {
        "same": tablespace(branch, "ts_btrfs", mount("PG_BRANCH_TEST_BTRFS") / "pytest-ts-btrfs"),
        "xfs": tablespace(branch, "ts_xfs", mount("PG_BRANCH_TEST_XFS") / "pytest-ts-xfs"),
        "ext4": tablespace(branch, "ts_ext4", mount("PG_BRANCH_TEST_EXT4") / "pytest-ts-ext4"),
    }
    yield names
    for db in dbs:
        branch.sql(f"DROP DATABASE IF EXISTS {db}")
    for ts in names.values():
        branch.sql(f"DROP TABLESPACE IF EXISTS {ts}")


def test_each_tablespace_is_branched_by_its_own_best_method(branch, spread):
    branch.sql("CREATE DATABASE ts_tpl")
    branch.sql("""
        CREATE TABLE on_default AS SELECT g FROM generate_series(1, 5000) g;
        CREATE TABLE on_btrfs TABLESPACE ts_btrfs AS SELECT g FROM generate_series(1, 6000) g;
        CREATE TABLE on_xfs TABLESPACE ts_xfs AS SELECT g, repeat('y', 500) AS pad FROM generate_series(1, 7000) g;
    """, dbname="ts_tpl")
    branch.sql("CHECKPOINT")
    # A mix of methods is reported as "reflink" (not everything was a snapshot).
    assert last_method(branch, "CREATE DATABASE ts_b1 TEMPLATE ts_tpl") == "reflink"
    for table, n in (("on_default", 5000), ("on_btrfs", 6000), ("on_xfs", 7000)):
        assert branch.one(f"SELECT count(*) FROM {table}", dbname="ts_b1") == n
    oid = branch.one("SELECT oid FROM pg_database WHERE datname = 'ts_b1'")
    assert is_subvolume(branch.data / "base" / str(oid))
    btrfs_version, _ = tablespace_dirs(branch, "ts_btrfs")
    assert is_subvolume(btrfs_version / str(oid)), "a plain btrfs directory is reflinked into a subvolume"
    xfs_version, _ = tablespace_dirs(branch, "ts_xfs")
    rel = branch.one("SELECT pg_relation_filepath('on_xfs')", dbname="ts_b1")
    assert all_extents_shared(branch.data / rel), "the XFS copy shares its extents"
    methods = dict(branch.sql("SELECT tablespace, branch_method FROM pgbranch.database_storage() "
                              "WHERE datname = 'ts_b1'"))
    assert methods == {"pg_default": "snapshot", "ts_btrfs": "snapshot", "ts_xfs": "reflink"}


def test_tablespace_option_to_the_same_filesystem_branches(branch, spread):
    branch.sql("CREATE DATABASE ts_tpl")
    branch.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 3000) g", dbname="ts_tpl")
    assert last_method(branch, "CREATE DATABASE ts_moved_same TEMPLATE ts_tpl TABLESPACE ts_btrfs") == "snapshot"
    oid = branch.one("SELECT oid FROM pg_database WHERE datname = 'ts_moved_same'")
    version, names = tablespace_dirs(branch, "ts_btrfs")
    assert str(oid) in names and is_subvolume(version / str(oid))
    assert exclusive_bytes(version / str(oid)) < 1 << 20
    assert branch.one("SELECT count(*) FROM t", dbname="ts_moved_same") == 3000
    assert branch.one("SELECT spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = dattablespace "
                      "WHERE datname = 'ts_moved_same'") == "ts_btrfs"


def test_tablespace_option_to_another_filesystem_is_copied_by_core(branch, spread):
    branch.sql("CREATE DATABASE ts_tpl")
    branch.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 3000) g", dbname="ts_tpl")
    notices = create(branch, "CREATE DATABASE ts_moved_xfs TEMPLATE ts_tpl TABLESPACE ts_xfs")
    assert [m for m, _ in notices] == ['template "ts_tpl" cannot be branched, copying it instead']
    assert "different filesystems" in notices[0][1]
    assert branch.one("SELECT count(*) FROM t", dbname="ts_moved_xfs") == 3000
    oid = branch.one("SELECT oid FROM pg_database WHERE datname = 'ts_moved_xfs'")
    assert str(oid) in tablespace_dirs(branch, "ts_xfs")[1]
    # Its own branches, on XFS, are reflinks.
    assert last_method(branch, "CREATE DATABASE ts_b2 TEMPLATE ts_moved_xfs") == "reflink"
    assert branch.one("SELECT count(*) FROM t", dbname="ts_b2") == 3000


def test_a_template_with_a_tablespace_that_cannot_clone_is_copied_by_core(branch, spread):
    branch.sql("CREATE DATABASE ts_ext4_tpl")
    branch.sql("CREATE TABLE on_ext4 TABLESPACE ts_ext4 AS SELECT g FROM generate_series(1, 4000) g",
               dbname="ts_ext4_tpl")
    notices = create(branch, "CREATE DATABASE ts_b1 TEMPLATE ts_ext4_tpl")
    assert [m for m, _ in notices] == ['template "ts_ext4_tpl" cannot be branched, copying it instead']
    assert "ext4" in notices[0][1]
    assert branch.one("SELECT count(*) FROM on_ext4", dbname="ts_b1") == 4000


@contextmanager
def small_filesystem(kind, size):
    """A loop-mounted filesystem of `size` made for one test, removed after."""
    work = Path(tempfile.mkdtemp(prefix=f"pg_branch_{kind}_", dir="/var/tmp"))
    work.chmod(0o755)
    image, mnt = work / "image", work / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", size, image], check=True)
    mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if kind == "xfs" else ["mkfs.btrfs", "-q"]
    subprocess.run([*mkfs, image], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
    mnt.chmod(0o755)
    try:
        yield mnt
    finally:
        subprocess.run(["mount", "-o", "remount,rw", mnt], capture_output=True)
        subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(work)


def assert_failed_cleanly(cluster, statement, sqlstate, *fragments, ts, before):
    with pytest.raises(psycopg.Error) as e:
        cluster.sql(statement)
    assert e.value.sqlstate == sqlstate, e.value
    for f in fragments:
        assert f in str(e.value), e.value
    assert cluster.one("SELECT count(*) FROM pg_database WHERE datname = 'fs_err'") == 0
    assert tablespace_dirs(cluster, ts)[1] == before, "nothing left behind"
    return e.value


def fill(mnt):
    """Fill the filesystem at `mnt` to its last allocatable block."""
    st = os.statvfs(mnt)
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize - (8 << 20)), mnt / "filler"], check=True)
    for i in range(10000):
        if subprocess.run(["fallocate", "-l", "4K", mnt / f"filler{i}"], capture_output=True).returncode:
            return
    raise AssertionError(f"{mnt} did not fill up")


def test_a_full_filesystem_fails_cleanly_and_the_template_is_untouched(branch):
    branch.sql("DROP DATABASE IF EXISTS fs_err")
    branch.sql("DROP DATABASE IF EXISTS full_tpl")
    with small_filesystem("xfs", "320M") as mnt:
        ts = tablespace(branch, "ts_small", mnt / "ts")
        try:
            create(branch, "CREATE DATABASE full_tpl TABLESPACE ts_small")
            branch.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g", dbname="full_tpl")
            branch.sql("CHECKPOINT")
            before = tablespace_dirs(branch, ts)[1]
            fill(mnt)
            assert_failed_cleanly(branch, "CREATE DATABASE fs_err TEMPLATE full_tpl", "53100",
                                  "No space left on device", "pg_tblspc/", ts=ts, before=before)
            assert branch.one("SELECT count(*) FROM t", dbname="full_tpl") == 20000
            for f in mnt.glob("filler*"):
                f.unlink()
            assert last_method(branch, "CREATE DATABASE fs_err TEMPLATE full_tpl") == "reflink"
            assert branch.one("SELECT count(*) FROM t", dbname="fs_err") == 20000
        finally:
            branch.sql("DROP DATABASE IF EXISTS fs_err")
            branch.sql("DROP DATABASE IF EXISTS full_tpl")
            branch.sql("DROP TABLESPACE IF EXISTS ts_small")


def test_a_read_only_filesystem_fails_cleanly(branch):
    for db in ("fs_err", "ro_plain", "ro_sub"):
        branch.sql(f"DROP DATABASE IF EXISTS {db}")
    with small_filesystem("btrfs", "300M") as mnt:
        ts = tablespace(branch, "ts_ro", mnt / "ts")
        try:
            create(branch, "CREATE DATABASE ro_plain TABLESPACE ts_ro")  # core's copy: a plain directory
            assert last_method(branch, "CREATE DATABASE ro_sub TEMPLATE ro_plain") == "reflink"  # a subvolume
            branch.sql("CHECKPOINT")
            before = tablespace_dirs(branch, ts)[1]
            subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
            # Both paths say what failed, where. (The server itself opens
            # relation files read-write, so reading the template may be
            # what fails first.)
            for template in ("ro_sub", "ro_plain"):
                assert_failed_cleanly(branch, f"CREATE DATABASE fs_err TEMPLATE {template}", "42501",
                                      "pg_tblspc/", "Read-only file system", ts=ts, before=before)
            subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
            assert last_method(branch, "CREATE DATABASE fs_err TEMPLATE ro_sub") == "snapshot"
        finally:
            subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
            for db in ("fs_err", "ro_sub", "ro_plain"):
                branch.sql(f"DROP DATABASE IF EXISTS {db}")
            branch.sql("DROP TABLESPACE IF EXISTS ts_ro")


def test_an_unreadable_file_fails_cleanly_with_its_name(xfs):
    xfs.sql("DROP DATABASE IF EXISTS fs_err")
    xfs.sql("DROP DATABASE IF EXISTS perm_tpl")
    xfs.sql("CREATE DATABASE perm_tpl")
    xfs.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g", dbname="perm_tpl")
    path = xfs.db_path("perm_tpl") / "99999"
    path.write_bytes(b"\0" * 8192)  # root's, mode 0600 by umask below
    os.chmod(path, 0o600)
    try:
        before = set(os.listdir(xfs.data / "base"))
        with pytest.raises(psycopg.Error) as e:
            xfs.sql("CREATE DATABASE fs_err TEMPLATE perm_tpl")
        assert e.value.sqlstate == "42501", e.value
        assert f'could not reflink file "{path.relative_to(xfs.data)}": Permission denied' in str(e.value) \
            or f'could not reflink file "{path}": Permission denied' in str(e.value), e.value
        assert set(os.listdir(xfs.data / "base")) == before, "the partial copy was removed"
        assert xfs.one("SELECT count(*) FROM pg_database WHERE datname = 'fs_err'") == 0
        path.unlink()
        xfs.sql("CREATE DATABASE fs_err TEMPLATE perm_tpl")
        assert xfs.one("SELECT count(*) FROM t", dbname="fs_err") == 1000
    finally:
        path.unlink(missing_ok=True)
        xfs.sql("DROP DATABASE IF EXISTS fs_err")
        xfs.sql("DROP DATABASE IF EXISTS perm_tpl")
