"""Set-up without manual work: pgbranch.doctor() says what a cluster gets
and what to fix; convert_to_subvolume() / convert_all_to_subvolumes() turn
existing database directories into btrfs subvolumes online."""

import shutil
import subprocess

import psycopg
import pytest

from harness import Cluster, is_subvolume, mount


def doctor(cluster, conn=None):
    """{item: (status, detail, hint)}"""
    q = "SELECT item, status, detail, hint FROM pgbranch.doctor()"
    rows = conn.execute(q).fetchall() if conn else cluster.sql(q)
    return {item: (status, detail, hint) for item, status, detail, hint in rows}


def plain_database(cluster, name, rows=5000):
    """A database in a plain directory (core's WAL_LOG copy) with a table."""
    cluster.sql(f"DROP DATABASE IF EXISTS {name}")
    cluster.sql(f"CREATE DATABASE {name} STRATEGY wal_log")
    cluster.sql(f"CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, {rows}) g; "
                "CREATE INDEX ON t (h)", dbname=name)
    assert not is_subvolume(cluster.db_path(name))


def content(cluster, db):
    return cluster.sql("SELECT count(*), md5(string_agg(h, ',' ORDER BY g)) FROM t", dbname=db)


def test_doctor_on_btrfs(branch):
    plain_database(branch, "doc_plain")
    rows = doctor(branch)
    assert rows["shared_preload_libraries"][0] == "ok"
    assert rows["pg_branch.enabled"][0] == "ok"
    status, detail, _ = rows["tablespace pg_default"]
    assert status == "ok" and "on btrfs" in detail and "files can be cloned" in detail
    # The filesystem's mount point (the test mount, or one above it when the
    # tests are given a directory inside a mount).
    mountpoint = subprocess.run(["findmnt", "-n", "-o", "TARGET", "-T", str(mount("PG_BRANCH_TEST_BTRFS"))],
                                capture_output=True, text=True, check=True).stdout.strip()
    assert "mounted at " + mountpoint + " " in detail
    status, detail, hint = rows["database doc_plain"]
    assert status == "info" and "reflink each of its" in detail
    assert hint == "SELECT * FROM pgbranch.convert_to_subvolume('doc_plain'); makes its branches O(1) snapshots."
    branch.sql("DROP DATABASE IF EXISTS doc_branch")
    branch.sql("CREATE DATABASE doc_branch TEMPLATE doc_plain")  # a subvolume
    assert doctor(branch)["database doc_branch"][0:2] == ("ok", "branches are btrfs snapshots: O(1) at any size")
    # A branch is a subvolume nested in the data directory's: a snapshot
    # of the data directory would hold it as an empty directory.
    status, detail, hint = doctor(branch)["filesystem snapshots"]
    assert status == "warning" and "btrfs subvolumes" in detail and "pg_basebackup" in hint
    assert rows["max_locks_per_transaction"][0] == "ok"
    assert rows["pg_branch.wal_record"][0] == "info"
    assert rows["orphaned directories"] == ("ok", "none", None)
    with branch.connect() as conn:
        conn.execute("SET pg_branch.enabled = off")
        assert doctor(branch, conn)["pg_branch.enabled"][0] == "warning"
        conn.execute("SET pg_branch.wal_record = core")
        assert doctor(branch, conn)["pg_branch.wal_record"][0] == "ok"
    branch.sql("DROP DATABASE doc_branch")
    branch.sql("DROP DATABASE doc_plain")


def test_doctor_reports_orphans_nocow_tablespaces_and_interrupted_conversions(branch):
    orphan = branch.data / "base" / "999999"
    orphan.mkdir()
    shutil.chown(orphan, "postgres", "postgres")
    nocow = mount("PG_BRANCH_TEST_BTRFS") / "pytest-ts-nocow"
    branch.sql("DROP TABLESPACE IF EXISTS ts_nocow")
    shutil.rmtree(nocow, ignore_errors=True)
    nocow.mkdir()
    subprocess.run(["chattr", "+C", nocow], check=True)
    shutil.chown(nocow, "postgres", "postgres")
    branch.sql(f"CREATE TABLESPACE ts_nocow LOCATION '{nocow}'")
    plain_database(branch, "doc_conv")
    leftover = branch.db_path("doc_conv").with_suffix(".pg_branch_convert")
    leftover.mkdir()
    try:
        rows = doctor(branch)
        status, detail, hint = rows["orphaned directories"]
        assert status == "warning" and str(orphan.relative_to(branch.data)) in detail
        assert hint == "SELECT * FROM pgbranch.remove_orphans();"
        status, detail, hint = rows["tablespace ts_nocow"]
        assert status == "warning" and "No_COW" in detail and "chattr -C" in hint
        status, detail, hint = rows["interrupted conversion"]
        assert status == "warning" and leftover.name in detail
        branch.sql("SELECT * FROM pgbranch.remove_orphans()")
        branch.sql("SELECT * FROM pgbranch.convert_to_subvolume('doc_conv')")
        rows = doctor(branch)
        assert rows["orphaned directories"][0] == "ok"
        assert "interrupted conversion" not in rows
        assert not leftover.exists()
    finally:
        shutil.rmtree(orphan, ignore_errors=True)
        branch.sql("DROP TABLESPACE IF EXISTS ts_nocow")
        branch.sql("DROP DATABASE IF EXISTS doc_conv")


def test_doctor_on_a_filesystem_that_cannot_clone(ext4):
    rows = doctor(ext4)
    status, detail, hint = rows["tablespace pg_default"]
    assert status == "warning" and "ext4" in detail and "cannot clone files" in detail
    assert rows["filesystem snapshots"][0] == "ok"
    assert "btrfs" in hint and "reflink=1" in hint
    status, detail, _ = rows["database template1"]
    assert status == "warning" and detail.startswith("copied by core:")


def test_doctor_is_for_superusers(branch):
    branch.sql("DROP ROLE IF EXISTS doc_user")
    branch.sql("CREATE ROLE doc_user LOGIN")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        branch.sql("SELECT * FROM pgbranch.doctor()", user="doc_user")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        branch.sql("SELECT * FROM pgbranch.convert_to_subvolume('postgres')", user="doc_user")
    branch.sql("DROP ROLE doc_user")


def test_convert_a_database_online(branch):
    plain_database(branch, "cv_one", rows=20000)
    before = content(branch, "cv_one")
    path = branch.db_path("cv_one")
    start = branch.one("SELECT pg_current_wal_lsn()")
    rows = branch.sql("SELECT tablespace, path, result FROM pgbranch.convert_to_subvolume('cv_one')")
    # Read now: after the checkpoints below, the segment may be gone.
    wal = branch.one("SELECT count(*) FROM pg_get_wal_records_info(%s, pg_current_wal_lsn()) "
                     "WHERE resource_manager = 'pg_branch' AND record_type = 'BRANCH_CONVERT'", params=(start,))
    assert wal == 1
    assert len(rows) == 1
    ts, where, result = rows[0]
    assert ts == "pg_default" and where == str(path.relative_to(branch.data)) and result.startswith("converted (")
    assert is_subvolume(path)
    assert content(branch, "cv_one") == before
    # Writes after the conversion land in the new files, and survive a checkpoint.
    branch.sql("UPDATE t SET h = 'changed' WHERE g <= 10", dbname="cv_one")
    branch.sql("CHECKPOINT")
    assert branch.one("SELECT count(*) FROM t WHERE h = 'changed'", dbname="cv_one") == 10
    branch.sql("CREATE EXTENSION amcheck", dbname="cv_one")
    branch.sql("SELECT bt_index_check('t_h_idx', true)", dbname="cv_one")
    # Its branches are now snapshots; converting again changes nothing.
    with branch.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS cv_branch")
        conn.execute("CREATE DATABASE cv_branch TEMPLATE cv_one")
        assert conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone() == ("snapshot",)
    assert branch.sql("SELECT result FROM pgbranch.convert_to_subvolume('cv_one')") == [("already a subvolume",)]
    branch.sql("DROP DATABASE cv_branch")
    branch.sql("DROP DATABASE cv_one")


def test_convert_refuses_what_it_cannot_do(branch):
    plain_database(branch, "cv_busy")
    path = branch.db_path("cv_busy")
    with pytest.raises(psycopg.errors.InvalidCatalogName):
        branch.sql("SELECT * FROM pgbranch.convert_to_subvolume('no_such_db')")
    branch.sql("CREATE EXTENSION pg_branch", dbname="cv_busy")
    with pytest.raises(psycopg.errors.ObjectInUse) as e:
        branch.sql("SELECT * FROM pgbranch.convert_to_subvolume('cv_busy')", dbname="cv_busy")
    assert "currently open database" in str(e.value)
    with branch.connect(dbname="cv_busy") as other:
        other.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ObjectInUse) as e:
            branch.sql("SELECT * FROM pgbranch.convert_to_subvolume('cv_busy')")
        assert 'database "cv_busy" is being accessed by other users' in str(e.value)
        assert e.value.diag.message_detail == "There is 1 other session using the database."
    assert not is_subvolume(path)
    branch.sql("DROP DATABASE cv_busy")


def test_convert_all_on_a_fresh_cluster():
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-convert-all", 5503).init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE busy STRATEGY wal_log")
        with c.connect(dbname="busy"):
            rows = c.sql("SELECT datname, result FROM pgbranch.convert_all_to_subvolumes()")
        results = dict(rows)
        assert results["template0"].startswith("converted") and results["template1"].startswith("converted")
        assert results["postgres"].startswith("skipped: cannot convert the currently open database")
        assert results["busy"].startswith('skipped: database "busy" is being accessed by other users')
        for db in ("template0", "template1"):
            oid = c.one("SELECT oid FROM pg_database WHERE datname = %s", params=(db,))
            assert is_subvolume(c.data / "base" / str(oid))
        # The converted template1 is branched by snapshot, and still works.
        with c.connect() as conn:
            conn.execute("CREATE DATABASE after")
            assert conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone() == ("snapshot",)
        assert c.one("SELECT count(*) FROM pg_class", dbname="after") > 300
        doc = dict(c.sql("SELECT item, status FROM pgbranch.doctor()"))
        assert doc["database template1"] == "ok" and doc["database busy"] == "info"
        # A crash right after: recovery replays the conversion records
        # onto directories that already are subvolumes.
        c.kill9()
        c.start()
        assert c.one("SELECT count(*) FROM pg_class", dbname="template1") > 300
    finally:
        c.stop(mode="immediate", check=False)
