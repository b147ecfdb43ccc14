"""Durability and replication: real crashes (kill -9), orphans, a real
streaming standby on its own btrfs filesystem (with and without pg_branch),
and point-in-time recovery from a base backup taken while branching."""

import os
import random
import shutil
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from harness import (LIBRARY, PG_BIN, Cluster, Gdb, amcheck, archiving_cluster, as_postgres, exclusive_bytes,
                     is_subvolume, make_standby, mount, oracle, wait_archived, wait_for, wait_replayed)


def pgbench_init(cluster, db, scale=1):
    cluster.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    cluster.sql(f"CREATE DATABASE {db}")
    cluster.pgbench("-q", "-i", "-s", scale, db)


def pgbench_load(cluster, db, seconds):
    # -n: no VACUUM and no TRUNCATE of pgbench_history before the run, which
    # would break the oracle's sum(delta) = sum(abalance) on a second run.
    return cluster.pgbench("-n", "-c", "4", "-j", "2", "-T", seconds, db, background=True)


@pytest.fixture(scope="module")
def primary():
    """A primary of its own, archiving WAL, so crashes and standbys here do
    not disturb the other suites' cluster."""
    c = archiving_cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-primary", 5497)
    c.sql("CREATE EXTENSION pg_branch")
    c.sql("CREATE EXTENSION pg_walinspect")
    pgbench_init(c, "tpl")
    yield c
    c.stop(mode="immediate", check=False)


def branches(cluster, prefix):
    return [r[0] for r in cluster.sql("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                      params=(prefix + "%",))]


CRASHES = int(os.environ.get("PG_BRANCH_CRASHES", "20"))


def test_crash_at_random_moments_of_a_branching_loop(primary):
    """kill -9 of the postmaster at random moments while branches are made
    and pgbench writes to the template, 20 times (PG_BRANCH_CRASHES=500 for
    a soak run). After each restart every visible branch passes the oracle
    and amcheck, orphans are listed and removable, and the template passes
    the oracle."""
    random.seed(os.environ.get("PG_BRANCH_SEED", "20261123"))
    made = 0
    for iteration in range(CRASHES):
        load = pgbench_load(primary, "tpl", 30)
        stop = threading.Event()

        def loop():
            n = 0
            while not stop.is_set():
                try:
                    with primary.connect() as conn:
                        conn.execute(f"CREATE DATABASE crash_{iteration}_{n} TEMPLATE tpl")
                except psycopg.Error:
                    return
                n += 1

        worker = threading.Thread(target=loop)
        time.sleep(0.5)
        worker.start()
        time.sleep(random.uniform(0.05, 1.5))
        primary.kill9()
        stop.set()
        worker.join(30)
        load.wait(30)
        primary.start()

        for db in branches(primary, f"crash_{iteration}_"):
            oracle(primary, db)
            assert is_subvolume(primary.db_path(db))
            made += 1
        listed = {r[0] for r in primary.sql("SELECT path FROM pgbranch.orphans()")}
        removed = {r[0] for r in primary.sql("SELECT path FROM pgbranch.remove_orphans()")}
        assert removed == listed
        assert primary.sql("SELECT * FROM pgbranch.orphans()") == []
        oracle(primary, "tpl")
        for db in branches(primary, f"crash_{iteration}_"):
            primary.sql(f"DROP DATABASE {db}")
    assert made > 0, "some branches committed before the crashes"


def test_orphan_of_a_crash_between_clone_and_commit(primary):
    with primary.connect() as conn:
        ckpt = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'").fetchone()[0]
    before = set(os.listdir(primary.data / "base"))
    os.kill(ckpt, signal.SIGSTOP)
    try:
        def create():
            with pytest.raises(psycopg.OperationalError):  # the server is killed under it
                primary.sql("CREATE DATABASE orphan_me TEMPLATE tpl")

        worker = threading.Thread(target=create)
        worker.daemon = True
        worker.start()
        deadline = time.time() + 30
        while set(os.listdir(primary.data / "base")) == before and time.time() < deadline:
            time.sleep(0.05)
        new = set(os.listdir(primary.data / "base")) - before
        assert len(new) == 1
        # Being created: not an orphan, and never removed. The listing does
        # not wait; the removal waits for the CREATE to end (ShareLock on
        # pg_database against its RowExclusiveLock), here until lock_timeout.
        assert primary.sql("SELECT path FROM pgbranch.orphans()") == []
        with primary.connect() as conn:
            conn.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute("SELECT path FROM pgbranch.remove_orphans()")
        assert (primary.data / "base" / next(iter(new))).is_dir()
        primary.kill9()
    finally:
        try:
            os.kill(ckpt, signal.SIGCONT)
        except ProcessLookupError:
            pass
    primary.start()
    oid = new.pop()
    assert primary.one("SELECT count(*) FROM pg_database WHERE datname = 'orphan_me'") == 0
    rows = primary.sql("SELECT tablespace, path, bytes > 0, modified IS NOT NULL FROM pgbranch.orphans()")
    assert rows == [("pg_default", f"base/{oid}", True, True)]
    assert primary.sql("SELECT path FROM pgbranch.remove_orphans()") == [(f"base/{oid}",)]
    assert not (primary.data / "base" / oid).exists()
    assert primary.sql("SELECT * FROM pgbranch.orphans()") == []


def test_orphan_functions_are_for_superusers(primary):
    primary.sql("DROP ROLE IF EXISTS regress_plain")
    primary.sql("CREATE ROLE regress_plain LOGIN")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        primary.sql("SELECT * FROM pgbranch.remove_orphans()", user="regress_plain")


def test_standby_with_pg_branch_gets_copy_on_write_branches(primary):
    standby = make_standby(primary, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-standby", 5498)
    try:
        primary.sql("CREATE DATABASE sb_idle TEMPLATE tpl")
        load = pgbench_load(primary, "tpl", 8)
        time.sleep(1)
        primary.sql("CREATE DATABASE sb_load TEMPLATE tpl")
        load.wait(60)
        primary.sql("CREATE DATABASE sb_nested TEMPLATE sb_load")
        wait_replayed(primary, standby)
        for db in ("sb_idle", "sb_load", "sb_nested"):
            assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname=db) == \
                primary.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname=db)
            oracle(primary, db)
            # On the standby too, the branch shares its blocks.
            path = standby.data / "base" / str(primary.one("SELECT oid FROM pg_database WHERE datname = %s",
                                                           params=(db,)))
            assert is_subvolume(path)
            assert exclusive_bytes(path) < 1 << 20
        log = (standby.root / "log").read_text()
        assert "pg_branch redo: created" in log and "by snapshot" in log
        # doctor() runs on a standby (it read through an SPI update, which
        # assigns an XID: "cannot assign TransactionIds during recovery").
        assert standby.one("SELECT count(*) FROM pgbranch.doctor() WHERE status = 'error'") == 0

        # A standby that restarts replays again from its last restartpoint
        # (before these branches): redo keeps the branches it made rather
        # than re-cloning a template that has moved on since.
        standby.stop(mode="immediate")
        standby.start()
        wait_replayed(primary, standby)
        log = (standby.root / "log").read_text()
        oid = primary.one("SELECT oid FROM pg_database WHERE datname = 'sb_idle'")
        assert f'pg_branch redo: kept "base/{oid}", made by an earlier replay' in log
        for db in ("sb_idle", "sb_load", "sb_nested"):
            assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname=db) == \
                primary.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname=db)

        # Promote; the branch is writable and can be branched again.
        as_postgres(PG_BIN / "pg_ctl", "-D", standby.data, "-w", "promote")
        standby.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1", dbname="sb_load")
        standby.sql("CREATE EXTENSION IF NOT EXISTS pg_branch")
        standby.sql("CREATE DATABASE sb_after_promote TEMPLATE sb_load")
        assert standby.one("SELECT abalance FROM pgbench_accounts WHERE aid = 1", dbname="sb_after_promote") == \
            standby.one("SELECT abalance FROM pgbench_accounts WHERE aid = 1", dbname="sb_load")
    finally:
        standby.stop(mode="immediate", check=False)
        for db in ("sb_idle", "sb_load", "sb_nested"):
            primary.sql(f"DROP DATABASE IF EXISTS {db}")


def test_conversion_to_a_subvolume_is_replayed_by_a_standby(primary):
    primary.sql("DROP DATABASE IF EXISTS conv")
    primary.sql("DROP DATABASE IF EXISTS conv_b")
    primary.sql("CREATE DATABASE conv TEMPLATE tpl STRATEGY wal_log")  # a plain directory
    oid = primary.one("SELECT oid FROM pg_database WHERE datname = 'conv'")
    standby = make_standby(primary, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-standby-conv", 5498)
    try:
        assert not is_subvolume(standby.data / "base" / str(oid))
        # A standby refuses what would change its files behind replay's
        # back, with core's error for a standby (its transactions are read
        # only). remove_orphans() used to delete, then fail to log ("cannot
        # make new WAL entries during recovery"), leaving it diverged.
        stray = standby.data / "base" / "999992"
        stray.mkdir()
        shutil.chown(stray, "postgres", "postgres")
        for call in ("pgbranch.remove_orphans()", "pgbranch.convert_to_subvolume('conv')",
                     "pgbranch.convert_all_to_subvolumes()"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="in a read-only transaction"):
                standby.sql(f"SELECT * FROM {call}")
        assert stray.is_dir()
        assert not is_subvolume(standby.data / "base" / str(oid))
        stray.rmdir()
        # A hot-standby reader stays connected to the database throughout.
        with standby.connect(dbname="conv") as reader:
            assert reader.execute("SELECT count(*) FROM pgbench_accounts").fetchone() == (100000,)
            result = primary.one("SELECT result FROM pgbranch.convert_to_subvolume('conv')")
            assert result.startswith("converted")
            # Writes after the conversion must reach the standby's new files.
            primary.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 1000", dbname="conv")
            wait_replayed(primary, standby)
            assert is_subvolume(standby.data / "base" / str(oid))
            assert "pg_branch redo: converted" in (standby.root / "log").read_text()
            assert reader.execute("SELECT sum(abalance) FROM pgbench_accounts WHERE aid <= 1000").fetchone() == \
                (primary.one("SELECT sum(abalance) FROM pgbench_accounts WHERE aid <= 1000", dbname="conv"),)
        # A restartpoint writes the standby's buffers through the new files.
        standby.sql("CHECKPOINT")
        standby.stop()
        standby.start()
        assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="conv") == \
            primary.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="conv")
        # Branches of it are snapshots, on both servers.
        primary.sql("CREATE DATABASE conv_b TEMPLATE conv")
        wait_replayed(primary, standby)
        b_oid = primary.one("SELECT oid FROM pg_database WHERE datname = 'conv_b'")
        assert is_subvolume(standby.data / "base" / str(b_oid))
        assert exclusive_bytes(standby.data / "base" / str(b_oid)) < 1 << 20
        assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="conv_b") == \
            primary.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="conv")
    finally:
        standby.stop(mode="immediate", check=False)
        primary.sql("DROP DATABASE IF EXISTS conv_b")
        primary.sql("DROP DATABASE IF EXISTS conv")


def test_standby_without_pg_branch_replays_core_records(primary):
    standby = make_standby(primary, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-standby-core", 5499, preload=False)
    try:
        with primary.connect() as conn:
            conn.execute("SET pg_branch.wal_record = core")
            conn.execute("CREATE DATABASE sb_core TEMPLATE tpl")
        wait_replayed(primary, standby)
        assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="sb_core") == \
            primary.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="sb_core")
        assert not is_subvolume(standby.data / "base" / str(
            primary.one("SELECT oid FROM pg_database WHERE datname = 'sb_core'")))
    finally:
        standby.stop(mode="immediate", check=False)
        primary.sql("DROP DATABASE IF EXISTS sb_core")


def test_point_in_time_recovery_from_a_backup_taken_while_branching(primary):
    """A base backup runs while branches of a template are made; recovery
    replays the archived WAL to its end; every branch passes the oracle.
    (The template is not written to during the backup: like core's
    FILE_COPY, a branch whose template changes while a base backup copies
    it may pick up those changes in recovery; see README.)"""
    restore = Cluster(mount("PG_BRANCH_TEST_BTRFS2") / "pytest-pitr", 5500).fresh()
    stop = threading.Event()
    made = []

    def loop():
        n = 0
        while not stop.is_set():
            primary.sql(f"CREATE DATABASE pitr_{n} TEMPLATE tpl")
            made.append(f"pitr_{n}")
            n += 1

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        as_postgres(PG_BIN / "pg_basebackup", "-D", restore.data, "-X", "none", "-c", "fast",
                    "-h", primary.sock, "-p", primary.port, "-U", "postgres")
    finally:
        stop.set()
        worker.join(60)
    primary.sql("CREATE DATABASE pitr_after TEMPLATE tpl")
    wait_archived(primary)
    with open(restore.data / "postgresql.conf", "a") as f:
        f.write(f"port = {restore.port}\nunix_socket_directories = '{restore.sock}'\n"
                f"restore_command = 'cp {primary.archive}/%f %p'\narchive_mode = off\n"
                "recovery_target_timeline = 'current'\n")
    (restore.data / "recovery.signal").touch()
    shutil.chown(restore.data / "recovery.signal", "postgres", "postgres")
    restore.start()
    try:
        deadline = time.time() + 120
        while restore.one("SELECT pg_is_in_recovery()") and time.time() < deadline:
            time.sleep(0.2)
        got = set(branches(restore, "pitr_"))
        assert set(made) | {"pitr_after"} <= got
        for db in sorted(got):
            oracle(restore, db)
    finally:
        restore.stop(mode="immediate", check=False)
        for db in branches(primary, "pitr_"):
            primary.sql(f"DROP DATABASE {db}")


def test_recovery_of_a_backup_whose_template_was_dropped_while_it_ran(primary):
    """A backup copies the data directory after a branch's template (and the
    branch) were dropped: its recovery replays BRANCH_CREATE with no
    template directory. Core's dbase_redo() makes an empty source directory
    for that case (recovery_create_dbdir) and later records drop both; the
    startup process used to fail here ("could not open directory") and
    recovery never completed."""
    primary.sql("DROP DATABASE IF EXISTS gone_t")
    primary.sql("CREATE DATABASE gone_t TEMPLATE tpl")
    restore = Cluster(mount("PG_BRANCH_TEST_BTRFS2") / "pytest-restore-gone", 5507).fresh()
    with primary.connect() as backup:
        backup.execute("SELECT pg_backup_start('gone', true)")
        primary.sql("CREATE DATABASE gone_b TEMPLATE gone_t")
        primary.sql("DROP DATABASE gone_b")
        primary.sql("DROP DATABASE gone_t")
        copy_data_directory(primary, restore)
        label = backup.execute("SELECT labelfile FROM pg_backup_stop(true)").fetchone()[0]
    prepare_restore(primary, restore, label)
    try:
        restore.start()
        assert wait_for(lambda: not restore.one("SELECT pg_is_in_recovery()"), 120)
        assert restore.one("SELECT count(*) FROM pg_database WHERE datname LIKE 'gone%'") == 0
        assert restore.one("SELECT count(*) FROM pgbench_accounts", dbname="tpl") == 100000
        log = (restore.root / "log").read_text()
        assert "creating missing directory" not in log or "WARNING" not in log, log[-2000:]
    finally:
        restore.stop(mode="immediate", check=False)


def copy_data_directory(primary, restore):
    """The file copy of a base backup made with pg_backup_start (no WAL:
    replay takes it from the archive). Like pg_basebackup, pgBackRest or
    rsync -a, it does not carry extended attributes (shutil.copytree and
    cp -a do)."""
    subprocess.run(["cp", "-r", "--preserve=mode,ownership,timestamps", "--no-dereference",
                    primary.data, restore.data], check=True)
    for name in ("postmaster.pid", "postmaster.opts"):
        (restore.data / name).unlink(missing_ok=True)
    for p in (restore.data / "pg_wal").iterdir():
        if p.is_file():
            p.unlink()


def prepare_restore(primary, restore, label, conf="", signal_file="recovery.signal"):
    """Make a copied data directory a server that replays `primary`'s
    archive from the backup whose label pg_backup_stop returned."""
    (restore.data / "backup_label").write_text(label)
    for p in (restore.data / "pg_wal" / "archive_status").iterdir():
        p.unlink()
    with open(restore.data / "postgresql.conf", "a") as f:
        f.write(f"port = {restore.port}\nunix_socket_directories = '{restore.sock}'\n"
                f"restore_command = 'cp {primary.archive}/%f %p'\narchive_mode = off\n{conf}")
    (restore.data / signal_file).touch()
    subprocess.run(["chown", "-R", "postgres:postgres", restore.root], check=True)


def accounts(cluster, db):
    return cluster.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname=db)


def test_branches_made_while_a_backup_copies_a_live_template_are_exact(primary):
    """A base backup copies the files of a template that pgbench writes to,
    and of branches made from it while the copy runs. Replay of such a
    backup reaches each branch's record before it is consistent, when the
    template it would clone holds pages copied after the branch: here
    every page of pgbench_accounts, rewritten after bk_1 and flushed before
    the copy. The branches used to come back with those later rows (bk_1's
    filler read 'later'); while a backup runs, a branch is now also
    written into WAL page by page (backup.rs), and every restore of the
    backup (to the end of the backup, to the end of the WAL, and a
    streaming standby) holds each branch exactly as the primary made it."""
    pgbench_init(primary, "bk_t")
    if primary.has_contrib("amcheck"):
        primary.sql("CREATE EXTENSION amcheck", dbname="bk_t")
    copies = [Cluster(mount("PG_BRANCH_TEST_BTRFS2") / f"pytest-backup-{n}", 5523 + i).fresh()
              for i, n in enumerate(("consistent", "end", "standby"))]
    made = {}
    with primary.connect() as backup, primary.connect() as session:
        backup.execute("SELECT pg_backup_start('live', true)")
        load = pgbench_load(primary, "bk_t", 8)
        try:
            session.execute("CREATE DATABASE bk_1 TEMPLATE bk_t")
            made["bk_1"] = session.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone()[0]
            primary.sql("UPDATE pgbench_accounts SET filler = 'later'", dbname="bk_t")
            primary.sql("CHECKPOINT")
            copy_data_directory(primary, copies[0])
            session.execute("CREATE DATABASE bk_2 TEMPLATE bk_t")
            made["bk_2"] = session.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone()[0]
            label = backup.execute("SELECT labelfile FROM pg_backup_stop(true)").fetchone()[0]
        finally:
            load.communicate(timeout=60)
        session.execute("CREATE DATABASE bk_after TEMPLATE bk_t")
        made["bk_after"] = session.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone()[0]
    # Written page by page only while the backup ran.
    assert made["bk_1"] > 0 and made["bk_2"] > 0 and made["bk_after"] == 0, made
    wait_archived(primary)
    for c in copies[1:]:
        shutil.copytree(copies[0].data, c.data, symlinks=True)
    prepare_restore(primary, copies[0], label, "recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n")
    prepare_restore(primary, copies[1], label)
    prepare_restore(primary, copies[2], label, f"primary_conninfo = 'host={primary.sock} port={primary.port} user=postgres'\n"
                    "hot_standby = on\n", signal_file="standby.signal")
    try:
        for c in copies:
            c.start()
        for c in copies[:2]:
            assert wait_for(lambda: not c.one("SELECT pg_is_in_recovery()"), 120)
        wait_replayed(primary, copies[2])
        for c, dbs in ((copies[0], ["bk_1"]), (copies[1], list(made)), (copies[2], list(made))):
            for db in dbs:
                assert accounts(c, db) == accounts(primary, db), (c.root.name, db)
                oracle(c, db)
        assert copies[0].one("SELECT count(*) FROM pg_database WHERE datname = 'bk_after'") == 0
    finally:
        for c in copies:
            c.stop(mode="immediate", check=False)
        for db in list(made) + ["bk_t"]:
            primary.sql(f"DROP DATABASE IF EXISTS {db}")


def test_restoring_a_standbys_backup_warns_of_branches_made_while_it_ran(primary):
    """A backup taken on a standby is invisible to the primary, which so
    does not write branches made meanwhile into WAL page by page; replay
    of that backup rebuilds them from the template as the backup holds it.
    The restore says so, with a WARNING naming the branch and what to do
    (README: take backups from the primary)."""
    standby = make_standby(primary, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-sbackup-standby", 5528)
    restore = Cluster(mount("PG_BRANCH_TEST_BTRFS2") / "pytest-sbackup-restore", 5529).fresh()
    primary.sql("DROP DATABASE IF EXISTS sbk_1")
    try:
        with standby.connect() as backup:
            backup.execute("SELECT pg_backup_start('standby', true)")
            with primary.connect() as session:
                session.execute("CREATE DATABASE sbk_1 TEMPLATE tpl")
                assert session.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone() == (0,)
            # A restartpoint after the branch, so that the backup ends
            # (pg_control's minRecoveryPoint) after its record.
            primary.sql("CHECKPOINT")
            wait_replayed(primary, standby)
            standby.sql("CHECKPOINT")
            copy_data_directory(standby, restore)
            (restore.data / "standby.signal").unlink()
            label = backup.execute("SELECT labelfile FROM pg_backup_stop(false)").fetchone()[0]
        wait_archived(primary)
        prepare_restore(primary, restore, label)
        restore.start()
        assert wait_for(lambda: not restore.one("SELECT pg_is_in_recovery()"), 120)
        log = (restore.root / "log").read_text()
        oid = primary.one("SELECT oid FROM pg_database WHERE datname = 'sbk_1'")
        assert f'"base/{oid}" was branched while this backup of a standby ran' in log, log[-3000:]
        assert restore.one("SELECT count(*) FROM pg_database WHERE datname = 'sbk_1'") == 1
    finally:
        restore.stop(mode="immediate", check=False)
        standby.stop(mode="immediate", check=False)
        primary.sql("DROP DATABASE IF EXISTS sbk_1")


def test_a_base_backup_over_the_replication_protocol_is_seen(primary):
    """pg_basebackup starts its backup in a walsender, not with
    pg_backup_start: a branch made while it runs is written into WAL page
    by page too, and once it has gone, branches are not."""
    target = Cluster(mount("PG_BRANCH_TEST_BTRFS2") / "pytest-backup-slow", 5526).fresh()
    slow = subprocess.Popen(["sudo", "-u", "postgres", PG_BIN / "pg_basebackup", "-D", target.data, "-X", "none",
                             "-c", "fast", "--max-rate=32k", "-h", primary.sock, "-p", str(primary.port),
                             "-U", "postgres"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: primary.one("SELECT count(*) FROM pg_stat_progress_basebackup "
                                            "WHERE phase = 'streaming database files'") == 1)
        with primary.connect() as session:
            session.execute("CREATE DATABASE bk_proto TEMPLATE tpl")
            assert session.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone()[0] > 0
            primary.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_progress_basebackup")
            slow.wait(60)
            assert wait_for(lambda: primary.one("SELECT count(*) FROM pg_stat_progress_basebackup") == 0)
            session.execute("DROP DATABASE bk_proto")
            session.execute("CREATE DATABASE bk_proto TEMPLATE tpl")
            assert session.execute("SELECT wal_logged_pages FROM pgbranch.last_branch()").fetchone()[0] == 0
    finally:
        slow.terminate()
        primary.sql("DROP DATABASE IF EXISTS bk_proto")


def test_an_incremental_backup_after_branching_restores_every_branch(primary):
    """PostgreSQL 17's incremental backups send only the blocks that WAL
    summaries say changed since the prior backup. Our record names no
    block, and the summarizer does not read it; the backup must still
    hold each branch whole: a branch made after the full backup has files
    the prior manifest lacks (sent whole), and one that reuses a dropped
    database's OID follows core's DROP record, which the summarizer marks
    (the whole directory is sent again). Restored with pg_combinebackup,
    every branch equals the primary's."""
    if primary.one("SELECT current_setting('server_version_num')::int") < 170000:
        pytest.skip("incremental backups are new in PostgreSQL 17")
    root = mount("PG_BRANCH_TEST_BTRFS2")
    dirs = {n: root / f"pytest-incremental-{n}" for n in ("full", "incr")}
    restore = Cluster(root / "pytest-incremental-combined", 5527).fresh()
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        shutil.chown(d, "postgres", "postgres")
    primary.sql("ALTER SYSTEM SET summarize_wal = on")
    primary.sql("SELECT pg_reload_conf()")
    for db in ("inc_before", "inc_reused", "inc_new"):
        primary.sql(f"DROP DATABASE IF EXISTS {db}")
    try:
        primary.sql("CREATE DATABASE inc_before TEMPLATE tpl")
        backup = [PG_BIN / "pg_basebackup", "-c", "fast", "-h", primary.sock, "-p", primary.port, "-U", "postgres"]
        as_postgres(*backup, "-D", dirs["full"])
        reused = primary.one("SELECT oid FROM pg_database WHERE datname = 'inc_before'")
        primary.sql("UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid <= 500", dbname="inc_before")
        primary.sql("DROP DATABASE inc_before")
        primary.sql(f"CREATE DATABASE inc_reused OID = {reused} TEMPLATE tpl")
        primary.sql("CREATE DATABASE inc_new TEMPLATE tpl")
        primary.sql("UPDATE pgbench_accounts SET abalance = abalance - 2 WHERE aid > 99500", dbname="inc_new")
        as_postgres(*backup, "-D", dirs["incr"], "--incremental", dirs["full"] / "backup_manifest")
        as_postgres(PG_BIN / "pg_combinebackup", dirs["full"], dirs["incr"], "-o", restore.data)
        with open(restore.data / "postgresql.conf", "a") as f:
            f.write(f"port = {restore.port}\nunix_socket_directories = '{restore.sock}'\narchive_mode = off\n")
        restore.start()
        for db in ("inc_reused", "inc_new"):
            assert accounts(restore, db) == accounts(primary, db), db
            assert amcheck(restore, db) != 0
        assert restore.one("SELECT count(*) FROM pg_database WHERE datname = 'inc_before'") == 0
    finally:
        restore.stop(mode="immediate", check=False)
        primary.sql("ALTER SYSTEM RESET summarize_wal")
        primary.sql("SELECT pg_reload_conf()")
        for db in ("inc_before", "inc_reused", "inc_new"):
            primary.sql(f"DROP DATABASE IF EXISTS {db}")


def test_a_standby_restarting_before_a_branch_keeps_the_branch_it_built(primary):
    """On XFS (and wherever a branch is not a btrfs subvolume) redo used to
    rebuild a branch every time it replayed its record: a standby that
    restarts from a restartpoint before the record cloned the template
    again as its disk holds it then, with pages its buffer manager had
    already written with later changes. The branch then held the template's
    later rows. Redo now marks the directory it built with the record
    (timeline and end LSN) and keeps it when it meets the same record.
    shared_buffers is 16 pages on the standby, so replaying the update
    writes most of the template's pages; no restartpoint comes between (the
    standby's last one is its restart before the branch)."""
    primary.sql("DROP DATABASE IF EXISTS xfs_b")
    standby = make_standby(primary, mount("PG_BRANCH_TEST_XFS") / "pytest-standby-xfs", 5509)
    try:
        with open(standby.data / "postgresql.conf", "a") as f:
            f.write("shared_buffers = 128kB\ncheckpoint_timeout = 1h\nmax_wal_size = 4GB\n")
        standby.stop()
        standby.start()
        primary.sql("CREATE DATABASE xfs_b TEMPLATE tpl")
        oid = primary.one("SELECT oid FROM pg_database WHERE datname = 'xfs_b'")
        expected = primary.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="xfs_b")
        # A change the oracle does not look at (the template serves the
        # other tests), to every page of the table.
        primary.sql("UPDATE pgbench_accounts SET filler = 'written after the branch'", dbname="tpl")
        wait_replayed(primary, standby)
        assert not is_subvolume(standby.data / "base" / str(oid)), "a reflinked plain directory"
        assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="xfs_b") == expected
        standby.stop(mode="immediate")
        standby.start()
        wait_replayed(primary, standby)
        assert standby.one("SELECT count(*) FROM pgbench_accounts WHERE filler LIKE 'written after%'",
                           dbname="xfs_b") == 0
        assert standby.sql("SELECT * FROM pgbench_accounts ORDER BY aid", dbname="xfs_b") == expected
        log = (standby.root / "log").read_text()
        assert f'pg_branch redo: kept "base/{oid}", made by an earlier replay of this record' in log
    finally:
        standby.stop(mode="immediate", check=False)
        primary.sql("DROP DATABASE IF EXISTS xfs_b")


def test_pg_rewind_brings_back_an_old_primary_across_branches():
    """Fail over, branch and drop on both sides, then rewind the old primary
    with pg_rewind and follow the new one, as failover tools do. Our records
    carried XLR_SPECIAL_REL_UPDATE, which stops pg_rewind ("WAL record
    modifies a relation, but record type is not recognized"). pg_rewind
    treats them now as it treats core's database records: a branch only on
    the old primary goes, one only on the new primary is copied, and replay
    of the new primary's records rebuilds any directory with the same OID
    (it carries no mark of that record)."""
    p = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-rewind-p", 5510, extra_conf="wal_log_hints = on\nwal_keep_size = '1GB'\nlog_min_messages = log").init().start()
    s = None
    try:
        p.sql("CREATE EXTENSION pg_branch")
        pgbench_init(p, "tpl")
        p.sql("CREATE DATABASE rw_before TEMPLATE tpl")
        p.sql("CREATE DATABASE rw_gone TEMPLATE tpl")
        s = make_standby(p, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-rewind-s", 5511)
        wait_replayed(p, s)
        as_postgres(PG_BIN / "pg_ctl", "-D", s.data, "-w", "promote")
        assert wait_for(lambda: not s.one("SELECT pg_is_in_recovery()"))
        # The old primary's template changes in pages nothing on the new
        # side touches, so its branches differ there from the new side's.
        p.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid > 99000", dbname="tpl")
        for c, side in ((p, "old"), (s, "new")):
            c.sql(f"CREATE DATABASE rw_{side}_1 TEMPLATE tpl")
            c.sql(f"CREATE DATABASE rw_{side}_2 TEMPLATE rw_before")
            c.sql("DROP DATABASE rw_gone")
            c.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100", dbname=f"rw_{side}_1")
        s.sql("UPDATE pgbench_accounts SET abalance = abalance - 5 WHERE aid <= 10", dbname="tpl")
        s.sql("CREATE DATABASE rw_new_3 TEMPLATE tpl")
        # The same OID on both sides, for different branches: after the
        # rewind the old primary's own subvolume is there under that OID,
        # and replay must rebuild it, not keep it.
        same = p.one("SELECT oid FROM pg_database WHERE datname = 'rw_old_1'")
        s.sql(f"CREATE DATABASE rw_new_same_oid OID = {same} TEMPLATE tpl")
        p.stop()
        as_postgres(PG_BIN / "pg_rewind", "-D", p.data,
                    "--source-server", f"host={s.sock} port={s.port} user=postgres dbname=postgres")
        (p.data / "standby.signal").touch()
        shutil.chown(p.data / "standby.signal", "postgres", "postgres")
        with open(p.data / "postgresql.conf", "a") as f:
            # pg_rewind copied the new primary's configuration: its own
            # port and socket again.
            f.write(f"port = {p.port}\nunix_socket_directories = '{p.sock}'\narchive_mode = off\n")
        with open(p.data / "postgresql.auto.conf", "a") as f:
            # And follow the new primary. Its postgresql.auto.conf, copied
            # too, still has the primary_conninfo pg_basebackup -R wrote
            # when it was a standby: the old primary's own socket, which
            # overrides postgresql.conf. The old primary then streamed from
            # itself, and started only if pg_rewind had copied all the WAL
            # up to its minimum recovery point (not when the new primary
            # wrote a record meanwhile, e.g. a running-xacts snapshot).
            f.write(f"primary_conninfo = 'host={s.sock} port={s.port} user=postgres'\n")
        # A standby accepts connections once it is consistent: here after
        # replaying, from the last common checkpoint, what the new primary
        # streams to it. It once took over a minute on a loaded machine;
        # the log (LOG level) says where the time goes if it happens again.
        p.start(wait_seconds=180)
        wait_replayed(s, p)
        names = "SELECT datname FROM pg_database ORDER BY 1"
        assert p.sql(names) == s.sql(names)
        assert not {"rw_old_1", "rw_old_2", "rw_gone"} & {n for (n,) in p.sql(names)}
        for (db,) in s.sql("SELECT datname FROM pg_database WHERE datname LIKE 'rw_%' OR datname = 'tpl'"):
            q = "SELECT * FROM pgbench_accounts ORDER BY aid"
            assert p.sql(q, dbname=db) == s.sql(q, dbname=db), db
            oid = s.one("SELECT oid FROM pg_database WHERE datname = %s", params=(db,))
            assert sorted(os.listdir(p.data / "base" / str(oid))) == sorted(os.listdir(s.data / "base" / str(oid))), db
    finally:
        if s is not None:
            s.stop(mode="immediate", check=False)
        p.stop(mode="immediate", check=False)


def preload(cluster, libraries):
    """shared_preload_libraries for the next start (ALTER SYSTEM would
    write '' as a list holding one empty name)."""
    with open(cluster.data / "postgresql.auto.conf", "a") as f:
        f.write(f"shared_preload_libraries = '{libraries}'\n")


def test_uninstalling_by_the_readme_leaves_a_server_that_recovers():
    """Taken out of shared_preload_libraries while WAL still holds its
    records, pg_branch left a server whose crash recovery stopped at the
    first of them ("resource manager with ID 128 not registered"). The
    README's Uninstall steps (wal_record = core, CHECKPOINT, wait for the
    standbys) and pgbranch.wal_needs_pg_branch() are checked here: first
    the failure they prevent, then the steps, a kill -9 without pg_branch,
    and a new standby that never loaded it."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-uninstall", 5514).init().start()
    standby = None
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE un_t")
        c.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", dbname="un_t")
        # The first branch after a start waits for a whole checkpoint; the
        # next one commits once its checkpoint has started, which gdb then
        # holds: until it completes, crash recovery replays the record.
        c.sql("CREATE DATABASE un_first TEMPLATE un_t")
        gdb = Gdb(c.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"))
        gdb.run("break ProcessSyncRequests", "continue")
        c.sql("CREATE DATABASE un_b TEMPLATE un_t")
        assert wait_for(lambda: gdb.stopped_at("ProcessSyncRequests"))
        needs = dict((r, n) for r, n, _ in c.sql("SELECT * FROM pgbranch.wal_needs_pg_branch()"))
        assert needs["crash recovery"] is True and needs["base backups and archived WAL"] is True
        # Without the steps: no preload, kill -9, and recovery cannot start.
        preload(c, "")
        c.kill9()
        gdb.close()
        with pytest.raises(subprocess.CalledProcessError):
            c.start()
        assert "resource manager with ID 128 not registered" in (c.root / "log").read_text()
        preload(c, LIBRARY)
        c.start()
        # The steps.
        c.sql("ALTER SYSTEM SET pg_branch.wal_record = core")
        c.sql("SELECT pg_reload_conf()")
        c.sql("CHECKPOINT")
        needs = dict((r, n) for r, n, _ in c.sql("SELECT * FROM pgbranch.wal_needs_pg_branch()"))
        assert needs["crash recovery"] is False
        c.sql("CREATE DATABASE un_after TEMPLATE un_t")  # core's record from now on
        c.sql("DROP EXTENSION pg_branch")
        c.sql("ALTER SYSTEM RESET pg_branch.wal_record")
        preload(c, "")
        c.kill9()
        c.start()
        assert c.one("SHOW shared_preload_libraries") == ""
        for db in ("un_b", "un_after"):
            assert c.one("SELECT count(*) FROM t", dbname=db) == 100
        standby = make_standby(c, mount("PG_BRANCH_TEST_BTRFS2") / "pytest-uninstall-standby", 5515, preload=False)
        c.sql("CREATE DATABASE un_core TEMPLATE un_t")
        wait_replayed(c, standby)
        assert standby.one("SELECT count(*) FROM t", dbname="un_core") == 100
    finally:
        if standby is not None:
            standby.stop(mode="immediate", check=False)
        c.stop(mode="immediate", check=False)
