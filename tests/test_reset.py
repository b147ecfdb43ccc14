"""pgbranch.reset(): a branch gets a fresh branch of its parent (or of
another database) as its contents, and keeps everything else that makes
it that database (src/reset.rs), on btrfs (a snapshot) and XFS (reflinks)."""

import threading

import psycopg
import pytest

from harness import PG_BIN, Cluster, Gdb, as_postgres, make_standby, mount, oracle, wait_for, wait_replayed


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
    make_parent_and_branch(c)
    standby = None
    try:
        standby = make_standby(c, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-reset-standby", 5541)
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
        if standby is not None:
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


class StoppedReset:
    """`pgbranch.reset('rs_b')` run by a backend that gdb stops at the first
    call of `function`: the deterministic way to act at one step of it.
    A libc call marks each step: `setxattr` right after the clone (the
    "pending" mark, before anything is logged), `renameat2` in the critical
    section (the record flushed, the swap not yet made), `ForceSyncCommit`
    at the end (swapped, not committed)."""

    def __init__(self, cluster, function, sql="SELECT pgbranch.reset('rs_b')"):
        self.conn = cluster.connect()
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.function = function
        self.gdb = Gdb(self.pid)
        self.gdb.run(f"break {function}", "continue")
        self.error = None

        def run():
            try:
                self.conn.execute(sql)
            except psycopg.Error as e:
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not wait_for(self.gdb.stopped):
            lines = "".join(self.gdb.lines)
            self.close()
            raise AssertionError(f"the reset never called {function}: {lines}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def resume(self):
        """Let it go on (breakpoints removed) and wait for its statement."""
        self.gdb.close()
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.conn.close()
        return self.error

    def close(self):
        """Detach (the backend goes on, or was killed) and wait for it."""
        self.gdb.close()
        self.thread.join(60)
        self.conn.close()


def registry_row(c):
    return c.one("SELECT row(parent, reset_count)::text FROM pgbranch.branches WHERE name = 'rs_b'")


def test_a_cancel_during_the_clone_leaves_the_branch_as_it_was(cluster):
    """A cancel that comes while the source is cloned is served right after
    the clone, before anything is logged: the statement fails with 57014,
    and the branch keeps its contents, its registry record and no clone."""
    c = cluster
    c.sql("UPDATE t SET v = 1", dbname="rs_b")
    before = (c.one(FINGERPRINT, dbname="rs_b"), registry_row(c))
    with StoppedReset(c, "setxattr") as r:
        c.sql("SELECT pg_cancel_backend(%s)", params=(r.pid,))
        error = r.resume()
    assert isinstance(error, psycopg.errors.QueryCanceled), error
    assert (c.one(FINGERPRINT, dbname="rs_b"), registry_row(c)) == before
    assert not c.db_path("rs_b").with_suffix(".pg_branch_reset").exists()


def test_a_terminate_during_the_clone_leaves_the_branch_as_it_was(cluster):
    """The same with pg_terminate_backend(): a FATAL, served right after
    the clone. The branch keeps its contents and record; the clone stays
    (a FATAL runs no ERROR cleanup), doctor() shows it, and the next reset
    removes it."""
    c = cluster
    c.sql("UPDATE t SET v = 1", dbname="rs_b")
    before = (c.one(FINGERPRINT, dbname="rs_b"), registry_row(c))
    with StoppedReset(c, "setxattr") as r:
        c.sql("SELECT pg_terminate_backend(%s)", params=(r.pid,))
        error = r.resume()
    assert isinstance(error, psycopg.errors.AdminShutdown), error
    assert wait_for(lambda: c.one("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", params=(r.pid,)) == 0)
    assert (c.one(FINGERPRINT, dbname="rs_b"), registry_row(c)) == before
    assert c.one("SELECT count(*) FROM pgbranch.doctor() WHERE item = 'interrupted reset'") == 1
    c.sql("SELECT pgbranch.reset('rs_b')")
    assert not c.db_path("rs_b").with_suffix(".pg_branch_reset").exists()
    assert registry_row(c) == "(rs_app,1)"


def test_reset_while_the_parent_has_writers(cluster):
    """The parent under pgbench while the branch is reset three times: each
    time the branch gets a consistent state of it (pgbench's invariant and
    amcheck), keeps its identity, and pgbench goes on."""
    c = cluster
    c.sql("CREATE DATABASE rs_pg")
    c.pgbench("-q", "-i", "-s", "2", "rs_pg")
    c.sql("CREATE DATABASE rs_pgb TEMPLATE rs_pg")
    try:
        c.sql("ALTER DATABASE rs_pgb SET work_mem = '9MB'")
        c.sql("GRANT CONNECT ON DATABASE rs_pgb TO rs_reader")
        before = identity(c, "rs_pgb")
        load = c.pgbench("-n", "-c", "2", "-j", "1", "-T", "600", "rs_pg", background=True)
        try:
            assert wait_for(lambda: c.one("SELECT count(*) FROM pgbench_history", dbname="rs_pg") > 0)
            counts = []
            for _ in range(3):
                c.sql("SELECT pgbranch.reset('rs_pgb')")
                counts.append(oracle(c, "rs_pgb"))
                assert identity(c, "rs_pgb") == before
        finally:
            load.terminate()
            load.wait(30)
        assert c.one("SELECT count(*) FROM pgbench_history", dbname="rs_pg") > counts[0]
        assert c.one("SELECT reset_count FROM pgbranch.branches WHERE name = 'rs_pgb'") == 3
    finally:
        c.sql("DROP DATABASE IF EXISTS rs_pgb WITH (FORCE)")
        c.sql("DROP DATABASE IF EXISTS rs_pg WITH (FORCE)")


@pytest.mark.parametrize("signal_function", ["pg_cancel_backend", "pg_terminate_backend"])
def test_a_cancel_or_terminate_after_the_record_waits_for_the_commit(cluster, signal_function):
    """From the record on the reset cannot be rolled back, so a cancel or
    terminate request that comes then is served after the commit: the
    branch has the source's contents and the registry says so. Before
    interrupts were held to the commit, the cancel was served as the
    statement ended, which rolled back the registry record of a reset whose
    swap had been made (the branch held its parent's rows, and its record
    said it had been reset 0 times)."""
    c = cluster
    c.sql("UPDATE t SET v = 1", dbname="rs_b")
    want = c.one(FINGERPRINT, dbname="rs_app")
    with StoppedReset(c, "renameat2") as r:
        c.sql(f"SELECT {signal_function}(%s)", params=(r.pid,))
        error = r.resume()
    assert error is None, error
    # A terminated session ends once the reset has committed and answered.
    if signal_function == "pg_terminate_backend":
        assert wait_for(lambda: c.one("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                      params=(r.pid,)) == 0)
    assert c.one(FINGERPRINT, dbname="rs_b") == want
    assert registry_row(c) == "(rs_app,1)"
    assert not c.db_path("rs_b").with_suffix(".pg_branch_reset").exists()


def test_kill_9_before_the_record_keeps_the_old_contents(branch):
    """A crash after the clone and before the record: the branch keeps its
    contents and its registry record; the clone stays beside it, shown by
    doctor() (not an orphan: its database exists), until the next reset of
    the branch, which removes it and succeeds."""
    c = branch
    make_parent_and_branch(c)
    try:
        c.sql("UPDATE t SET v = 1", dbname="rs_b")
        before = (c.one(FINGERPRINT, dbname="rs_b"), registry_row(c))
        scratch = c.db_path("rs_b").with_suffix(".pg_branch_reset")
        with StoppedReset(c, "setxattr"):
            c.kill9()
        c.start()
        assert (c.one(FINGERPRINT, dbname="rs_b"), registry_row(c)) == before
        assert scratch.is_dir()
        doctor = "SELECT status, hint FROM pgbranch.doctor() WHERE item = 'interrupted reset'"
        assert c.sql(doctor) == [("warning", "Resetting the branch again removes it.")]
        assert c.sql("SELECT * FROM pgbranch.orphans()") == []
        c.sql("SELECT pgbranch.reset('rs_b')")
        assert not scratch.exists()
        assert c.sql(doctor) == []
        assert c.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_app")
        assert registry_row(c) == "(rs_app,1)"
    finally:
        c.sql("DROP DATABASE IF EXISTS rs_b WITH (FORCE)")
        c.sql("DROP DATABASE IF EXISTS rs_app WITH (FORCE)")


def test_kill_9_between_the_record_and_the_swap_finishes_the_swap(branch):
    """A crash after the record is flushed and before the swap: crash
    recovery replays the record, finds the directory not yet swapped and
    the primary's clone beside it, and swaps that in (wal.rs redo_reset).
    The branch then has the parent's contents and the registry says so, it
    is consistent and writable, and no clone is left."""
    c = branch
    make_parent_and_branch(c)
    try:
        c.sql("UPDATE t SET v = 1", dbname="rs_b")
        want = c.one(FINGERPRINT, dbname="rs_app")
        scratch = c.db_path("rs_b").with_suffix(".pg_branch_reset")
        with StoppedReset(c, "renameat2"):
            c.kill9()
        c.start()
        assert c.one(FINGERPRINT, dbname="rs_b") == want
        assert not scratch.exists()
        # The transaction never committed; the registry reads the reset's
        # facts from the contents (registry.rs).
        assert registry_row(c) == "(rs_app,1)"
        c.sql("UPDATE t SET v = 4 WHERE id = 1", dbname="rs_b")
        c.sql("CHECKPOINT")
        assert c.one("SELECT sum(v) FROM t", dbname="rs_b") == 4
    finally:
        c.sql("DROP DATABASE IF EXISTS rs_b WITH (FORCE)")
        c.sql("DROP DATABASE IF EXISTS rs_app WITH (FORCE)")


def test_kill_9_between_the_swap_and_the_commit_keeps_the_registry_in_step(branch):
    """A crash after the swap and before the commit (here, where the reset
    asks for a synchronous commit): the branch keeps the new contents (its
    directory is marked with the record), and the registry, whose record
    never committed, reads the reset's facts from the contents
    (registry.rs). Before the facts went with the contents, the branch held
    rs_other's rows while its record still said rs_app, reset 0 times."""
    c = branch
    make_parent_and_branch(c)
    c.sql("CREATE DATABASE rs_other TEMPLATE rs_app")
    c.sql("UPDATE t SET v = 9", dbname="rs_other")
    try:
        with StoppedReset(c, "ForceSyncCommit", "SELECT pgbranch.reset('rs_b', 'rs_other')"):
            c.kill9()
        c.start()
        assert c.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_other")
        assert registry_row(c) == "(rs_other,1)"
        assert c.one("SELECT branch_lsn > '0/0' AND reset_at IS NOT NULL FROM pgbranch.branches WHERE name = 'rs_b'")
        # The next write of the record stores the facts; a second reset
        # then counts on from them and takes rs_other again (its default
        # source, read as diverged() reads it: registry::read()).
        stored = """SELECT l.label::jsonb ->> 'reset_count' FROM pg_shseclabel l JOIN pg_database d ON d.oid = l.objoid
                     WHERE l.provider = 'pg_branch' AND d.datname = 'rs_b'"""
        assert c.one(stored) == "0"
        c.sql("SELECT pgbranch.set_expiry('rs_b', interval '1 day')")
        assert c.one(stored) == "1"
        c.sql("UPDATE t SET v = 10", dbname="rs_other")
        c.sql("SELECT pgbranch.reset('rs_b')")
        assert c.one(FINGERPRINT, dbname="rs_b") == c.one(FINGERPRINT, dbname="rs_other")
        assert registry_row(c) == "(rs_other,2)"
    finally:
        for db in ("rs_b", "rs_other", "rs_app"):
            c.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_pg_rewind_stops_at_a_reset_only_the_old_primary_made():
    """A reset after the failover, on the old primary only: pg_rewind could
    not bring its branch back block by block (the reset replaced every file
    without logging a block), and the record's XLR_SPECIAL_REL_UPDATE makes
    it stop before it changes anything. The old primary still starts as it
    was; `pg_basebackup` makes it a standby again."""
    p = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-reset-rewind-p", 5542,
                extra_conf="wal_log_hints = on\nwal_keep_size = '256MB'").init().start()
    s = None
    try:
        p.sql("CREATE EXTENSION pg_branch")
        make_parent_and_branch(p)
        s = make_standby(p, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-reset-rewind-s", 5543)
        wait_replayed(p, s)
        as_postgres(PG_BIN / "pg_ctl", "-D", s.data, "-w", "promote")
        assert wait_for(lambda: not s.one("SELECT pg_is_in_recovery()"))
        p.sql("UPDATE t SET v = 8", dbname="rs_app")
        p.sql("SELECT pgbranch.reset('rs_b')")
        want = p.one(FINGERPRINT, dbname="rs_b")
        p.stop()
        done = as_postgres(PG_BIN / "pg_rewind", "-D", p.data,
                           "--source-server", f"host={s.sock} port={s.port} user=postgres dbname=postgres",
                           check=False)
        assert done.returncode != 0
        assert "record type is not recognized" in done.stderr, done.stderr
        p.start()
        assert p.one(FINGERPRINT, dbname="rs_b") == want
    finally:
        if s is not None:
            s.stop(mode="immediate", check=False)
        p.stop(mode="immediate", check=False)


def make_parent_and_branch(c):
    c.sql("CREATE DATABASE rs_app STRATEGY FILE_COPY")
    c.sql("CREATE TABLE t (id int PRIMARY KEY, v int)", dbname="rs_app")
    c.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g", dbname="rs_app")
    c.sql("CREATE DATABASE rs_b TEMPLATE rs_app")
