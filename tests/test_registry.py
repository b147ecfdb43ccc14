"""The branch registry and the pgbranch.branches view: lineage, atomicity
with the branch (ERROR, FATAL, kill -9), DROP DATABASE, a streaming
standby and its promotion, a base backup restored to a point in time,
expiry, and what a restored dump does with a record.

Each record is a security label of provider pg_branch in pg_shseclabel
(src/registry.rs); RECORDS counts them."""

import os
import shutil
import signal
import threading

import psycopg
import pytest

from harness import (PG_BIN, Cluster, archiving_cluster, as_postgres, checkpointer_stopped, make_standby, mount,
                     wait_archived, wait_for, wait_replayed)

RECORDS = "SELECT count(*) FROM pg_shseclabel WHERE provider = 'pg_branch'"
RECORD_OF = ("SELECT label::jsonb FROM pg_shseclabel WHERE provider = 'pg_branch' "
             "AND objoid = (SELECT oid FROM pg_database WHERE datname = %s)")
LINEAGE = """SELECT name, is_branch, parent, parent_name_at_branch, parent_exists, depth, path::text[]
               FROM pgbranch.branches WHERE name LIKE %s"""
VIEW = """SELECT name, oid, is_branch, parent, parent_oid, parent_name_at_branch, parent_exists, depth, path::text[],
                 created_at, created_by, method, branch_lsn, expires_at, reset_count, reset_at
            FROM pgbranch.branches"""


@pytest.fixture(scope="module")
def primary():
    """A primary of its own, archiving WAL for the point-in-time test."""
    c = archiving_cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-registry", 5530)
    c.sql("CREATE EXTENSION pg_branch")
    if c.has_contrib("pg_walinspect"):
        c.sql("CREATE EXTENSION pg_walinspect")
    c.sql("CREATE DATABASE app STRATEGY FILE_COPY")
    c.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g", dbname="app")
    c.sql("CREATE ROLE dev LOGIN CREATEDB")
    yield c
    c.stop(mode="immediate", check=False)


def drop(cluster, *dbs):
    for db in dbs:
        cluster.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_lineage_of_a_branch_of_a_branch_of_a_branch(primary, xfs, fs):
    c = primary if fs == "btrfs" else xfs
    if fs == "xfs":
        drop(c, "app")
        c.sql("CREATE DATABASE app STRATEGY FILE_COPY")
        c.sql("DROP ROLE IF EXISTS dev")
        c.sql("CREATE ROLE dev LOGIN CREATEDB")
    before = c.one("SELECT now()")
    lsn_before = c.one("SELECT pg_current_wal_insert_lsn()")
    methods = {}
    with c.connect() as conn:
        for child, parent in [("lin_1", "app"), ("lin_2", "lin_1")]:
            conn.execute(f"CREATE DATABASE {child} TEMPLATE {parent}")
            methods[child] = conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()[0]
    # The third level is made by another role: the record names who made it.
    c.sql("ALTER DATABASE lin_2 OWNER TO dev")
    with c.connect(user="dev") as conn:
        conn.execute("CREATE DATABASE lin_3 TEMPLATE lin_2")
        methods["lin_3"] = conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()[0]
    try:
        rows = c.sql(LINEAGE + " OR name = 'app' ORDER BY created_at NULLS FIRST", params=("lin_%",))
        assert rows == [
            ("app", False, None, None, None, 0, ["app"]),
            ("lin_1", True, "app", "app", True, 1, ["app", "lin_1"]),
            ("lin_2", True, "lin_1", "lin_1", True, 2, ["app", "lin_1", "lin_2"]),
            ("lin_3", True, "lin_2", "lin_2", True, 3, ["app", "lin_1", "lin_2", "lin_3"]),
        ]
        # The view itself lists oldest first.
        names = [r[0] for r in c.sql("SELECT name FROM pgbranch.branches") if r[0] in ("app", "lin_1", "lin_2", "lin_3")]
        assert names == ["app", "lin_1", "lin_2", "lin_3"]
        details = c.sql("""SELECT name, parent_oid = (SELECT oid FROM pg_database WHERE datname = parent),
                                  created_at BETWEEN %s AND now(), created_by, method,
                                  branch_lsn > %s AND branch_lsn < pg_current_wal_insert_lsn(),
                                  expires_at, reset_count, reset_at
                             FROM pgbranch.branches WHERE name LIKE 'lin_%%' ORDER BY name""",
                        params=(before, lsn_before))
        assert details == [
            ("lin_1", True, True, "postgres", methods["lin_1"], True, None, 0, None),
            ("lin_2", True, True, "postgres", methods["lin_2"], True, None, 0, None),
            ("lin_3", True, True, "dev", methods["lin_3"], True, None, 0, None),
        ]
        assert set(methods.values()) <= ({"snapshot", "reflink"} if fs == "btrfs" else {"reflink"})
        if c.has_contrib("pg_walinspect") and fs == "btrfs":
            # branch_lsn is where the branch's own WAL record begins.
            for db in ("lin_1", "lin_2", "lin_3"):
                rec = c.sql("""SELECT resource_manager, record_type
                                 FROM pg_get_wal_record_info((SELECT branch_lsn FROM pgbranch.branches
                                                               WHERE name = %s))""", params=(db,))
                assert rec == [("pg_branch", "BRANCH_CREATE")], db
        # Every database of the cluster sees the same registry.
        c.sql("CREATE EXTENSION IF NOT EXISTS pg_branch", dbname="lin_3")
        assert c.sql(VIEW, dbname="lin_3") == c.sql(VIEW)
    finally:
        drop(c, "lin_3", "lin_2", "lin_1")


def test_children_outlive_their_parent(primary):
    c = primary
    c.sql("CREATE DATABASE gone_1 TEMPLATE app")
    c.sql("CREATE DATABASE gone_2 TEMPLATE gone_1")
    c.sql("CREATE DATABASE gone_3 TEMPLATE gone_2")
    try:
        oid_1 = c.one("SELECT oid FROM pg_database WHERE datname = 'gone_1'")
        records = c.one(RECORDS)
        # A session on the dropped database does not stop WITH (FORCE).
        with c.connect(dbname="gone_1"):
            c.sql("DROP DATABASE gone_1 WITH (FORCE)")
        assert c.one(RECORDS) == records - 1
        assert c.one("SELECT count(*) FROM pg_shseclabel WHERE objoid = %s", params=(oid_1,)) == 0
        assert c.sql(LINEAGE + " ORDER BY name", params=("gone_%",)) == [
            ("gone_2", True, None, "gone_1", False, 0, ["gone_2"]),
            ("gone_3", True, "gone_2", "gone_2", True, 1, ["gone_2", "gone_3"]),
        ]
        assert c.one("SELECT parent_oid FROM pgbranch.branches WHERE name = 'gone_2'") == oid_1
        # A renamed parent is shown by its name now, and as it was named then.
        c.sql("ALTER DATABASE gone_2 RENAME TO gone_2r")
        assert c.sql(LINEAGE, params=("gone_3",)) == [
            ("gone_3", True, "gone_2r", "gone_2", True, 1, ["gone_2r", "gone_3"])]
        c.sql("DROP DATABASE gone_3")
        assert c.one(RECORDS) == records - 2
    finally:
        drop(c, "gone_3", "gone_2r", "gone_2", "gone_1")


def test_core_copies_and_older_databases_have_no_record(primary):
    c = primary
    c.sql("CREATE DATABASE plain_1 TEMPLATE app")
    try:
        records = c.one(RECORDS)
        # core's copy of a branch is not a branch, and copies no record.
        c.sql("CREATE DATABASE plain_core TEMPLATE plain_1 STRATEGY FILE_COPY")
        c.sql("CREATE DATABASE plain_wal TEMPLATE plain_1 STRATEGY WAL_LOG")
        with c.connect() as conn:
            conn.execute("SET pg_branch.enabled = off")
            conn.execute("CREATE DATABASE plain_off TEMPLATE plain_1")
        assert c.one(RECORDS) == records
        rows = c.sql("SELECT name, is_branch, parent, parent_exists, depth, created_at FROM pgbranch.branches "
                     "WHERE name IN ('postgres', 'template1', 'plain_core', 'plain_wal', 'plain_off') ORDER BY name")
        assert rows == [(n, False, None, None, 0, None) for n in ("plain_core", "plain_off", "plain_wal", "postgres",
                                                                  "template1")]
    finally:
        drop(c, "plain_core", "plain_wal", "plain_off", "plain_1")


def stalled_create(c, name, failure, app):
    """CREATE DATABASE `name` in a thread; returns it. With the
    checkpointer stopped, it stalls in its last step (the checkpoint wait),
    after the record is written and before the commit."""
    def create():
        try:
            with c.connect() as conn:
                conn.execute(f"SET application_name = '{app}'")
                conn.execute(f"CREATE DATABASE {name} TEMPLATE app")
        except psycopg.Error as e:
            failure["error"] = e

    worker = threading.Thread(target=create, daemon=True)
    worker.start()
    # The checkpoint wait (step 10): the clone exists, and the record is
    # written but, uncommitted, seen by nobody else.
    assert wait_for(lambda: c.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                  "AND wait_event IN ('Extension', 'CheckpointStart', 'CheckpointDone')",
                                  params=(app,)) == 1)
    assert len(c.db_dirs()) == c.dirs_before + 1
    return worker


@pytest.mark.parametrize("how", ["error", "fatal"])
def test_a_failed_branch_leaves_no_record(primary, how):
    c = primary
    records = c.one(RECORDS)
    c.dirs_before = len(c.db_dirs())
    failure = {}
    # No checkpoint may be under way when the checkpointer stops: the
    # branch's flush would wait for a buffer write it never finishes.
    c.sql("CHECKPOINT")
    with checkpointer_stopped(c):
        worker = stalled_create(c, f"fail_{how}", failure, f"registry_{how}")
        assert c.one(RECORDS) == records
        assert c.sql("SELECT name FROM pgbranch.branches WHERE name = %s", params=(f"fail_{how}",)) == []
        pid = c.one("SELECT pid FROM pg_stat_activity WHERE application_name = %s", params=(f"registry_{how}",))
        c.sql(f"SELECT pg_{'cancel' if how == 'error' else 'terminate'}_backend(%s)", params=(pid,))
        worker.join(30)
    assert "error" in failure
    assert c.one(RECORDS) == records
    assert c.one("SELECT count(*) FROM pg_database WHERE datname = %s", params=(f"fail_{how}",)) == 0
    assert wait_for(lambda: len(c.db_dirs()) == c.dirs_before)


def test_kill_9_before_the_commit_leaves_no_record_and_after_it_keeps_it(primary):
    c = primary
    c.sql("CREATE DATABASE kept TEMPLATE app")
    records = c.one(RECORDS)
    c.dirs_before = len(c.db_dirs())
    failure = {}
    ckpt = c.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    c.sql("CHECKPOINT")  # none under way (above)
    os.kill(ckpt, signal.SIGSTOP)
    try:
        stalled_create(c, "crashed", failure, "registry_kill")
        assert c.one(RECORDS) == records
        c.kill9()
    finally:
        try:
            os.kill(ckpt, signal.SIGCONT)
        except ProcessLookupError:
            pass
    c.start()
    try:
        # The committed branch and its record survive; the stalled one left
        # only an orphan directory, which remove_orphans() clears.
        assert c.one(RECORDS) == records
        assert c.one("SELECT count(*) FROM pg_database WHERE datname = 'crashed'") == 0
        assert c.sql("SELECT name, parent FROM pgbranch.branches WHERE name IN ('kept', 'crashed')") == [("kept", "app")]
        assert len(c.sql("SELECT * FROM pgbranch.remove_orphans()")) == 1
        assert c.sql("SELECT status FROM pgbranch.doctor() WHERE item = 'registry'") == [("ok",)]
    finally:
        drop(c, "kept")


def test_expiry(primary):
    c = primary
    c.sql("CREATE DATABASE exp_1 TEMPLATE app")
    c.sql("CREATE DATABASE exp_dev TEMPLATE app OWNER dev")
    try:
        at = c.one("SELECT pgbranch.set_expiry('exp_1', '2 days')")
        assert c.one("SELECT expires_at FROM pgbranch.branches WHERE name = 'exp_1'") == at
        assert c.one("SELECT %s - created_at > interval '2 days' - interval '1 minute' FROM pgbranch.branches "
                     "WHERE name = 'exp_1'", params=(at,))
        # Transactional: a rollback keeps the expiry it found.
        with c.connect(autocommit=False) as conn:
            conn.execute("SELECT pgbranch.clear_expiry('exp_1')")
            assert conn.execute("SELECT expires_at FROM pgbranch.branches WHERE name = 'exp_1'").fetchone()[0] is None
            conn.rollback()
        assert c.one("SELECT expires_at FROM pgbranch.branches WHERE name = 'exp_1'") == at
        c.sql("SELECT pgbranch.clear_expiry('exp_1')")
        assert c.one("SELECT expires_at FROM pgbranch.branches WHERE name = 'exp_1'") is None

        # Ownership, as DROP DATABASE needs it; the owner may.
        with c.connect(user="dev") as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match='must be owner of database exp_1'):
                conn.execute("SELECT pgbranch.set_expiry('exp_1', '1 hour')")
            conn.execute("SELECT pgbranch.set_expiry('exp_dev', '1 hour')")
        with pytest.raises(psycopg.errors.WrongObjectType, match='database "app" is not a branch'):
            c.sql("SELECT pgbranch.set_expiry('app', '1 hour')")
        with pytest.raises(psycopg.errors.InvalidCatalogName, match='database "nope" does not exist'):
            c.sql("SELECT pgbranch.clear_expiry('nope')")

        # A default for new branches, off unless set.
        with c.connect() as conn:
            conn.execute("SET pg_branch.default_expiry = '3h'")
            conn.execute("CREATE DATABASE exp_default TEMPLATE app")
        assert c.one("SELECT expires_at - created_at FROM pgbranch.branches WHERE name = 'exp_default'") == \
            c.one("SELECT interval '3 hours'")
        assert c.one("SHOW pg_branch.default_expiry") == "0"

        # doctor() warns of a branch past its expiry.
        c.sql("SELECT pgbranch.set_expiry('exp_1', '-1 second')")
        assert c.sql("SELECT status, detail LIKE 'branch \"exp_1\" expired at %%' FROM pgbranch.doctor() "
                     "WHERE item = 'expiry of exp_1'") == [("warning", True)]
    finally:
        drop(c, "exp_1", "exp_dev", "exp_default")


def test_records_are_written_by_pg_branch_only(primary, xfs, core):
    c = primary
    c.sql("CREATE DATABASE label_1 TEMPLATE app")
    try:
        record = c.one(RECORD_OF, params=("label_1",))
        with c.connect() as conn:
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            conn.execute("""SECURITY LABEL FOR pg_branch ON DATABASE label_1 IS '{"parent_oid": 1}'""")
            conn.execute("SECURITY LABEL FOR pg_branch ON DATABASE app IS '{}'")
        assert notices == ['skipping security label of provider "pg_branch"'] * 2
        assert c.one(RECORD_OF, params=("label_1",)) == record
        assert c.one(RECORD_OF, params=("app",)) is None
        # A dump of a branch carries the label; restored elsewhere, the
        # restore goes on, and the copy is what the restore made: pg_dump's
        # CREATE DATABASE ... TEMPLATE template0, a branch of template0, not
        # of what the dump's label says.
        dump = as_postgres(PG_BIN / "pg_dump", "-C", "-h", c.sock, "-p", c.port, "label_1").stdout
        assert "SECURITY LABEL FOR pg_branch ON DATABASE label_1" in dump
        drop(xfs, "label_1")
        out = as_postgres(PG_BIN / "psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", xfs.sock, "-p", xfs.port,
                          "-d", "postgres", input=dump)
        # (the dump sets client_min_messages = warning: the NOTICE is silent)
        assert "SECURITY LABEL\n" in out.stdout
        assert xfs.one("SELECT count(*) FROM t", dbname="label_1") == 1000
        assert xfs.sql("SELECT is_branch, parent FROM pgbranch.branches WHERE name = 'label_1'") == [(True, "template0")]
        # Into a server without pg_branch, that one statement fails and the
        # rest of the restore goes on; --no-security-labels leaves it out.
        drop(core, "label_1")
        out = as_postgres(PG_BIN / "psql", "-X", "-h", core.sock, "-p", core.port, "-d", "postgres", input=dump)
        assert 'security label provider "pg_branch" is not loaded' in out.stderr
        assert out.stderr.count("ERROR") == 1
        assert core.one("SELECT count(*) FROM t", dbname="label_1") == 1000
        bare = as_postgres(PG_BIN / "pg_dump", "-C", "--no-security-labels", "-h", c.sock, "-p", c.port,
                           "label_1").stdout
        assert "SECURITY LABEL" not in bare
        # A record without its database cannot be made by any statement;
        # doctor() reports one that something else wrote.
        with c.connect() as conn:
            conn.execute("SET allow_system_table_mods = on")
            conn.execute("INSERT INTO pg_shseclabel VALUES (4000000000, 'pg_database'::regclass, 'pg_branch', '{}')")
        try:
            assert c.sql("SELECT status FROM pgbranch.doctor() WHERE item = 'registry'") == [("error",)]
        finally:
            with c.connect() as conn:
                conn.execute("SET allow_system_table_mods = on")
                conn.execute("DELETE FROM pg_shseclabel WHERE objoid = 4000000000")
    finally:
        drop(c, "label_1")
        drop(xfs, "label_1")
        drop(core, "label_1")


def test_a_standby_shows_the_same_registry_and_keeps_it_when_promoted(primary):
    c = primary
    c.sql("CREATE DATABASE sb_1 TEMPLATE app")
    standby = make_standby(c, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-registry-standby", 5531)
    try:
        c.sql("CREATE DATABASE sb_2 TEMPLATE sb_1")
        c.sql("SELECT pgbranch.set_expiry('sb_2', '1 day')")
        c.sql("CREATE DATABASE sb_3 TEMPLATE sb_2")
        c.sql("DROP DATABASE sb_1")
        wait_replayed(c, standby)
        assert standby.sql(VIEW) == c.sql(VIEW)
        # A standby's registry is read-only.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction,
                           match=r"cannot execute set_expiry\(\) in a read-only transaction"):
            standby.sql("SELECT pgbranch.set_expiry('sb_2', '1 hour')")
        # The expiry worker never runs on a standby.
        assert standby.one(WORKER) is None
        assert standby.sql("SELECT status FROM pgbranch.doctor() WHERE item = 'expiry worker'") == [("info",)]
        assert standby.sql(LINEAGE + " ORDER BY name", params=("sb_%",)) == [
            ("sb_2", True, None, "sb_1", False, 0, ["sb_2"]),
            ("sb_3", True, "sb_2", "sb_2", True, 1, ["sb_2", "sb_3"]),
        ]
        # diverged() reads on a standby too, and finds what the primary
        # finds. (Main forks only: free-space maps are not WAL-logged whole.)
        c.sql("UPDATE t SET g = g + 1 WHERE g <= 10", dbname="sb_3")
        wait_replayed(c, standby)
        ours = ("SELECT relation, fork, status FROM pgbranch.diverged('sb_3') "
                "WHERE relation LIKE 'public.%%' AND fork = 'main'")
        assert c.sql(ours) == [("public.t", "main", "changed")]
        assert standby.sql(ours) == c.sql(ours)
        as_postgres(PG_BIN / "pg_ctl", "-D", standby.data, "-w", "promote")
        assert wait_for(lambda: not standby.one("SELECT pg_is_in_recovery()"))
        assert standby.sql(VIEW) == c.sql(VIEW)
        # Promoted, it has one.
        assert wait_for(lambda: standby.one(WORKER) is not None)
        # The promoted standby records its own branches.
        standby.sql("CREATE DATABASE sb_4 TEMPLATE sb_3")
        assert standby.sql(LINEAGE, params=("sb_4",)) == [
            ("sb_4", True, "sb_3", "sb_3", True, 2, ["sb_2", "sb_3", "sb_4"])]
        standby.stop()
        standby.start()
        assert standby.one("SELECT parent FROM pgbranch.branches WHERE name = 'sb_4'") == "sb_3"
    finally:
        standby.stop(mode="immediate", check=False)
        drop(c, "sb_3", "sb_2", "sb_1")


def test_a_base_backup_and_point_in_time_recovery_restore_the_registry(primary):
    c = primary
    c.sql("CREATE DATABASE pitr_1 TEMPLATE app")
    restore = Cluster(mount("PG_BRANCH_TEST_BTRFS2") / "pytest-registry-pitr", 5532).fresh()
    try:
        as_postgres(PG_BIN / "pg_basebackup", "-D", restore.data, "-X", "none", "-c", "fast",
                    "-h", c.sock, "-p", c.port, "-U", "postgres")
        # After the backup: replayed from the archive.
        c.sql("CREATE DATABASE pitr_2 TEMPLATE pitr_1")
        c.sql("SELECT pgbranch.set_expiry('pitr_1', '1 day')")
        # Recovery stops at the last commit at or before the target; pitr_3
        # starts (and commits) after it.
        target = c.one("SELECT clock_timestamp()")
        c.sql("CREATE DATABASE pitr_3 TEMPLATE pitr_1")
        expected = c.sql(VIEW + " WHERE name <> 'pitr_3'")
        wait_archived(c)
        with open(restore.data / "postgresql.conf", "a") as f:
            f.write(f"port = {restore.port}\nunix_socket_directories = '{restore.sock}'\n"
                    f"restore_command = 'cp {c.archive}/%f %p'\narchive_mode = off\n"
                    f"recovery_target_time = '{target.isoformat()}'\nrecovery_target_action = 'promote'\n")
        (restore.data / "recovery.signal").touch()
        shutil.chown(restore.data / "recovery.signal", "postgres", "postgres")
        restore.start()
        assert wait_for(lambda: not restore.one("SELECT pg_is_in_recovery()"), 120)
        assert restore.sql(VIEW) == expected
        assert restore.one("SELECT expires_at IS NOT NULL FROM pgbranch.branches WHERE name = 'pitr_1'")
    finally:
        restore.stop(mode="immediate", check=False)
        drop(c, "pitr_3", "pitr_2", "pitr_1")


def test_point_in_time_recovery_across_resets_restores_the_contents_of_the_target(primary):
    """A reset replayed from the archive (BRANCH_RESET's redo, before
    consistency is reached and after), stopped between two resets: the
    branch has the contents and the registry row of the first, not the
    second's."""
    c = primary
    total = "SELECT row(count(*), sum(g))::text FROM t"
    c.sql("CREATE DATABASE pitr_r TEMPLATE app")
    c.sql("CREATE DATABASE pitr_src TEMPLATE app")
    restore = Cluster(mount("PG_BRANCH_TEST_BTRFS2") / "pytest-registry-pitr", 5532).fresh()
    try:
        as_postgres(PG_BIN / "pg_basebackup", "-D", restore.data, "-X", "none", "-c", "fast",
                    "-h", c.sock, "-p", c.port, "-U", "postgres")
        c.sql("DELETE FROM t WHERE g > 900", dbname="pitr_r")
        c.sql("INSERT INTO t SELECT generate_series(1001, 1100)", dbname="app")
        c.sql("SELECT pgbranch.reset('pitr_r')")
        c.sql("INSERT INTO t VALUES (5000)", dbname="pitr_r")
        want = c.one(total, dbname="pitr_r")
        expected = c.sql(VIEW + " WHERE name = 'pitr_r'")
        assert expected[0][-2] == 1  # reset_count
        target = c.one("SELECT clock_timestamp()")
        c.sql("DELETE FROM t", dbname="pitr_src")
        c.sql("SELECT pgbranch.reset('pitr_r', 'pitr_src')")
        assert c.one(total, dbname="pitr_r") != want
        wait_archived(c)
        with open(restore.data / "postgresql.conf", "a") as f:
            f.write(f"port = {restore.port}\nunix_socket_directories = '{restore.sock}'\n"
                    f"restore_command = 'cp {c.archive}/%f %p'\narchive_mode = off\n"
                    f"recovery_target_time = '{target.isoformat()}'\nrecovery_target_action = 'promote'\n")
        (restore.data / "recovery.signal").touch()
        shutil.chown(restore.data / "recovery.signal", "postgres", "postgres")
        restore.start()
        assert wait_for(lambda: not restore.one("SELECT pg_is_in_recovery()"), 120)
        assert restore.one(total, dbname="pitr_r") == want
        assert restore.sql(VIEW + " WHERE name = 'pitr_r'") == expected
        restore.sql("SELECT pgbranch.reset('pitr_r')")
        assert restore.one(total, dbname="pitr_r") == restore.one(total, dbname="app")
    finally:
        restore.stop(mode="immediate", check=False)
        drop(c, "pitr_r", "pitr_src")


def test_the_reader_needs_no_privilege(primary):
    c = primary
    c.sql("CREATE DATABASE read_1 TEMPLATE app")
    try:
        c.sql("DROP ROLE IF EXISTS reader")
        c.sql("CREATE ROLE reader LOGIN")
        rows = c.sql("SELECT name, parent FROM pgbranch.branches WHERE name = 'read_1'", user="reader")
        assert rows == [("read_1", "app")]
    finally:
        drop(c, "read_1")


WORKER = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_branch expiry'"


def reload_with(c, **settings):
    for name, value in settings.items():
        if value is None:
            c.sql(f"ALTER SYSTEM RESET pg_branch.{name}")
        else:
            c.sql(f"ALTER SYSTEM SET pg_branch.{name} = '{value}'")
    c.sql("SELECT pg_reload_conf()")


def logged(c, text):
    return text in (c.root / "log").read_text(errors="replace")


def test_the_expiry_worker_drops_expired_branches(primary):
    c = primary
    # Off by default: the worker is there and waits.
    pid = c.one(WORKER)
    assert pid is not None
    assert c.sql("SELECT status, detail LIKE 'off %%' FROM pgbranch.doctor() WHERE item = 'expiry worker'") == \
        [("info", True)]
    c.sql("CREATE DATABASE w_gone TEMPLATE app")
    c.sql("CREATE DATABASE w_parent TEMPLATE app")
    c.sql("CREATE DATABASE w_child TEMPLATE w_parent")
    c.sql("CREATE DATABASE w_tpl TEMPLATE app IS_TEMPLATE true")
    c.sql("CREATE DATABASE w_later TEMPLATE app")
    try:
        for db in ("w_gone", "w_parent", "w_tpl"):
            c.sql("SELECT pgbranch.set_expiry(%s, '0')", params=(db,))
        c.sql("SELECT pgbranch.set_expiry('w_later', '1 day')")
        session = psycopg.connect(c.conninfo("w_gone"), autocommit=True)
        session.execute("SELECT 1")
        assert c.one("SELECT count(*) FROM pg_database WHERE datname = 'w_gone'") == 1

        reload_with(c, expiry_interval=1)
        assert wait_for(lambda: c.one("SELECT count(*) FROM pg_database WHERE datname = 'w_gone'") == 0)
        # Dropped WITH (FORCE): its session was terminated.
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        session.close()
        assert wait_for(lambda: logged(c, 'pg_branch: dropped expired branch "w_gone"'))
        # A branch with branches of its own, and a template, are kept and logged.
        assert wait_for(lambda: logged(c, 'not dropping expired branch "w_parent": it has branches of its own '
                                          '(w_child)'))
        assert wait_for(lambda: logged(c, 'not dropping expired branch "w_tpl": it is a template'))
        assert {r[0] for r in c.sql("SELECT datname FROM pg_database WHERE datname LIKE 'w\\_%%'")} == \
            {"w_parent", "w_child", "w_tpl", "w_later"}
        assert c.sql("SELECT status FROM pgbranch.doctor() WHERE item = 'expiry worker'") == [("ok",)]

        # Told otherwise, it drops the parent; the child outlives it.
        reload_with(c, expire_parents="on")
        assert wait_for(lambda: c.one("SELECT count(*) FROM pg_database WHERE datname = 'w_parent'") == 0)
        assert c.sql(LINEAGE, params=("w_child",)) == [("w_child", True, None, "w_parent", False, 0, ["w_child"])]

        # Terminated, it comes back (after 5 s) and goes on.
        c.sql("SELECT pg_terminate_backend(%s)", params=(pid,))
        assert wait_for(lambda: c.one(WORKER) not in (None, pid), 30)
        c.sql("SELECT pgbranch.set_expiry('w_later', '0')")
        assert wait_for(lambda: c.one("SELECT count(*) FROM pg_database WHERE datname = 'w_later'") == 0)
    finally:
        reload_with(c, expiry_interval=None, expire_parents=None)
        c.sql("ALTER DATABASE w_tpl IS_TEMPLATE false")
        drop(c, "w_gone", "w_parent", "w_child", "w_tpl", "w_later")


def test_the_expiry_worker_rereads_under_its_lock_and_retries_a_failed_drop(primary):
    c = primary
    c.sql("CREATE DATABASE w_kept TEMPLATE app")
    c.sql("CREATE DATABASE w_prepared TEMPLATE app")
    c.sql("CREATE TABLE p (i int)", dbname="w_prepared")
    try:
        # The worker holds no database open.
        assert c.sql("SELECT datname FROM pg_stat_activity WHERE backend_type = 'pg_branch expiry'") == [(None,)]
        c.sql("SELECT pgbranch.set_expiry('w_kept', '0')")
        # A clear_expiry() not yet committed when a look starts: the look
        # finds the branch expired, waits for its lock, reads the record
        # again once the clear commits, and keeps the branch.
        with c.connect(autocommit=False) as conn:
            conn.execute("SELECT pgbranch.clear_expiry('w_kept')")
            reload_with(c, expiry_interval=1)
            assert wait_for(lambda: c.one("""SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                                              WHERE a.backend_type = 'pg_branch expiry pass' AND NOT l.granted
                                                AND l.locktype = 'object'
                                                AND l.objid = (SELECT oid FROM pg_database WHERE datname = 'w_kept')""")
                            == 1)
            conn.commit()
        # A prepared transaction on a branch makes DROP DATABASE fail: the
        # worker logs it, goes on, and drops the branch once it is gone.
        with c.connect(dbname="w_prepared", autocommit=False) as conn:
            conn.execute("INSERT INTO p VALUES (1)")
            conn.execute("PREPARE TRANSACTION 'w_holds'")
        c.sql("SELECT pgbranch.set_expiry('w_prepared', '0')")
        assert wait_for(lambda: logged(c, 'could not drop expired branch "w_prepared"'))
        # Looks go on after a failure, and try again: a second failure.
        assert wait_for(lambda: (c.root / "log").read_text(errors="replace")
                        .count('could not drop expired branch "w_prepared"') >= 2)
        assert c.one("SELECT count(*) FROM pg_database WHERE datname IN ('w_kept', 'w_prepared')") == 2
        assert c.one("SELECT expires_at FROM pgbranch.branches WHERE name = 'w_kept'") is None
        c.sql("COMMIT PREPARED 'w_holds'", dbname="w_prepared")
        assert wait_for(lambda: c.one("SELECT count(*) FROM pg_database WHERE datname = 'w_prepared'") == 0)
        assert c.one("SELECT count(*) FROM pg_database WHERE datname = 'w_kept'") == 1
    finally:
        reload_with(c, expiry_interval=None)
        for (gid,) in c.sql("SELECT gid FROM pg_prepared_xacts WHERE gid = 'w_holds'"):
            c.sql(f"ROLLBACK PREPARED '{gid}'", dbname="w_prepared")
        drop(c, "w_kept", "w_prepared")
