"""What a branch is: an equal, copy-on-write copy of its template, made by
the filesystem, logged for recovery, and only where it can be made."""

import subprocess

import psycopg
import pytest

from harness import fingerprint as app_contents, PG_BIN, exclusive_bytes, is_subvolume


def fingerprint(cluster, db):
    """The contents of the app tables, and how many relations there are."""
    return app_contents(cluster, db, "(SELECT count(*) FROM pg_class)")


@pytest.fixture(scope="module")
def app(branch):
    """A template with data, indexes and a sequence, made by a branch of
    template1 (so it is a subvolume)."""
    branch.sql("DROP DATABASE IF EXISTS app")
    branch.sql("CREATE DATABASE app")
    branch.sql("""
        CREATE TABLE accounts (id bigserial PRIMARY KEY, balance int NOT NULL, note text);
        INSERT INTO accounts (balance, note) SELECT g % 1000, repeat('x', g % 50) FROM generate_series(1, 200000) g;
        CREATE INDEX ON accounts (balance);
        CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g;
    """, dbname="app")
    return "app"


def test_branch_equals_template_and_is_a_subvolume(branch, app):
    branch.sql("CREATE DATABASE b_equal TEMPLATE app")
    assert fingerprint(branch, "b_equal") == fingerprint(branch, app)
    assert branch.sql("SELECT count(*) FROM scratch", dbname="b_equal") == [(1000,)]
    assert is_subvolume(branch.db_path("app")), "a database made by pg_branch is a subvolume"
    assert is_subvolume(branch.db_path("b_equal"))
    assert branch.sql("SELECT branch_method FROM pgbranch.database_storage() WHERE datname = 'b_equal'") == [("snapshot",)]
    branch.sql("DROP DATABASE b_equal")


def test_fresh_branch_shares_all_its_blocks(branch, app):
    branch.sql("CHECKPOINT")
    branch.sql("CREATE DATABASE b_space TEMPLATE app")
    size = branch.one("SELECT pg_database_size('b_space')")
    assert size > 20 << 20
    assert exclusive_bytes(branch.db_path("b_space")) < 1 << 20
    # Writing to the branch makes it diverge, and leaves the template alone.
    before = fingerprint(branch, app)
    branch.sql("UPDATE accounts SET balance = balance + 1", dbname="b_space")
    branch.sql("CHECKPOINT")
    assert exclusive_bytes(branch.db_path("b_space")) > 10 << 20
    assert fingerprint(branch, app) == before
    assert fingerprint(branch, "b_space") != before
    branch.sql("DROP DATABASE b_space")


def test_branch_of_a_branch_and_changes_stay_apart(branch, app):
    branch.sql("CREATE DATABASE b_one TEMPLATE app")
    branch.sql("INSERT INTO accounts (balance, note) VALUES (5, 'only in b_one')", dbname="b_one")
    branch.sql("CREATE DATABASE b_two TEMPLATE b_one")
    assert is_subvolume(branch.db_path("b_two"))
    assert branch.one("SELECT count(*) FROM accounts WHERE note = 'only in b_one'", dbname="b_two") == 1
    assert branch.one("SELECT count(*) FROM accounts WHERE note = 'only in b_one'", dbname=app) == 0
    assert branch.one("SELECT nextval('accounts_id_seq')", dbname="b_two") == 200002
    branch.sql("DROP DATABASE b_two")
    branch.sql("DROP DATABASE b_one")


def test_temporary_tables_of_the_template_are_not_copied(branch, app):
    # Our own session may be connected to the template (as core allows).
    with branch.connect(app) as conn:
        conn.execute("CREATE TEMP TABLE mine AS SELECT 1 AS x")
        temp = conn.execute("SELECT pg_relation_filepath('mine')").fetchone()[0]
        assert (branch.data / temp).exists()
        conn.execute("CREATE DATABASE b_temp TEMPLATE app")
    copied = branch.db_path("b_temp") / temp.split("/")[-1]
    assert not copied.exists()
    branch.sql("DROP DATABASE b_temp")


def test_unlogged_tables_keep_their_init_fork(branch, app):
    branch.sql("CREATE DATABASE b_unlogged TEMPLATE app")
    rel = branch.one("SELECT pg_relation_filepath('scratch')", dbname="b_unlogged")
    assert (branch.data / (rel + "_init")).exists()
    branch.sql("DROP DATABASE b_unlogged")


def test_each_branch_is_wal_logged(branch, app):
    branch.require_contrib("pg_walinspect")
    start = branch.one("SELECT pg_current_wal_flush_lsn()")
    branch.sql("CREATE DATABASE b_wal TEMPLATE app")
    end = branch.one("SELECT pg_current_wal_flush_lsn()")
    src = branch.one("SELECT oid FROM pg_database WHERE datname = 'app'")
    dst = branch.one("SELECT oid FROM pg_database WHERE datname = 'b_wal'")
    records = branch.sql(
        "SELECT resource_manager, record_type, description FROM pg_get_wal_records_info(%s, %s) "
        "WHERE resource_manager IN ('pg_branch', 'Database')", params=(start, end))
    assert records == [("pg_branch", "BRANCH_CREATE", f"branch dir 1663/{src} to 1663/{dst} by snapshot")]
    branch.sql("DROP DATABASE b_wal")
    # pg_branch.wal_record = core: core's FILE_COPY record instead.
    start = branch.one("SELECT pg_current_wal_flush_lsn()")
    with branch.connect() as conn:
        conn.execute("SET pg_branch.wal_record = core")
        conn.execute("CREATE DATABASE b_wal TEMPLATE app")
    end = branch.one("SELECT pg_current_wal_flush_lsn()")
    dst = branch.one("SELECT oid FROM pg_database WHERE datname = 'b_wal'")
    records = branch.sql(
        "SELECT resource_manager, record_type, description FROM pg_get_wal_records_info(%s, %s) "
        "WHERE resource_manager IN ('pg_branch', 'Database')", params=(start, end))
    assert records == [("Database", "CREATE_FILE_COPY", f"copy dir 1663/{src} to 1663/{dst}")]
    assert is_subvolume(branch.db_path("b_wal"))
    branch.sql("DROP DATABASE b_wal")


def test_strategy_snapshot_and_core_strategies(branch, app):
    branch.sql("CREATE DATABASE b_snap TEMPLATE app STRATEGY = snapshot")
    branch.sql("CREATE DATABASE b_filecopy TEMPLATE app STRATEGY = FILE_COPY")
    branch.sql("CREATE DATABASE b_wallog TEMPLATE app STRATEGY wal_log")
    assert is_subvolume(branch.db_path("b_snap"))
    assert not is_subvolume(branch.db_path("b_filecopy"))
    assert not is_subvolume(branch.db_path("b_wallog"))
    for db in ("b_snap", "b_filecopy", "b_wallog"):
        assert fingerprint(branch, db) == fingerprint(branch, app)
        branch.sql(f"DROP DATABASE {db}")


def test_disabled_setting_leaves_create_database_to_core(branch, app):
    with branch.connect() as conn:
        conn.execute("SET pg_branch.enabled = off")
        conn.execute("CREATE DATABASE b_off TEMPLATE app")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.execute("CREATE DATABASE b_off2 TEMPLATE app STRATEGY snapshot")
        assert "pg_branch.enabled is off" in e.value.diag.message_primary
    assert not is_subvolume(branch.db_path("b_off"))
    branch.sql("DROP DATABASE b_off")


def test_other_statements_are_untouched(branch):
    branch.sql("CREATE DATABASE b_alter")
    branch.sql("ALTER DATABASE b_alter RENAME TO b_altered")
    branch.sql("ALTER DATABASE b_altered CONNECTION LIMIT 3")
    assert branch.one("SELECT datconnlimit FROM pg_database WHERE datname = 'b_altered'") == 3
    branch.sql("DROP DATABASE b_altered")
    assert branch.one("SELECT count(*) FROM pg_database WHERE datname LIKE 'b_alter%'") == 0


def test_without_copy_on_write_core_copies_with_one_notice(ext4):
    notices = []
    with ext4.connect() as conn:
        conn.add_notice_handler(lambda d: notices.append((d.sqlstate, d.message_primary, d.message_detail)))
        conn.execute("CREATE DATABASE plain_copy")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.execute("CREATE DATABASE snap_copy STRATEGY = SNAPSHOT")
    assert len(notices) == 1
    code, message, detail = notices[0]
    assert message == 'template "template1" cannot be branched, copying it instead'
    assert "ext4" in detail and "cannot clone" in detail
    assert e.value.diag.sqlstate == "0A000"
    assert 'STRATEGY SNAPSHOT from template "template1"' in e.value.diag.message_primary
    assert ext4.one("SELECT count(*) FROM pg_database WHERE datname = 'plain_copy'") == 1
    assert ext4.one("SELECT count(*) FROM pg_database WHERE datname = 'snap_copy'") == 0


def test_xfs_branches_by_reflink(xfs):
    xfs.sql("CREATE DATABASE xtpl")
    xfs.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g", dbname="xtpl")
    xfs.sql("CREATE DATABASE xbranch TEMPLATE xtpl")
    assert xfs.sql("SELECT filesystem, is_subvolume, branch_method FROM pgbranch.database_storage() "
                   "WHERE datname = 'xbranch'") == [("xfs", False, "reflink")]
    assert xfs.sql("SELECT count(*), md5(string_agg(h, '' ORDER BY g)) FROM t", dbname="xbranch") == \
        xfs.sql("SELECT count(*), md5(string_agg(h, '' ORDER BY g)) FROM t", dbname="xtpl")
    rel = xfs.one("SELECT pg_relation_filepath('t')", dbname="xbranch")
    out = subprocess.run(["filefrag", "-v", str(xfs.data / rel)], capture_output=True, text=True).stdout
    extents = [l for l in out.splitlines() if l.strip()[:1].isdigit() and ":" in l]
    assert extents and all("shared" in l for l in extents)


def test_loading_without_preload_refuses_with_a_hint(core):
    with pytest.raises(psycopg.Error) as e:
        core.sql("LOAD 'pg_branch'")
    assert e.value.diag.message_primary == "pg_branch must be loaded via shared_preload_libraries"
    assert "shared_preload_libraries" in e.value.diag.message_hint


def test_branch_survives_a_crash_right_after_commit(branch, app):
    branch.sql("CREATE DATABASE b_crash TEMPLATE app")
    want = fingerprint(branch, app)
    branch.kill9()
    branch.start()
    assert fingerprint(branch, "b_crash") == want
    assert is_subvolume(branch.db_path("b_crash"))
    branch.sql("DROP DATABASE b_crash")


def test_a_1gb_pgbench_template_is_branched(branch):
    """The done-when of every supported version: a ~1 GB pgbench template
    (scale 70) on the btrfs mount is branched by snapshot, equal to its
    template, sharing all its blocks."""
    branch.sql("DROP DATABASE IF EXISTS big_b")
    branch.sql("DROP DATABASE IF EXISTS big")
    branch.sql("CREATE DATABASE big")
    subprocess.run(["sudo", "-u", "postgres", PG_BIN / "pgbench", "-q", "-i", "-s", "70", "-h", branch.sock,
                    "-p", str(branch.port), "-U", "postgres", "big"], check=True, capture_output=True)
    assert branch.one("SELECT pg_database_size('big')") > 1_000_000_000
    with branch.connect() as conn:
        conn.execute("CREATE DATABASE big_b TEMPLATE big")
        assert conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone() == ("snapshot",)
    q = "SELECT count(*), sum(abalance), sum(hashtext(filler)) FROM pgbench_accounts"
    want = branch.sql(q, dbname="big")
    assert want[0][:2] == (7_000_000, 0)
    assert branch.sql(q, dbname="big_b") == want
    branch.sql("CHECKPOINT")
    assert exclusive_bytes(branch.db_path("big_b")) < 1 << 20
    branch.sql("DROP DATABASE big_b")
    branch.sql("DROP DATABASE big")


def test_a_branch_made_while_a_backup_runs_is_written_into_wal_page_by_page(branch):
    """While a base backup runs, a branch also goes into WAL as full-page
    images of every page of its template (backup.rs), so that replay of the
    backup rebuilds it exactly (tests/test_durability.py restores such
    backups). pg_branch reads the count of running backups from core's
    shared memory at the place each version keeps it: here on every
    version, no page is written before or after a backup, and during one
    exactly the template's pages are; doctor() says whether one runs."""
    for db in ("wal_t", "wal_b1", "wal_b2", "wal_b3"):
        branch.sql(f"DROP DATABASE IF EXISTS {db}")
    branch.sql("CREATE DATABASE wal_t")
    branch.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g", dbname="wal_t")
    branch.sql("CREATE INDEX ON t (h)", dbname="wal_t")
    branch.sql("VACUUM t", dbname="wal_t")
    pages = branch.one("""SELECT sum(pg_relation_size(c.oid, f)) / 8192 FROM pg_class c,
                                 unnest(ARRAY['main', 'fsm', 'vm', 'init']) f
                           WHERE NOT c.relisshared""", dbname="wal_t")
    logged = "SELECT wal_logged_pages FROM pgbranch.last_branch()"
    doctor = "SELECT status FROM pgbranch.doctor() WHERE item = 'base backups'"
    try:
        with branch.connect() as session, branch.connect() as backup:
            session.execute("CREATE DATABASE wal_b1 TEMPLATE wal_t")
            assert session.execute(logged).fetchone() == (0,)
            assert session.execute(doctor).fetchone() == ("ok",)
            backup.execute("SELECT pg_backup_start('pages', true)")
            assert session.execute(doctor).fetchone() == ("info",)
            session.execute("CREATE DATABASE wal_b2 TEMPLATE wal_t")
            assert session.execute(logged).fetchone() == (pages,)
            backup.execute("SELECT pg_backup_stop(false)")
            session.execute("CREATE DATABASE wal_b3 TEMPLATE wal_t")
            assert session.execute(logged).fetchone() == (0,)
        q = "SELECT count(*), sum(hashtext(h)) FROM t"
        assert branch.sql(q, dbname="wal_b2") == branch.sql(q, dbname="wal_t")
    finally:
        for db in ("wal_b1", "wal_b2", "wal_b3", "wal_t"):
            branch.sql(f"DROP DATABASE IF EXISTS {db}")


def test_cluster_size_counts_shared_data_once(branch):
    """cluster_size(): each branch adds its template's bytes to
    database_bytes (what copies would take) but almost nothing to
    disk_bytes (what is on disk, each shared extent once) until it writes."""
    branch.sql("DROP DATABASE IF EXISTS sz_tpl")
    branch.sql("CREATE DATABASE sz_tpl")
    branch.sql("CREATE TABLE t WITH (autovacuum_enabled = off) AS "
               "SELECT g, repeat('x', 200) AS v FROM generate_series(1, 100000) g", dbname="sz_tpl")
    branch.sql("CHECKPOINT")
    tpl = branch.one("SELECT sum(exclusive_bytes + shared_bytes) FROM pgbranch.branch_size('sz_tpl')")
    assert tpl > 20 << 20

    def size():
        branch.sql("CHECKPOINT")
        return branch.sql("SELECT database_bytes, disk_bytes FROM pgbranch.cluster_size()")[0]

    before = size()
    for n in range(3):
        branch.sql(f"CREATE DATABASE sz_b{n} TEMPLATE sz_tpl")
    copies = size()
    assert copies[0] - before[0] > 3 * tpl - (1 << 20), (before, copies, tpl)
    assert copies[1] - before[1] < tpl // 10, (before, copies, tpl)
    assert copies[1] <= copies[0]

    branch.sql("UPDATE t SET v = repeat('y', 200)", dbname="sz_b0")
    written = size()
    own = branch.one("SELECT sum(exclusive_bytes) FROM pgbranch.branch_size('sz_b0')")
    assert own > 20 << 20
    assert written[1] - copies[1] > own - (2 << 20), (copies, written, own)
    for n in range(3):
        branch.sql(f"DROP DATABASE sz_b{n}")
    branch.sql("DROP DATABASE sz_tpl")
