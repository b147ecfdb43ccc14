"""The branch protocol's interlocks: what core gets from "nobody is
connected to the template", restored one by one.

Each test here reproduced a hole in the first version of the protocol (see
the commit that added it): clog truncated under a branch, a clone plan made
before the fence, row lockers let through, shared dependencies copied too
early, filesystem probes before the privilege checks.
"""

import shutil
import subprocess
import threading

import psycopg
import pytest

from harness import (PG_BIN, HORIZON_VIOLATIONS, Background, Cluster, Gdb, as_postgres, checkpointer_stopped, is_subvolume,
                      mount, oracle, tablespace, wait_for, waiting_on_lock)


def waiting(cluster, application_name, wait_event_type):
    return cluster.one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = %s",
        params=(application_name, wait_event_type)) == 1


@pytest.fixture
def tpl(branch):
    """A template `proto` with two tables, dropped (with its branches) afterwards."""
    branch.sql("DROP DATABASE IF EXISTS proto WITH (FORCE)")
    branch.sql("CREATE DATABASE proto")
    branch.sql("""
        CREATE TABLE t1 (id int PRIMARY KEY, note text);
        CREATE TABLE t2 (id int PRIMARY KEY, note text);
        INSERT INTO t1 VALUES (1, 'one'), (2, 'two');
    """, dbname="proto")
    yield "proto"
    for (db,) in branch.sql("SELECT datname FROM pg_database WHERE datname LIKE 'proto%'"):
        branch.sql(f"DROP DATABASE {db} WITH (FORCE)")


def test_vacuum_of_the_template_cannot_truncate_clog_the_branch_needs():
    """Until the branch commits, its pg_database row (with the template's
    datfrozenxid) is invisible to vac_truncate_clog(). A VACUUM FREEZE of the
    template in that window used to advance the cluster's oldest XID past
    XIDs that are unfrozen in the branch's files, and truncate pg_xact under
    them; reading the branch then failed with "could not access status of
    transaction". The branch now holds the template's frozen-ID lock, so the
    vacuum waits for it to commit."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-clog", 5504, extra_conf="autovacuum = off").init().start()
    try:
        c.sql("CREATE DATABASE clog_tpl")
        # Rows whose XID is in the first pg_xact segment, written to disk
        # before anyone reads them: no hint bits, so reading them asks pg_xact.
        c.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g", dbname="clog_tpl")
        c.sql("CHECKPOINT")
        # Use up more than one pg_xact segment (1,048,576 XIDs).
        c.sql("""CREATE PROCEDURE burn(n int) LANGUAGE plpgsql AS $$
                 BEGIN FOR i IN 1..n LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$""")
        with c.connect() as conn:
            conn.execute("SET synchronous_commit = off")
            conn.execute("CALL burn(1100000)")
        # Every other database is frozen now: the template is the oldest.
        c.sql("ALTER DATABASE template0 ALLOW_CONNECTIONS true")
        for db in ("template0", "template1", "postgres"):
            c.sql("VACUUM FREEZE", dbname=db)
        c.sql("ALTER DATABASE template0 ALLOW_CONNECTIONS false")
        assert (c.data / "pg_xact" / "0000").exists()

        with checkpointer_stopped(c):
            # The branch is cloned and logged, and waits for its checkpoint.
            creator = Background(c, "CREATE DATABASE clog_branch TEMPLATE clog_tpl", "creator")
            assert wait_for(lambda: waiting(c, "creator", "Extension"))
            vacuum = Background(c, "VACUUM FREEZE", "vacuum", dbname="clog_tpl")
            # Either it truncates pg_xact now (the hole) or it waits for
            # the branch (the fix).
            assert wait_for(lambda: vacuum.done.is_set() or waiting(c, "vacuum", "Lock"))
        creator.join()
        vacuum.join()
        c.sql("VACUUM", dbname="postgres")  # any later vac_truncate_clog()
        assert c.one("SELECT count(*) FROM t", dbname="clog_branch") == 1000
        c.sql("CHECKPOINT")
        assert c.one(HORIZON_VIOLATIONS) == ""
        # The branch is a database like any other: freezing it lets the
        # cluster's horizon move on.
        c.sql("VACUUM FREEZE", dbname="clog_branch")
        c.sql("VACUUM FREEZE", dbname="clog_tpl")
        assert c.one("SELECT count(*) FROM t WHERE g > 0", dbname="clog_branch") == 1000
    finally:
        c.stop(check=False)


def test_a_table_made_in_a_new_tablespace_while_the_branch_waits(branch, tpl):
    """The clone plan (which tablespace directories to clone) is made under
    the fence. A table created in a tablespace where the template had no
    files yet, by a transaction that commits while the branch waits for a
    writer, used to be in the branch's pg_class with no file behind it."""
    ts = tablespace(branch, "proto_ts", mount("PG_BRANCH_TEST_BTRFS") / "pytest-proto-ts")
    try:
        with branch.connect(tpl, autocommit=False) as writer:
            writer.execute("INSERT INTO t1 VALUES (3, 'open')")
            creator = Background(branch, "CREATE DATABASE proto_b TEMPLATE proto", "creator")
            assert wait_for(lambda: waiting_on_lock(branch, "creator"))
            branch.sql(f"CREATE TABLE x TABLESPACE {ts} AS SELECT 1 AS one", dbname=tpl)
            writer.execute("COMMIT")
        creator.join()
        assert branch.sql("SELECT one FROM x", dbname="proto_b") == [(1,)]
        assert branch.one("SELECT count(*) FROM t1", dbname="proto_b") == 3
    finally:
        for (db,) in branch.sql("SELECT datname FROM pg_database WHERE datname LIKE 'proto%'"):
            branch.sql(f"DROP DATABASE {db} WITH (FORCE)")
        branch.sql(f"DROP TABLESPACE {ts}")


def test_a_grant_while_the_branch_waits_is_in_its_shared_dependencies(branch, tpl):
    """pg_shdepend rows are copied under the fence: a GRANT committed in the
    template while the branch waits is in the branch's files, so it must be
    in the branch's pg_shdepend too, or DROP ROLE would succeed and leave
    the branch's ACL naming a role that no longer exists."""
    branch.sql("DROP ROLE IF EXISTS proto_bob")
    branch.sql("CREATE ROLE proto_bob")
    try:
        with branch.connect(tpl, autocommit=False) as writer:
            writer.execute("INSERT INTO t1 VALUES (3, 'open')")
            creator = Background(branch, "CREATE DATABASE proto_b TEMPLATE proto", "creator")
            assert wait_for(lambda: waiting_on_lock(branch, "creator"))
            branch.sql("GRANT SELECT ON t2 TO proto_bob", dbname=tpl)
            writer.execute("COMMIT")
        creator.join()
        assert branch.one("SELECT has_table_privilege('proto_bob', 't2', 'SELECT')", dbname="proto_b")
        branch.sql("REVOKE SELECT ON t2 FROM proto_bob", dbname=tpl)
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
            branch.sql("DROP ROLE proto_bob")
        assert e.value.diag.message_detail == "1 object in database proto_b"
    finally:
        for (db,) in branch.sql("SELECT datname FROM pg_database WHERE datname LIKE 'proto%'"):
            branch.sql(f"DROP DATABASE {db} WITH (FORCE)")
        branch.sql("DROP ROLE IF EXISTS proto_bob")


def test_a_row_lock_holds_the_branch_up(branch, tpl):
    """SELECT ... FOR UPDATE writes its XID into the row (a lock-only
    xmax). Such a transaction used to pass the fence, so the branch held an
    in-progress XID of another database, and an UPDATE of that row in the
    branch waited for a transaction in the template. Row lockers are fenced
    now, like writers."""
    with branch.connect(tpl, autocommit=False) as locker:
        locker.execute("SELECT * FROM t1 WHERE id = 1 FOR UPDATE")
        locker_xid = locker.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        creator = Background(branch, "CREATE DATABASE proto_b TEMPLATE proto", "creator")
        assert wait_for(lambda: waiting_on_lock(branch, "creator"))
        locker.execute("COMMIT")
    creator.join()
    # The lock-only xmax is still in the row, naming a transaction that
    # had ended before the branch was made.
    assert branch.one("SELECT xmax::text FROM t1 WHERE id = 1", dbname="proto_b") == locker_xid
    assert branch.one("SELECT pg_xact_status(%s::xid8)", dbname="proto_b", params=(locker_xid,)) == "committed"
    with branch.connect("proto_b") as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute("UPDATE t1 SET note = 'changed' WHERE id = 1")


@pytest.mark.parametrize("lock", ["FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE"])
def test_lock_timeout_names_a_row_locker(branch, tpl, lock):
    with branch.connect(tpl, autocommit=False) as locker:
        locker.execute(f"SELECT * FROM t1 {lock}")
        pid = locker.info.backend_pid
        with branch.connect() as conn:
            conn.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable) as e:
                conn.execute("CREATE DATABASE proto_b TEMPLATE proto")
    assert e.value.diag.message_detail == (
        'CREATE DATABASE was waiting for ExclusiveLock on relation "t1" of template '
        f'database "proto", held by process {pid}.')
    assert branch.one("SELECT count(*) FROM pg_database WHERE datname = 'proto_b'") == 0


def test_multixact_row_lockers_leave_no_unfrozen_xmax_under_an_all_frozen_bit(branch, tpl):
    """Two sessions share-lock rows of a frozen table (a multixact), commit,
    and lock again, while branches are made. No branch may have a page
    marked all-frozen in its visibility map that holds a lock-only xmax
    (pg_check_frozen()), and none may hold the lockers' multixacts as in
    progress."""
    branch.require_contrib("pg_visibility")
    branch.sql("CREATE TABLE frozen AS SELECT g AS id FROM generate_series(1, 5000) g", dbname=tpl)
    branch.sql("VACUUM (FREEZE) frozen", dbname=tpl)
    stop = threading.Event()
    errors = []

    def lockers():
        try:
            with branch.connect(tpl, autocommit=False) as a, branch.connect(tpl, autocommit=False) as b:
                i = 0
                while not stop.is_set():
                    lo = (i * 97) % 5000
                    a.execute("SELECT * FROM frozen WHERE id BETWEEN %s AND %s FOR SHARE", (lo, lo + 50))
                    b.execute("SELECT * FROM frozen WHERE id BETWEEN %s AND %s FOR SHARE", (lo, lo + 50))
                    a.commit()
                    b.commit()
                    i += 1
        except psycopg.Error as e:
            errors.append(e)

    worker = threading.Thread(target=lockers)
    worker.start()
    try:
        for n in range(20):
            branch.sql(f"CREATE DATABASE proto_m{n} TEMPLATE proto")
    finally:
        stop.set()
        worker.join(60)
    assert not errors
    for n in range(20):
        db = f"proto_m{n}"
        branch.sql("CREATE EXTENSION IF NOT EXISTS pg_visibility", dbname=db)
        assert branch.sql("SELECT * FROM pg_check_frozen('frozen')", dbname=db) == [], db
        with branch.connect(db) as conn:
            conn.execute("SET lock_timeout = '5s'")
            conn.execute("UPDATE frozen SET id = id")
            conn.execute("VACUUM (FREEZE) frozen")


def test_no_privilege_no_probe(ext4, core):
    """A role without CREATEDB gets core's 42501 before pg_branch looks at
    any filesystem: no NOTICE about copying, no 0A000 for STRATEGY =
    SNAPSHOT on a filesystem that cannot clone."""
    for c in (ext4, core):
        c.sql("DROP ROLE IF EXISTS proto_nocreatedb")
        c.sql("CREATE ROLE proto_nocreatedb LOGIN")
    try:
        for sql in ("CREATE DATABASE proto_np", "CREATE DATABASE proto_np STRATEGY = SNAPSHOT",
                    "CREATE DATABASE proto_np TEMPLATE postgres"):
            outcomes = []
            for c in (ext4, core):
                messages = []
                with psycopg.connect(c.conninfo(user="proto_nocreatedb"), autocommit=True) as conn:
                    conn.add_notice_handler(lambda d: messages.append(d.message_primary))
                    with pytest.raises(psycopg.Error) as e:
                        conn.execute(sql)
                outcomes.append((e.value.diag.sqlstate, e.value.diag.message_primary, messages))
            assert outcomes[0] == outcomes[1] == ("42501", "permission denied to create database", []), sql
    finally:
        for c in (ext4, core):
            c.sql("DROP ROLE IF EXISTS proto_nocreatedb")


def test_no_right_to_copy_no_probe(ext4, core):
    """A role with CREATEDB that may not copy the template gets core's
    "permission denied to copy database" before any filesystem probe."""
    for c in (ext4, core):
        c.sql("DROP DATABASE IF EXISTS proto_private")
        c.sql("DROP ROLE IF EXISTS proto_creator")
        c.sql("CREATE ROLE proto_creator LOGIN CREATEDB")
        c.sql("CREATE DATABASE proto_private")
    try:
        for sql in ("CREATE DATABASE proto_np TEMPLATE proto_private",
                    "CREATE DATABASE proto_np TEMPLATE proto_private STRATEGY = SNAPSHOT"):
            outcomes = []
            for c in (ext4, core):
                messages = []
                with psycopg.connect(c.conninfo(user="proto_creator"), autocommit=True) as conn:
                    conn.add_notice_handler(lambda d: messages.append(d.message_primary))
                    with pytest.raises(psycopg.Error) as e:
                        conn.execute(sql)
                outcomes.append((e.value.diag.sqlstate, e.value.diag.message_primary, messages))
            assert outcomes[0] == outcomes[1] == (
                "42501", 'permission denied to copy database "proto_private"', []), sql
    finally:
        for c in (ext4, core):
            c.sql("DROP DATABASE IF EXISTS proto_private")
            c.sql("DROP ROLE IF EXISTS proto_creator")



def test_crash_recovery_after_an_oid_is_reused_keeps_the_branch():
    """DROP DATABASE checkpoints *before* it logs the drop, so its record
    lies after the last completed checkpoint. A branch that reuses that OID
    (OID = N, or the OID counter coming round) and commits once a checkpoint
    has merely *started* used to be destroyed by crash recovery: replaying
    the drop removed the live branch, and replaying BRANCH_CREATE cloned
    the template as it was on disk after the crash, with changes made after
    the branch. The checkpoint is held with gdb after it has written the
    buffers (ProcessSyncRequests) and before it completes; then kill -9."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-oid-reuse", 5505, extra_conf="autovacuum = off").init().start()
    gdb = None
    try:
        c.sql("CREATE DATABASE reuse_tpl")
        c.sql("CREATE TABLE t (id int PRIMARY KEY, note text); "
              "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g", dbname="reuse_tpl")
        c.sql("CREATE DATABASE reuse_old OID = 70001 TEMPLATE reuse_tpl")
        c.sql("DROP DATABASE reuse_old")
        checkpointer = c.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        gdb = Gdb(checkpointer)
        gdb.run("break CreateCheckPoint", "continue")
        creator = Background(c, "CREATE DATABASE reuse_new OID = 70001 TEMPLATE reuse_tpl", "creator")
        # The branch is made and logged, its fence lowered, and it has
        # asked for a checkpoint, which stops at its first line.
        assert wait_for(lambda: gdb.stopped_at("CreateCheckPoint"))
        c.sql("UPDATE t SET note = 'after'", dbname="reuse_tpl")
        # Let the checkpoint start (the redo pointer passes the branch's
        # record) and write every dirty buffer, the template's new rows
        # included; hold it before it fsyncs and completes.
        gdb.run("delete", "break ProcessSyncRequests", "continue")
        assert wait_for(lambda: gdb.stopped_at("ProcessSyncRequests"))
        # Either the branch committed now (the hole), or it waits for the
        # checkpoint to complete (the fix): then let it complete.
        assert wait_for(lambda: creator.done.is_set() or waiting(c, "creator", "IPC"))
        if not creator.done.is_set():
            gdb.close()
        creator.join()
        c.kill9()
        gdb.close()
        gdb = None
        c.start()
        assert c.sql("SELECT note, count(*) FROM t GROUP BY note", dbname="reuse_new") == [("before", 100)]
        assert c.sql("SELECT note, count(*) FROM t GROUP BY note", dbname="reuse_tpl") == [("after", 100)]
    finally:
        if gdb:
            gdb.close()
        c.stop(mode="immediate", check=False)


def test_a_branch_with_a_new_oid_waits_only_for_the_checkpoint_to_start():
    """The fast path stays: a branch whose OID no database dropped since
    the last completed checkpoint had (one the counter chose, or one given
    with OID = N) commits while the checkpoint it asked for still runs
    (held here with gdb after its start). Only the first branch after the
    server starts waits for a whole checkpoint: drops replayed before a
    promotion are not known (src/drops.c)."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-oid-reuse", 5505, extra_conf="autovacuum = off").init().start()
    gdb = None
    try:
        c.sql("CREATE DATABASE fresh_tpl")
        c.sql("CREATE DATABASE fresh_first TEMPLATE fresh_tpl")
        checkpointer = c.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        for sql in ("CREATE DATABASE fresh_branch TEMPLATE fresh_tpl",
                    "CREATE DATABASE fresh_explicit OID = 70500 TEMPLATE fresh_tpl"):
            gdb = Gdb(checkpointer)
            gdb.run("break ProcessSyncRequests", "continue")
            c.sql(sql)
            # The branch has committed; the checkpoint it asked for is held.
            assert wait_for(lambda: gdb.stopped_at("ProcessSyncRequests"))
            gdb.close()
            gdb = None
        assert c.one("SELECT count(*) FROM pg_database WHERE datname IN ('fresh_branch', 'fresh_explicit')") == 2
    finally:
        if gdb:
            gdb.close()
        c.stop(check=False)


def test_branches_of_a_template_that_readers_prune_pass_pg_checksums():
    """The fence lets plain readers through, and they still change pages
    (hint bits, HOT pruning) that the bgwriter may write while a clone is
    taken. Each such write is one 8 kB pwrite, which btrfs applies
    atomically with respect to a snapshot: no branch may hold a torn page.
    200 branches of a template under UPDATE-heavy pgbench, concurrent
    sequential scans and an aggressive bgwriter, on a cluster with data
    checksums; then pg_checksums reads every page of every branch, and the
    TPC-B oracle and amcheck check each one."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-checksums", 5506, extra_conf="\n".join([
        "bgwriter_delay = 10ms", "bgwriter_lru_maxpages = 1000", "bgwriter_lru_multiplier = 10",
        "shared_buffers = 16MB"])).init("--data-checksums").start()
    try:
        c.sql("CREATE DATABASE ck")
        as_postgres(PG_BIN / "pgbench", "-q", "-i", "-s", "2", "-h", c.sock, "-p", c.port, "-U", "postgres", "ck")
        load = subprocess.Popen(["sudo", "-u", "postgres", PG_BIN / "pgbench", "-n", "-c", "2", "-j", "2", "-T", "600",
                                 "-h", c.sock, "-p", str(c.port), "-U", "postgres", "ck"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stop = threading.Event()
        errors = []

        def scan():
            try:
                with c.connect("ck") as conn:
                    while not stop.is_set():
                        conn.execute("SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0")
                        conn.execute("SELECT count(*) FROM pgbench_history")
            except psycopg.Error as e:
                errors.append(e)

        scanner = threading.Thread(target=scan)
        scanner.start()
        try:
            for n in range(200):
                c.sql(f"CREATE DATABASE ck_{n} TEMPLATE ck")
                assert load.poll() is None, "every branch is made while pgbench writes"
        finally:
            stop.set()
            scanner.join(60)
            load.terminate()
            load.communicate(timeout=60)
        assert not errors
        c.stop()
        out = as_postgres(PG_BIN / "pg_checksums", "--check", "-D", c.data, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Bad checksums:  0" in out.stdout
        c.start()
        histories = [oracle(c, f"ck_{n}") for n in range(200)]
        assert histories == sorted(histories) and histories[-1] > histories[0], "pgbench kept writing"
    finally:
        c.stop(check=False)


def test_a_fence_the_lock_table_cannot_hold_is_refused_before_it_is_raised():
    """Each fence takes one lock per relation of the template, in the lock
    table every session shares (max_locks_per_transaction × processes).
    A template with more relations than that used to fill the table (and
    the shared memory after it) for the whole cluster before failing. Now
    the branch is refused first, with core's 53200 and the setting to raise;
    doctor() says the same. Small settings stand in for a template of
    20 000 relations under the defaults."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-lock-table", 5508,
                extra_conf="max_connections = 10\nmax_locks_per_transaction = 40\n").init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE many STRATEGY wal_log")
        # 40 × (10 connections + 4 prepared + autovacuum, background
        # workers and WAL senders, fewer than 30 more) < 1 800: a fresh
        # database (about 400 relations) fits, one with 2 000 more does not.
        for batch in range(0, 2000, 100):
            c.sql("; ".join(f"CREATE TABLE t{n} ()" for n in range(batch, batch + 100)), dbname="many")
        dirs = c.db_dirs()
        with pytest.raises(psycopg.errors.OutOfMemory) as e:
            c.sql("CREATE DATABASE many_b TEMPLATE many")
        assert str(e.value).startswith("out of shared memory")
        assert 'Branching template database "many" locks each of its relations' in e.value.diag.message_detail
        assert "max_locks_per_transaction to at least" in e.value.diag.message_hint
        assert c.db_dirs() == dirs
        assert c.one("SELECT count(*) FROM pg_database WHERE datname = 'many_b'") == 0
        status, hint = c.sql("SELECT status, hint FROM pgbranch.doctor() WHERE item = 'max_locks_per_transaction'")[0]
        assert status == "error" and "at least" in hint
        # Nothing else was refused: a template that fits is branched.
        c.sql("CREATE DATABASE few STRATEGY wal_log")
        c.sql("CREATE DATABASE few_b TEMPLATE few")
    finally:
        c.stop(mode="immediate", check=False)


def test_full_page_writes_off_copies_as_core_unless_only_crash_recovery_replays():
    """With full_page_writes = off, a standby's or a restore's replayed
    branch could differ page by page from ours (a reader pruning a template
    page between the fence's flush and the clone), and nothing would repair
    it. So CREATE DATABASE then copies as core does (with a NOTICE, and
    core's refusal of a template in use), STRATEGY SNAPSHOT is refused, and
    doctor() says why; with wal_level = minimal only crash recovery replays
    the WAL, and it keeps the branch, so branching goes on there."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-fpw-off", 5512, extra_conf="full_page_writes = off").init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE fpw_t")
        notices = []
        with c.connect() as conn:
            conn.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail)))
            conn.execute("CREATE DATABASE fpw_b TEMPLATE fpw_t")
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                conn.execute("CREATE DATABASE fpw_s TEMPLATE fpw_t STRATEGY SNAPSHOT")
            assert "full_page_writes is off" in e.value.diag.message_detail
            with c.connect("fpw_t"):
                with pytest.raises(psycopg.errors.ObjectInUse, match='source database "fpw_t" is being accessed'):
                    conn.execute("CREATE DATABASE fpw_busy TEMPLATE fpw_t")
        assert notices[0][0] == 'template "fpw_t" cannot be branched, copying it instead'
        assert "full_page_writes is off and wal_level is replica" in notices[0][1]
        assert not is_subvolume(c.db_path("fpw_b"))
        assert c.one("SELECT status FROM pgbranch.doctor() WHERE item = 'full_page_writes'") == "warning"
        c.sql("ALTER SYSTEM SET wal_level = minimal")
        c.sql("ALTER SYSTEM SET max_wal_senders = 0")
        c.stop()
        c.start()
        c.sql("CREATE DATABASE fpw_minimal TEMPLATE fpw_t")
        assert is_subvolume(c.db_path("fpw_minimal"))
        assert c.one("SELECT status FROM pgbranch.doctor() WHERE item = 'full_page_writes'") == "ok"
    finally:
        c.stop(mode="immediate", check=False)


def test_crash_recovery_rebuilds_a_branch_a_filesystem_snapshot_left_empty():
    """A snapshot of the data directory's subvolume holds every nested
    subvolume (a branch) as an empty directory. Crash recovery of such a
    copy, when it replays the branch's record, used to keep that empty
    directory ("the branch made before the crash"), and the database could
    not be opened. An empty directory is never a database: it is rebuilt,
    with a WARNING. Here the checkpoint the branch asked for is held by gdb
    after its start, the server killed, and the branch's directory emptied
    as such a snapshot would hold it."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-empty-branch", 5513, extra_conf="autovacuum = off").init().start()
    gdb = None
    try:
        c.sql("CREATE DATABASE snap_tpl")
        c.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g", dbname="snap_tpl")
        c.sql("CREATE DATABASE snap_first TEMPLATE snap_tpl")  # the first branch waits for a whole checkpoint
        checkpointer = c.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        gdb = Gdb(checkpointer)
        gdb.run("break ProcessSyncRequests", "continue")
        c.sql("CREATE DATABASE snap_b TEMPLATE snap_tpl")
        assert wait_for(lambda: gdb.stopped_at("ProcessSyncRequests"))
        path = c.db_path("snap_b")
        c.kill9()
        gdb.close()
        gdb = None
        shutil.rmtree(path)
        path.mkdir()
        shutil.chown(path, "postgres", "postgres")
        c.start()
        assert c.one("SELECT count(*) FROM t", dbname="snap_b") == 1000
        assert "is empty, as in a snapshot of the data directory" in (c.root / "log").read_text()
    finally:
        if gdb:
            gdb.close()
        c.stop(mode="immediate", check=False)


def test_a_crashed_primary_restarted_as_a_standby_keeps_its_own_branches():
    """A crashed primary restarted with standby.signal (as failover tools
    do) replays the branch records after its last checkpoint with the
    branches already there, and must keep them: the template on disk holds
    rows written after the branch. (PostgreSQL replays pg_wal with crash
    recovery's rules first; the primary also marks each branch with its
    record, as redo does, for archive recovery of its own directories,
    after pg_rewind for instance.) The checkpoint is held by gdb after it
    has written the template's new rows and before it completes; then
    kill -9."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-own-branches", 5517, extra_conf="autovacuum = off").init().start()
    gdb = None
    try:
        c.sql("CREATE DATABASE own_tpl")
        c.sql("CREATE TABLE t (id int PRIMARY KEY, note text); "
              "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g", dbname="own_tpl")
        c.sql("CREATE DATABASE own_first TEMPLATE own_tpl")  # the first branch waits for a whole checkpoint
        gdb = Gdb(c.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"))
        gdb.run("break CreateCheckPoint", "continue")
        creator = Background(c, "CREATE DATABASE own_b TEMPLATE own_tpl", "creator")
        assert wait_for(lambda: gdb.stopped_at("CreateCheckPoint"))
        c.sql("UPDATE t SET note = 'after'", dbname="own_tpl")
        gdb.run("delete", "break ProcessSyncRequests", "continue")
        assert wait_for(lambda: gdb.stopped_at("ProcessSyncRequests"))
        creator.join()
        c.kill9()
        gdb.close()
        gdb = None
        (c.data / "standby.signal").touch()
        shutil.chown(c.data / "standby.signal", "postgres", "postgres")
        c.start()
        assert c.one("SELECT pg_is_in_recovery()")
        assert c.sql("SELECT note, count(*) FROM t GROUP BY note", dbname="own_b") == [("before", 100)]
        assert c.sql("SELECT note, count(*) FROM t GROUP BY note", dbname="own_tpl") == [("after", 100)]
    finally:
        if gdb:
            gdb.close()
        c.stop(mode="immediate", check=False)
