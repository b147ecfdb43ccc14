"""pgbranch.reset(): a branch gets a fresh branch of its parent (or of
another database) as its contents, and keeps everything else that makes
it that database (src/reset.rs), on btrfs (a snapshot) and XFS (reflinks)."""

import psycopg
import pytest

from harness import make_standby, mount, wait_replayed


@pytest.fixture(params=["btrfs", "xfs"])
def cluster(request):
    c = request.getfixturevalue("branch" if request.param == "btrfs" else "xfs")
    c.fs = request.param
    c.sql("DROP ROLE IF EXISTS rs_reader")
    c.sql("CREATE ROLE rs_reader")
    c.sql("CREATE DATABASE rs_app STRATEGY FILE_COPY")
    c.sql("CREATE TABLE t (id int PRIMARY KEY, v int)", dbname="rs_app")
    c.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g", dbname="rs_app")
    c.sql("CREATE TABLE d AS SELECT g AS id FROM generate_series(1, 5000) g", dbname="rs_app")
    c.sql("CREATE DATABASE rs_b TEMPLATE rs_app")
    yield c
    for db in ("rs_b", "rs_other", "rs_app"):
        c.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    c.sql("DROP ROLE IF EXISTS rs_reader")


def identity(c, db):
    return c.one(
        """SELECT row(d.oid, d.datname, d.datdba, d.datacl::text, d.datconnlimit,
                      pg_catalog.shobj_description(d.oid, 'pg_database'),
                      (SELECT setconfig::text FROM pg_db_role_setting s
                        WHERE s.setdatabase = d.oid AND s.setrole = 0))::text
             FROM pg_database d WHERE datname = %s""",
        params=(db,),
    )


def test_reset_keeps_the_database_and_takes_the_parents_contents(cluster):
    c = cluster
    c.sql("UPDATE t SET v = 1", dbname="rs_b")
    c.sql("CREATE TABLE only_b (x int)", dbname="rs_b")
    c.sql("ALTER DATABASE rs_b SET work_mem = '7MB'")
    c.sql("COMMENT ON DATABASE rs_b IS 'a branch'")
    c.sql("GRANT CONNECT ON DATABASE rs_b TO rs_reader")
    c.sql("ALTER DATABASE rs_b CONNECTION LIMIT 5")
    c.sql("INSERT INTO t SELECT g, 2 FROM generate_series(1001, 1500) g", dbname="rs_app")
    # A frozen branch's horizon is newer than its parent's; the parent's
    # files come back with the parent's horizon (catalog::lower_frozen_ids).
    c.sql("VACUUM (FREEZE)", dbname="rs_b")
    horizon = "SELECT datfrozenxid::text FROM pg_database WHERE datname = %s"
    assert c.one(horizon, params=("rs_b",)) != c.one(horizon, params=("rs_app",))
    before = identity(c, "rs_b")

    c.sql("SELECT pgbranch.reset('rs_b')")

    assert identity(c, "rs_b") == before
    assert c.one(horizon, params=("rs_b",)) == c.one(horizon, params=("rs_app",))
    assert c.one("SELECT count(*), sum(v) FROM t", dbname="rs_b") == c.one(
        "SELECT count(*), sum(v) FROM t", dbname="rs_app"
    )
    assert c.one("SELECT to_regclass('only_b') IS NULL", dbname="rs_b")
    assert c.one("SHOW work_mem", dbname="rs_b") == "7MB"
    assert c.one(
        "SELECT row(parent, reset_count, reset_at IS NOT NULL)::text FROM pgbranch.branches WHERE name = 'rs_b'"
    ) == "(rs_app,1,t)"
    # Writable and consistent afterwards, and again after a second reset.
    c.sql("INSERT INTO t VALUES (5000, 5)", dbname="rs_b")
    c.sql("SELECT pgbranch.reset('rs_b')")
    assert c.one("SELECT count(*) FROM t", dbname="rs_b") == 1500
    assert c.one("SELECT reset_count FROM pgbranch.branches WHERE name = 'rs_b'") == 2


def test_a_relation_the_branch_dropped_survives_the_reset_and_a_checkpoint(cluster):
    """The branch's DROP TABLE leaves the checkpointer an unlink of the
    table's first segment for the next checkpoint. After the reset that
    path holds the parent's table: the unlink must have been cancelled."""
    c = cluster
    c.sql("DROP TABLE d", dbname="rs_b")
    c.sql("SELECT pgbranch.reset('rs_b')")
    c.sql("CHECKPOINT")
    c.sql("CHECKPOINT")
    assert c.one("SELECT count(*) FROM d", dbname="rs_b") == 5000
    path = c.data / c.one("SELECT pg_relation_filepath('d')", dbname="rs_b")
    assert path.stat().st_size > 0


def test_reset_refuses_while_others_are_connected_unless_forced(cluster):
    c = cluster
    with c.connect("rs_b") as other:
        with pytest.raises(psycopg.errors.ObjectInUse) as e:
            c.sql("SELECT pgbranch.reset('rs_b')")
        assert 'database "rs_b" is being accessed by other users' in str(e.value)
        assert e.value.diag.message_detail == "There is 1 other session using the database."
        c.sql("SELECT pgbranch.reset('rs_b', force => true)")
        with pytest.raises(psycopg.OperationalError):
            other.execute("SELECT 1")


def test_reset_from_another_database(cluster):
    c = cluster
    c.sql("CREATE DATABASE rs_other TEMPLATE rs_app")
    c.sql("DELETE FROM t WHERE id > 10", dbname="rs_other")
    c.sql("SELECT pgbranch.reset('rs_b', 'rs_other')")
    assert c.one("SELECT count(*) FROM t", dbname="rs_b") == 10
    assert c.one("SELECT parent FROM pgbranch.branches WHERE name = 'rs_b'") == "rs_other"


@pytest.mark.parametrize(
    "call, error, message",
    [
        ("SELECT pgbranch.reset('nope')", psycopg.errors.InvalidCatalogName, 'database "nope" does not exist'),
        ("SELECT pgbranch.reset('rs_app')", psycopg.errors.WrongObjectType, 'database "rs_app" is not a branch'),
        ("SELECT pgbranch.reset('rs_b', 'nope')", psycopg.errors.InvalidCatalogName, 'database "nope" does not exist'),
        ("SELECT pgbranch.reset('rs_b', 'rs_b')", psycopg.errors.InvalidParameterValue, "from itself"),
        ("BEGIN; SELECT pgbranch.reset('rs_b')", psycopg.errors.ActiveSqlTransaction, "cannot run inside a transaction block"),
    ],
)
def test_bad_input_leaves_the_branch_as_it_was(cluster, call, error, message):
    c = cluster
    c.sql("UPDATE t SET v = 9", dbname="rs_b")
    with c.connect() as conn:
        with pytest.raises(error, match=message):
            for stmt in call.split("; "):
                conn.execute(stmt)
    assert c.one("SELECT sum(v) FROM t", dbname="rs_b") == 9000
    leftovers = [p.name for p in (c.data / "base").iterdir() if p.name.endswith(".pg_branch_reset")]
    assert leftovers == []


def test_the_current_database_cannot_be_reset(cluster):
    c = cluster
    c.sql("CREATE EXTENSION pg_branch", dbname="rs_b")
    with pytest.raises(psycopg.errors.ObjectInUse, match="cannot reset the currently open database"):
        c.sql("SELECT pgbranch.reset('rs_b')", dbname="rs_b")


FINGERPRINT = "SELECT row(count(*), sum(v), sum(hashint4(id)))::text FROM t"


def test_a_standby_resets_with_the_primary_and_its_sessions_go(branch):
    """The BRANCH_RESET record's redo (archive recovery): the standby
    clones its own copy of the source and swaps it in; its hot-standby
    sessions on the branch are cancelled as for a DROP DATABASE."""
    c = branch
    c.sql("CREATE DATABASE rs_app STRATEGY FILE_COPY")
    c.sql("CREATE TABLE t (id int PRIMARY KEY, v int)", dbname="rs_app")
    c.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g", dbname="rs_app")
    c.sql("CREATE DATABASE rs_b TEMPLATE rs_app")
    standby = make_standby(c, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-reset-standby", 5541)
    try:
        c.sql("UPDATE t SET v = 1", dbname="rs_b")
        c.sql("INSERT INTO t SELECT g, 2 FROM generate_series(1001, 1200) g", dbname="rs_app")
        wait_replayed(c, standby)
        reader = standby.connect("rs_b")
        assert reader.execute("SELECT sum(v) FROM t").fetchone()[0] == 1000
        c.sql("SELECT pgbranch.reset('rs_b')")
        wait_replayed(c, standby)
        with pytest.raises(psycopg.OperationalError):
            reader.execute("SELECT 1")
        assert standby.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_b")
        assert c.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_app")
        oid = c.one("SELECT oid FROM pg_database WHERE datname = 'rs_b'")
        assert not (standby.data / "base" / f"{oid}.pg_branch_reset").exists()
        # Later changes of the branch replay onto the new contents.
        c.sql("UPDATE t SET v = 7 WHERE id <= 10", dbname="rs_b")
        wait_replayed(c, standby)
        assert standby.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_b")
        # A restarted standby replays the record again from its last
        # restartpoint and keeps what it built (the directory's mark). The
        # restartpoint its redo made starts that replay after the branch's
        # old records: they must not land on the new contents (they did,
        # 1070 rows of 1200, before redo asked for that restartpoint).
        standby.stop(mode="immediate", check=False)
        standby.start()
        wait_replayed(c, standby)
        assert standby.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_b")
    finally:
        standby.stop(mode="immediate", check=False)
        c.sql("DROP DATABASE IF EXISTS rs_b WITH (FORCE)")
        c.sql("DROP DATABASE IF EXISTS rs_app WITH (FORCE)")


def test_kill_9_after_a_reset_keeps_the_new_contents(branch):
    """Crash recovery replays the reset's record (when no checkpoint has
    completed after it) and finds the directory marked as built for it."""
    c = branch
    c.sql("CREATE DATABASE rs_app STRATEGY FILE_COPY")
    c.sql("CREATE TABLE t (id int PRIMARY KEY, v int)", dbname="rs_app")
    c.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g", dbname="rs_app")
    c.sql("CREATE DATABASE rs_b TEMPLATE rs_app")
    try:
        c.sql("UPDATE t SET v = 1", dbname="rs_b")
        c.sql("SELECT pgbranch.reset('rs_b')")
        c.sql("UPDATE t SET v = 3 WHERE id <= 5", dbname="rs_b")
        want = c.one(FINGERPRINT, dbname="rs_b")
        c.kill9()
        c.start()
        assert c.one(FINGERPRINT, dbname="rs_b") == want
        assert c.one("SELECT reset_count FROM pgbranch.branches WHERE name = 'rs_b'") == 1
    finally:
        c.sql("DROP DATABASE IF EXISTS rs_b WITH (FORCE)")
        c.sql("DROP DATABASE IF EXISTS rs_app WITH (FORCE)")
