"""pg_branch fork: a copy-on-write copy of a whole running cluster
(fork/src/fork.rs). Each fork is started and checked as a server of its
own: every database consistent (pgbench's TPC-B invariant, amcheck),
exactly what was committed before the fork and nothing committed after it,
its databases subvolumes again, and the source never disturbed."""

import os
import shutil
import signal
import subprocess
from contextlib import contextmanager

import pytest

from harness import (PG_BIN, Cluster, amcheck, as_postgres, is_subvolume, make_standby, mount, oracle,
                     tablespace, wait_for, wait_replayed)

FORK = PG_BIN / "pg_branch"
DBS = ("postgres", "plain", "b1", "b2")
STEPS = ["created", "started", "cloning", "cloned", "stopped", "written"]


def fork(source, target, port, *more, check=True, env=()):
    """Run `pg_branch fork` as postgres; the finished process."""
    dsn = f"host={source.sock} port={source.port} user=postgres"
    return as_postgres("env", *env, FORK, "fork", "--source-dsn", dsn, "--target", target, "--port", port, *more,
                       check=check)


def fork_of(source, root, port):
    """The Cluster object of a fork at `root/data` (made by fork()); its
    socket is the source's directory (its own port, its own lock file)."""
    c = Cluster(root, port)
    c.sock = source.sock
    return c


def fresh_root(root):
    if root.exists():
        c = Cluster(root, 0)
        c.stop(mode="immediate", check=False)
        shutil.rmtree(root)
    shutil.rmtree(mount("PG_BRANCH_TEST_BTRFS2") / root.name, ignore_errors=True)
    owned_dir(root)
    return root


def owned_dir(path):
    """A new directory the fork (run as postgres) may fill: the test
    mounts' roots belong to root, as on a fresh machine."""
    path.mkdir(parents=True)
    shutil.chown(path, "postgres", "postgres")
    return path


def leftovers(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture(scope="module")
def source():
    """A cluster on btrfs with three databases: `plain` (a plain directory,
    pgbench), `b1` (a branch of it, with a table in a tablespace on a second
    btrfs filesystem) and `b2` (a branch of b1: a snapshot); and a
    replication slot, which a fork must not carry."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "fork-source", 5521).init().start()
    c.sql("CREATE EXTENSION pg_branch")
    c.sql("CREATE DATABASE plain STRATEGY FILE_COPY")
    c.pgbench("-i", "-s", "2", "-q", "plain")
    c.sql("CREATE DATABASE b1 TEMPLATE plain")
    ts_dir = mount("PG_BRANCH_TEST_BTRFS2") / "fork-source-ts"
    tablespace(c, "ts", ts_dir)
    c.sql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 5000) g",
          dbname="b1")
    c.sql("CREATE DATABASE b2 TEMPLATE b1")
    for db in DBS:
        c.sql("CREATE TABLE markers (label text)", dbname=db)
        if c.has_contrib("amcheck"):
            c.sql("CREATE EXTENSION IF NOT EXISTS amcheck", dbname=db)
    c.sql("SELECT pg_create_physical_replication_slot('keepme', true)")
    c.ts_dir = ts_dir
    yield c
    c.stop(check=False)


def mapping(source, root):
    """The fork's tablespace on the tablespace's own filesystem."""
    ts_new = owned_dir(mount("PG_BRANCH_TEST_BTRFS2") / root.name) / "ts"
    return ts_new, f"--tablespace-mapping={source.ts_dir}={ts_new}"


def databases(c):
    return [r[0] for r in c.sql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")]


def test_a_fork_under_load_is_consistent_and_leaves_the_source_undisturbed(source):
    root = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-1")
    f = fork_of(source, root, 5522)
    ts_new, tmap = mapping(source, root)
    loads = [source.pgbench("-c", "2", "-T", "25", "--no-vacuum", db, background=True) for db in ("plain", "b2")]
    try:
        assert wait_for(lambda: all(source.one("SELECT count(*) FROM pgbench_history", dbname=db) > 20
                                    for db in ("plain", "b2")))
        for db in DBS:
            source.sql("INSERT INTO markers VALUES ('before')", dbname=db)
        before = {db: source.one("SELECT count(*) FROM pgbench_history", dbname=db) for db in ("plain", "b2")}
        done = fork(source, f.data, f.port, tmap, "--start")
        for db in DBS:
            source.sql("INSERT INTO markers VALUES ('after')", dbname=db)
        after = {db: source.one("SELECT count(*) FROM pgbench_history", dbname=db) for db in ("plain", "b2")}
        assert all(p.poll() is None for p in loads), "the load ended before the fork did"
    finally:
        outputs = [p.communicate(timeout=120)[0] for p in loads]
    # The source kept serving throughout: no pgbench client failed.
    for p, out in zip(loads, outputs):
        assert p.returncode == 0, out
        assert "number of failed transactions: 0 " in out, out
    assert "consistent at" in done.stderr, done.stderr
    try:
        # Every database, at one moment: what was committed before the fork,
        # nothing committed after it.
        assert databases(f) == databases(source)
        for db in DBS:
            assert [r[0] for r in f.sql("SELECT label FROM markers", dbname=db)] == ["before"], db
        for db in ("plain", "b2"):
            n = oracle(f, db)
            assert before[db] <= n <= after[db], (db, before[db], n, after[db])
        oracle(f, "b1")
        assert amcheck(f, "postgres") != 0
        assert f.one("SELECT count(*) FROM in_ts", dbname="b1") == 5000
        assert f.one("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'") == str(ts_new)
        # A server of its own: its port, no slots, not a standby, same
        # system identifier (none was asked for), the registry carried.
        assert f.one("SHOW port") == str(f.port)
        assert f.one("SELECT count(*) FROM pg_replication_slots") == 0
        assert f.one("SELECT pg_is_in_recovery()") is False
        assert f.one("SHOW archive_mode") == "off"
        assert not (f.data / "standby.signal").exists()
        sysid = "SELECT system_identifier FROM pg_control_system()"
        assert f.one(sysid) == source.one(sysid)
        registry = "SELECT name, parent_name_at_branch, depth, created_at, branch_lsn FROM pgbranch.branches ORDER BY name"
        assert f.sql(registry) == source.sql(registry)
        # Its databases are subvolumes again, so branches in it are O(1).
        for db in ("plain", "b1", "b2"):
            assert is_subvolume(f.db_path(db)), db
        f.sql("CREATE DATABASE b3 TEMPLATE b2")
        with f.connect() as conn:
            conn.execute("CREATE DATABASE b4 TEMPLATE b2")
            assert conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()[0] == "snapshot"
        oracle(f, "b4")
    finally:
        f.stop()
    # The source: still the same server, no backup or slot of the fork's left.
    assert source.one("SELECT count(*) FROM pg_replication_slots") == 1
    with source.connect() as conn:
        conn.execute("SELECT pg_backup_start('check', true)")
        conn.execute("SELECT pg_backup_stop(false)")
    for db in ("plain", "b2"):
        oracle(source, db)


def test_a_fork_of_a_fork_with_a_new_system_identifier(source):
    root1 = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-2a")
    root2 = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-2b")
    f1 = fork_of(source, root1, 5523)
    f2 = fork_of(source, root2, 5524)
    ts1, tmap1 = mapping(source, root1)
    fork(source, f1.data, f1.port, tmap1, "--start")
    try:
        f1.sql("INSERT INTO markers VALUES ('in the first fork')", dbname="b2")
        f1.ts_dir = ts1
        ts2, tmap2 = mapping(f1, root2)
        done = fork(f1, f2.data, f2.port, tmap2, "--start", "--new-system-identifier")
        assert "new system identifier" in done.stderr
        try:
            markers = "SELECT label FROM markers ORDER BY label"
            assert ("in the first fork",) in f2.sql(markers, dbname="b2")
            assert f2.sql(markers, dbname="b2") == f1.sql(markers, dbname="b2")
            sysid = "SELECT system_identifier FROM pg_control_system()"
            assert f2.one(sysid) != f1.one(sysid)
            for db in ("plain", "b1", "b2"):
                oracle(f2, db)
            f2.sql("CREATE DATABASE b5 TEMPLATE b1")
            assert f2.one("SELECT count(*) FROM in_ts", dbname="b5") == 5000
            # It writes, checkpoints and restarts on its own identifier.
            f2.pgbench("-c", "1", "-t", "50", "--no-vacuum", "b2")
            f2.sql("CHECKPOINT")
            f2.stop()
            f2.start()
            oracle(f2, "b2")
        finally:
            f2.stop()
    finally:
        f1.stop()


def test_a_fork_of_a_standby_is_a_consistent_copy_of_the_standby(source):
    sb = make_standby(source, mount("PG_BRANCH_TEST_BTRFS") / "fork-standby", 5525)
    root = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-3")
    f = fork_of(sb, root, 5526)
    try:
        load = source.pgbench("-c", "2", "-T", "15", "--no-vacuum", "plain", background=True)
        assert wait_for(lambda: source.one("SELECT count(*) FROM pgbench_history", dbname="plain") > 20)
        source.sql("INSERT INTO markers VALUES ('replayed')", dbname="b1")
        wait_replayed(source, sb)
        tmaps = [f"--tablespace-mapping={loc}={root}/ts{n}"
                 for n, (loc,) in enumerate(sb.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                                                   "WHERE pg_tablespace_location(oid) <> ''"))]
        done = fork(sb, f.data, f.port, *tmaps, "--start")
        assert "the standby" in done.stderr
        out = load.communicate(timeout=120)[0]
        assert load.returncode == 0, out
        assert ("replayed",) in f.sql("SELECT label FROM markers", dbname="b1")
        for db in ("plain", "b1", "b2"):
            oracle(f, db)
        assert f.one("SELECT pg_is_in_recovery()") is False
        f.sql("CREATE DATABASE b6 TEMPLATE plain")
        oracle(f, "b6")
    finally:
        f.stop()
        sb.stop()


def test_a_standby_signal_only_when_asked(source):
    root = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-4")
    f = fork_of(source, root, 5527)
    ts, tmap = mapping(source, root)
    fork(source, f.data, f.port, tmap, "--standby", "--start")
    try:
        assert (f.data / "standby.signal").exists()
        assert f.one("SELECT pg_is_in_recovery()") is True
        assert f.one("SHOW primary_conninfo") == ""
        markers = "SELECT label FROM markers ORDER BY label"
        assert f.sql(markers, dbname="b2") == source.sql(markers, dbname="b2") != []
    finally:
        f.stop()


def process_state(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step_leaves_the_source_untouched_and_the_next_run_cleans_up(source, step):
    root = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-kill")
    f = fork_of(source, root, 5528)
    ts, tmap = mapping(source, root)
    dsn = f"host={source.sock} port={source.port} user=postgres"
    # Started as postgres directly, not through sudo: sudo stops itself
    # when its command stops, and would outlive the kill.
    proc = subprocess.Popen([FORK, "fork", "--source-dsn", dsn, "--target", f.data, "--port", str(f.port), tmap],
                            user="postgres", group="postgres", extra_groups=[], cwd="/",
                            env={"PG_BRANCH_FORK_STOP_AT": step, "PATH": os.environ["PATH"]},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: proc.poll() is not None or process_state(proc.pid) == "T", 60)
    assert proc.poll() is None, proc.stderr.read()
    proc.kill()
    proc.wait(30)
    # The source: the fork's session is gone, and with it its backup and slot.
    assert wait_for(lambda: source.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_branch fork'") == 0)
    assert source.one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pg_branch_fork%'") == 0
    with source.connect() as conn:
        conn.execute("SELECT pg_backup_start('check', true)")
        conn.execute("SELECT pg_backup_stop(false)")
    assert source.sql("SELECT item, detail FROM pgbranch.doctor() WHERE status = 'error'") == []
    assert (f.data / "pg_branch_fork.incomplete").exists()
    # The next run removes what is left, and forks.
    done = fork(source, f.data, f.port, tmap, "--start")
    assert "removed what an interrupted fork had left" in done.stderr
    try:
        oracle(f, "plain")
        assert not (f.data / "pg_branch_fork.incomplete").exists()
    finally:
        f.stop()


def test_bad_input_fails_clearly_and_leaves_nothing(source, ext4):
    root = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-bad")
    target = root / "data"
    ts, tmap = mapping(source, root)

    def fails(*args, message, dsn_of=source, tgt=target):
        done = fork(dsn_of, tgt, 5529, *args, check=False)
        assert done.returncode == 1, done.stderr
        assert message in done.stderr, done.stderr
        assert not (root / "data").exists() or tgt != target
        assert not (root / "data.tblspc").exists()
        assert not ts.exists()
        assert source.one("SELECT count(*) FROM pg_replication_slots") == 1
        return done.stderr

    # The tablespace's default place (next to the fork) is on another filesystem.
    fails(message="is on another filesystem than tablespace \"ts\"")
    # The target on another filesystem; the source on one that cannot share blocks.
    other = mount("PG_BRANCH_TEST_EXT4") / "fork-bad"
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    shutil.chown(other, "postgres", "postgres")
    fails(tmap, message="is on another filesystem than the source's data directory", tgt=other / "data")
    assert list(other.iterdir()) == []
    err = fails(message="is on a filesystem that cannot share blocks", dsn_of=ext4, tgt=other / "data")
    assert "cannot clone files" in err
    # A target that is not empty; a missing parent; no permission.
    target.mkdir()
    (target / "precious").write_text("x")
    done = fork(source, target, 5529, tmap, check=False)
    assert done.returncode == 1 and "exists but is not empty" in done.stderr
    assert leftovers(target) == ["precious"]
    shutil.rmtree(target)
    fails(tmap, message="No such file or directory", tgt=root / "missing" / "data")
    locked = root / "locked"
    locked.mkdir(mode=0o755)
    fails(tmap, message="Permission denied", tgt=locked / "data")
    assert list(locked.iterdir()) == []
    # A mapping of no tablespace; a role that may not take backups.
    fails(f"--tablespace-mapping=/nowhere={ts}", tmap, message="the source has no tablespace in \"/nowhere\"")
    source.sql("DROP ROLE IF EXISTS fork_nobody")
    source.sql("CREATE ROLE fork_nobody LOGIN")
    done = as_postgres(FORK, "fork", "--source-dsn", f"host={source.sock} port={source.port} user=fork_nobody",
                       "--target", target, "--port", "5529", tmap, check=False)
    assert done.returncode == 1 and "hint: Connect as a superuser" in done.stderr, done.stderr
    assert not target.exists() and not ts.exists()
    # As root; without a port.
    done = subprocess.run([FORK, "fork", "--source-dsn", "x", "--target", target, "--port", "5529"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "cannot be run as root" in done.stderr
    done = as_postgres(FORK, "fork", "--source-dsn", "x", "--target", target, check=False)
    assert done.returncode == 1 and "--port is required" in done.stderr


def test_a_fork_on_xfs(xfs):
    """Reflinks file by file; a tablespace in its default place."""
    xfs.sql("DROP DATABASE IF EXISTS fx WITH (FORCE)")
    xfs.sql("CREATE DATABASE fx")
    xfs.pgbench("-i", "-s", "1", "-q", "fx")
    ts_dir = mount("PG_BRANCH_TEST_XFS") / "fork-xfs-space"
    xfs.sql("DROP TABLE IF EXISTS in_ts", dbname="fx")
    tablespace(xfs, "fxts", ts_dir)
    xfs.sql("CREATE TABLE in_ts TABLESPACE fxts AS SELECT g FROM generate_series(1, 1000) g", dbname="fx")
    root = fresh_root(mount("PG_BRANCH_TEST_XFS") / "fork-xfs")
    f = fork_of(xfs, root, 5530)
    load = xfs.pgbench("-c", "2", "-T", "10", "--no-vacuum", "fx", background=True)
    try:
        assert wait_for(lambda: xfs.one("SELECT count(*) FROM pgbench_history", dbname="fx") > 20)
        # Without --start it says how to start it, and that command works.
        done = fork(xfs, f.data, f.port)
        command = done.stderr.split("pg_branch: start it with: ", 1)[1].splitlines()[0].split()
        as_postgres(*command[:-1], "-w", command[-1])
        assert load.poll() is None
        out = load.communicate(timeout=60)[0]
        assert load.returncode == 0, out
        oracle(f, "fx")
        assert f.one("SELECT count(*) FROM in_ts", dbname="fx") == 1000
        assert f.one("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fxts'") \
            == str(root / "data.tblspc" / str(xfs.one("SELECT oid FROM pg_tablespace WHERE spcname = 'fxts'")))
        with f.connect() as conn:
            conn.execute("CREATE DATABASE fy TEMPLATE fx")
            assert conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()[0] == "reflink"
    finally:
        f.stop()
        xfs.sql("DROP TABLE in_ts", dbname="fx")
        xfs.sql("DROP DATABASE fx WITH (FORCE)")
        xfs.sql("DROP TABLESPACE fxts")



def test_a_debian_style_source_with_its_configuration_elsewhere_and_pg_wal_on_another_filesystem():
    """As Debian's pg_createcluster lays a cluster out: postgresql.conf,
    pg_hba.conf and pg_ident.conf in their own directory (the server
    started with that directory, data_directory pointing at the data), and
    pg_wal a symbolic link to another filesystem (initdb --waldir), whose
    segments a fork copies instead of cloning."""
    root = fresh_root(mount("PG_BRANCH_TEST_BTRFS") / "fork-debian")
    shutil.rmtree(mount("PG_BRANCH_TEST_EXT4") / "fork-debian", ignore_errors=True)
    waldir = owned_dir(mount("PG_BRANCH_TEST_EXT4") / "fork-debian") / "wal"
    c = Cluster(root / "source", 5533).init(f"--waldir={waldir}")
    etc = owned_dir(root / "etc")
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        shutil.move(c.data / name, etc / name)
        shutil.chown(etc / name, "postgres", "postgres")
    with open(etc / "postgresql.conf", "a") as f:
        f.write(f"data_directory = '{c.data}'\nhba_file = '{etc}/pg_hba.conf'\nident_file = '{etc}/pg_ident.conf'\n"
                "include_if_exists = 'conf.d/local.conf'\n")
    owned_dir(etc / "conf.d")
    (etc / "conf.d" / "local.conf").write_text("work_mem = '7MB'\n")
    as_postgres(PG_BIN / "pg_ctl", "-D", etc, "-l", root / "log", "-w", "start")
    f = fork_of(c, owned_dir(root / "fork"), 5534)
    try:
        c.sql("CREATE DATABASE app")
        c.pgbench("-i", "-s", "1", "-q", "app")
        load = c.pgbench("-c", "2", "-T", "10", "--no-vacuum", "app", background=True)
        assert wait_for(lambda: c.one("SELECT count(*) FROM pgbench_history", dbname="app") > 20)
        fork(c, f.data, f.port, "--start")
        out = load.communicate(timeout=60)[0]
        assert load.returncode == 0, out
        oracle(f, "app")
        assert f.one("SHOW data_directory") == str(f.data)
        assert f.one("SHOW config_file") == str(f.data / "postgresql.conf")
        assert f.one("SHOW hba_file") == str(f.data / "pg_hba.conf")
        assert f.one("SHOW work_mem") == "7MB"
        assert f.one("SHOW port") == str(f.port)
        assert not (f.data / "pg_wal").is_symlink() and (f.data / "pg_wal").is_dir()
        # The source's configuration is as it was.
        assert "#pg_branch" not in (etc / "postgresql.conf").read_text()
        assert c.one("SHOW config_file") == str(etc / "postgresql.conf")
    finally:
        f.stop(check=False)
        as_postgres(PG_BIN / "pg_ctl", "-D", etc, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(waldir.parent, ignore_errors=True)

@contextmanager
def small_xfs(path, size="300M"):
    """A small XFS filesystem (reflink) of its own at `path`, to fill up."""
    image = path.parent / f"{path.name}.img"
    subprocess.run(["umount", path], capture_output=True)
    image.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", size, image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", image], check=True)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", image, path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)
        image.unlink()


def fill(directory):
    """Take every free block of the filesystem of `directory`."""
    st = os.statvfs(directory)
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize), directory / "filler"], check=True)
    n = 0
    try:
        while True:
            (directory / f"filler{n}").write_bytes(b"x" * 4096)
            n += 1
    except OSError:
        pass


def test_a_full_disk_fails_the_fork_and_leaves_nothing():
    """The disk fills up after the backup has started (the command stopped
    there, the disk filled, the command continued): the clone fails with
    ENOSPC, what was made is removed, and the source's backup ends."""
    with small_xfs(mount("PG_BRANCH_TEST_BTRFS") / "fork-full") as fs:
        src = Cluster(fs / "source", 5531).init().start()
        try:
            src.sql("CREATE EXTENSION pg_branch")
            (fs / "forks").mkdir()
            shutil.chown(fs / "forks", "postgres", "postgres")
            target = fs / "forks" / "fork"
            dsn = f"host={src.sock} port={src.port} user=postgres"
            proc = subprocess.Popen([FORK, "fork", "--source-dsn", dsn, "--target", target, "--port", "5532"],
                                    user="postgres", group="postgres", extra_groups=[], cwd="/",
                                    env={"PG_BRANCH_FORK_STOP_AT": "started", "PATH": os.environ["PATH"]},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert wait_for(lambda: proc.poll() is not None or process_state(proc.pid) == "T", 60)
            assert proc.poll() is None, proc.stderr.read()
            assert target.exists()
            fill(fs)
            proc.send_signal(signal.SIGCONT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, err
            assert "No space left on device" in err, err
            assert not target.exists(), err
            assert src.one("SELECT count(*) FROM pg_replication_slots") == 0
            for p in fs.glob("filler*"):
                p.unlink()
            f = fork_of(src, fs / "forks", 5532)
            f.data = target
            fork(src, target, f.port, "--start")
            try:
                assert f.one("SELECT count(*) FROM pg_database") == src.one("SELECT count(*) FROM pg_database")
            finally:
                f.stop()
        finally:
            src.stop(mode="immediate", check=False)
