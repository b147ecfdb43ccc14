"""The maintenance functions lock like core's database commands do.

orphans() / remove_orphans() and doctor() read pg_database and other
databases' pages; they must never mistake a live database for an orphan,
nor leave a buffer behind for a file that DROP DATABASE or ALTER DATABASE
... SET TABLESPACE is about to remove.

The races are made deterministic with gdb: a breakpoint in the backend (a
Python `stop()` that picks the exact call) holds it at a chosen point
while another session runs. The breakpoints are on functions the server
exports, and they look at registers and at the first fields of structs
whose layout is the same in PostgreSQL 15-18, so they need no debug
information.
"""

import os
import re
import shutil
import signal
import subprocess
import threading

import psycopg
import pytest

from harness import Cluster, is_subvolume, mount, tablespace, wait_for, waiting_on_lock

GDB_SCRIPT = """
import gdb
gdb.execute("set pagination off")
gdb.execute("set confirm off")
# The server signals its backends (barriers, latches, timeouts): let them
# through. SIGINT keeps gdb's default (stop, not passed): detach() uses it.
gdb.execute("handle SIGUSR1 SIGUSR2 SIGTERM SIGALRM SIGPIPE SIGQUIT nostop noprint pass")

def u32(expr):
    return int(gdb.parse_and_eval("*(unsigned int *)(" + expr + ")")) & 0xffffffff

stops = 0

class Stop(gdb.Breakpoint):
    def __init__(self, fn):
        # "*fn": the function's first instruction, where $rdi is still its
        # first argument, with or without debug symbols (with them, a plain
        # "fn" breaks after the prologue).
        super().__init__("*" + fn)
        self.fn = fn
        self.matches = 0

    def stop(self):
        global stops
        fn = self.fn
        older = gdb.newest_frame().older()
        lib = gdb.solib_name(older.pc()) if older is not None else None
        from_pg_branch = bool(lib) and "pg_branch" in lib
        rdi = int(gdb.parse_and_eval("$rdi")) & 0xffffffffffffffff
        if not (FILTER):
            return False
        self.matches += 1
        if not (WHEN):
            return False
        stops += 1
        open(MARK + "." + str(stops), "w").close()
        return True

for f in FUNCTIONS:
    Stop(f)
open(MARK + ".attached", "w").close()
gdb.execute("continue")
"""


class ScriptedGdb:
    """gdb attached to backend `pid`, stopping it in one of `functions`
    whenever the Python expressions `filter` (which calls count) and `when`
    (which of those stop) hold. They see `fn` (the function hit), `stops`
    (how many stops so far), `self.matches` (calls of `fn` that passed
    `filter`), `from_pg_branch` (whether pg_branch.so made the call),
    `rdi` (the first argument) and `u32(expr)` (reads memory)."""

    def __init__(self, tmp_path, pid, functions, filter="True", when="True"):
        self.mark = str(tmp_path / f"gdb-{pid}")
        script = tmp_path / f"gdb-{pid}.py"
        script.write_text(f"FUNCTIONS = {list(functions)!r}\nMARK = {self.mark!r}\n"
                          + GDB_SCRIPT.replace("FILTER", filter).replace("WHEN", when))
        self.proc = subprocess.Popen(["gdb", "-q", "-nx", "-p", str(pid), "-x", str(script)],
                                     stdin=subprocess.PIPE, stdout=open(self.mark + ".log", "w"),
                                     stderr=subprocess.STDOUT, text=True)
        assert wait_for(lambda: os.path.exists(self.mark + ".attached"), 120), "gdb did not attach"

    def stopped(self, n=1):
        return os.path.exists(f"{self.mark}.{n}")

    def wait_stopped(self, n=1, timeout=60):
        assert wait_for(lambda: self.stopped(n), timeout), f"backend never reached stop {n}"

    def cont(self):
        self.proc.stdin.write("continue\n")
        self.proc.stdin.flush()

    def detach(self):
        if self.proc.poll() is None:
            # A running backend must be stopped before gdb reads commands
            # again: SIGINT makes gdb interrupt it (the backend never sees it).
            self.proc.send_signal(signal.SIGINT)
            self.proc.stdin.write("detach\nquit\n")
            self.proc.stdin.flush()
            self.proc.wait(60)


class Session:
    """A connection whose statements run in a thread, so that its backend
    can be stopped in gdb meanwhile."""

    def __init__(self, cluster, name, dbname="postgres"):
        self.cluster = cluster
        self.name = name
        self.conn = cluster.connect(dbname)
        self.conn.execute("SELECT set_config('application_name', %s, false)", (name,))
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.thread = None

    def start(self, sql):
        self.rows, self.error = None, None

        def run():
            try:
                cur = self.conn.execute(sql)
                self.rows = cur.fetchall() if cur.description else None
            except psycopg.Error as e:
                self.error = e

        self.thread = threading.Thread(target=run)
        self.thread.start()
        return self

    def done(self):
        return self.thread is not None and not self.thread.is_alive()

    def waiting_on_lock(self):
        return waiting_on_lock(self.cluster, self.name)

    def join(self):
        self.thread.join(120)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error
        return self.rows

    def close(self):
        self.conn.close()


@pytest.fixture
def fresh(request):
    """A cluster of its own: these tests fill pg_database, or leave a
    cluster whose checkpoints fail when the bug is there."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / f"pytest-maint-{request.node.name[:40]}", 5520,
                extra_conf="autovacuum = off").init().start()
    c.sql("CREATE EXTENSION pg_branch")
    yield c
    c.stop(mode="immediate", check=False)


def block_and_offset(cluster, name):
    ctid = cluster.one("SELECT ctid::text FROM pg_database WHERE datname = %s", params=(name,))
    block, offset = ctid.strip("()").split(",")
    return int(block), int(offset)


def spread_pg_database(cluster):
    """Fill pg_database until it has three pages; returns a database whose
    row is the last of page 1, which is full (so an update of it cannot
    stay on its page), after making room on page 0 (so the new version of
    that row goes there, behind a scan that has passed page 0)."""
    cluster.sql("CREATE DATABASE fill_tpl")  # a subvolume: the rest are snapshots of it
    n = 0
    while True:
        cluster.sql(f"CREATE DATABASE fill{n} TEMPLATE fill_tpl")
        if block_and_offset(cluster, f"fill{n}")[0] == 2:
            break
        n += 1
        assert n < 1000
    on = {}
    for (name,) in cluster.sql("SELECT datname FROM pg_database"):
        on.setdefault(block_and_offset(cluster, name)[0], []).append((block_and_offset(cluster, name)[1], name))
    victim = max(on[1])[1]
    page0 = sorted(on[0])
    # Drop fillers in the middle of page 0 (their line pointers are reused
    # first; a trailing one would be truncated away by VACUUM).
    for _, name in [x for x in page0 if x[1].startswith("fill")][1:5]:
        cluster.sql(f"DROP DATABASE {name}")
    cluster.sql("VACUUM pg_database")
    return victim


# PostgreSQL's RelFileLocator (RelFileNode in 15) opens struct RelationData:
# {spcOid, dbOid, relNumber}. pg_database is 1664 (pg_global) / 0 / 1262.
PG_DATABASE_SCAN = ("from_pg_branch and u32('*(unsigned long *)$rdi') == 1664 "
                    "and u32('*(unsigned long *)$rdi + 8') == 1262")


@pytest.mark.parametrize("function", ["orphans", "remove_orphans"])
def test_orphans_never_take_a_database_altered_during_the_scan(fresh, tmp_path, function):
    c = fresh
    victim = spread_pg_database(c)
    victim_dir = c.db_path(victim)
    on_page0 = c.one("SELECT count(*) FROM pg_database WHERE (ctid::text::point)[0] = 0")
    scanner = Session(c, "orphan_scan")
    # Stop the scan of pg_database when it asks for its second tuple of
    # page 1: page 0 is behind it, the victim's row still ahead.
    gdb = ScriptedGdb(tmp_path, scanner.pid, ["systable_getnext"], PG_DATABASE_SCAN,
              f"self.matches == {on_page0 + 2}")
    alter = None
    try:
        scanner.start(f"SELECT path FROM pgbranch.{function}()")
        gdb.wait_stopped()
        alter = Session(c, "orphan_alter").start(f"ALTER DATABASE {victim} CONNECTION LIMIT 7")
        # Either the ALTER commits at once (its new row version lands on
        # page 0, behind the scan), or the scan's lock makes it wait.
        assert wait_for(lambda: alter.done() or alter.waiting_on_lock())
    finally:
        gdb.detach()
    paths = [p for (p,) in scanner.join()]
    alter.join()
    assert block_and_offset(c, victim)[0] == 0, "the new row version was meant to land behind the scan"
    assert str(victim_dir.relative_to(c.data)) not in paths
    assert victim_dir.is_dir()
    assert c.one("SELECT datconnlimit FROM pg_database WHERE datname = %s", params=(victim,)) == 7
    assert c.one("SELECT count(*) FROM pg_class", dbname=victim) > 100
    scanner.close()
    alter.close()


def unhinted_database(cluster, name):
    """A database whose newest pg_class rows are on disk without hint bits:
    committed, then never read by anyone (autovacuum is off)."""
    cluster.sql(f"CREATE DATABASE {name}")
    with cluster.connect(name) as conn:
        conn.execute("BEGIN")
        for i in range(40):
            conn.execute(f"CREATE TABLE t{i} (a int)")
        conn.execute("COMMIT")
    cluster.sql("CHECKPOINT")
    return cluster.one("SELECT oid FROM pg_database WHERE datname = %s", params=(name,))


@pytest.mark.parametrize("ddl", ["drop", "set_tablespace"])
def test_doctor_leaves_no_buffer_of_a_database_being_dropped_or_moved(fresh, tmp_path, ddl):
    c = fresh
    oid = unhinted_database(c, "doc_victim")
    if ddl == "drop":
        statement = "DROP DATABASE doc_victim"
    else:
        where = mount("PG_BRANCH_TEST_BTRFS") / "pytest-maint-ts"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
        shutil.chown(where, "postgres", "postgres")
        c.sql(f"CREATE TABLESPACE maint_ts LOCATION '{where}'")
        statement = "ALTER DATABASE doc_victim SET TABLESPACE maint_ts"
    doctor = Session(c, "doctor")
    # ReadBufferWithoutRelcache(RelFileLocator, ...): the locator is passed
    # in registers, its dbOid in the high half of the first one. Stop 1: the
    # first page doctor reads of another database; stop 2: the first page
    # of the victim's.
    gdb_doctor = ScriptedGdb(tmp_path, doctor.pid, ["ReadBufferWithoutRelcache"], "from_pg_branch",
                     f"(rdi >> 32) != {oid} and stops == 0 or (rdi >> 32) == {oid} and stops == 1")
    # Stop 1: the DDL has emitted the barrier that makes every backend
    # close its files, and is about to wait for it; stop 2: it has dropped
    # the victim's buffers (and, SET TABLESPACE, copied its files, run its
    # last checkpoint and committed) and is about to remove its old files.
    ddl_session = Session(c, "ddl")
    gdb_ddl = ScriptedGdb(tmp_path, ddl_session.pid, ["WaitForProcSignalBarrier", "rmtree"], "True",
                  "fn == 'WaitForProcSignalBarrier' and stops == 0 or fn == 'rmtree' and stops == 1")
    try:
        doctor.start("SELECT item, status, detail FROM pgbranch.doctor()")
        gdb_doctor.wait_stopped(1)
        ddl_session.start(statement)
        # The DDL has dropped the victim's buffers (or is about to) and
        # waits for every backend, doctor included, to close its files.
        # The DDL waits for every backend, doctor included, to close its
        # files.
        gdb_ddl.wait_stopped(1)
        gdb_ddl.cont()
        gdb_doctor.cont()
        assert wait_for(lambda: gdb_doctor.stopped(2) or doctor.waiting_on_lock() or doctor.done())
        # The victim's buffers are gone and its old files still there.
        gdb_ddl.wait_stopped(2)
        gdb_doctor.detach()
        assert wait_for(lambda: doctor.waiting_on_lock() or doctor.done())
    finally:
        gdb_doctor.detach()
        gdb_ddl.detach()
    ddl_session.join()
    rows = doctor.join()
    assert not [r for r in rows if r[1] == "error"], rows
    # Every buffer doctor left can be written.
    try:
        c.sql("CHECKPOINT")
    except psycopg.Error as e:
        log = [line for line in (c.root / "log").read_text().splitlines() if "could not" in line]
        pytest.fail(f"{e}: {log[-1:]}")
    doctor.close()
    ddl_session.close()
    c.stop()


# --- Refusals, labels, leftovers, directory names, modes --------------------

NOT_UNDOABLE = ["pgbranch.remove_orphans()", "pgbranch.convert_to_subvolume('postgres')",
                "pgbranch.convert_all_to_subvolumes()"]


@pytest.mark.parametrize("call", NOT_UNDOABLE)
def test_what_cannot_be_rolled_back_refuses_where_core_refuses(branch, call):
    """As ALTER DATABASE ... SET TABLESPACE: not in a transaction block, not
    in a read-only transaction (the standby's case is in test_durability),
    with core's SQLSTATEs. They used to run, removing or converting for a
    transaction that could then roll back, and hold remove_orphans()'s lock
    on pg_database until the block ended."""
    name = call.split("(")[0]
    orphan = branch.data / "base" / "999990"
    orphan.mkdir(exist_ok=True)
    shutil.chown(orphan, "postgres", "postgres")
    try:
        with branch.connect() as conn:
            with pytest.raises(psycopg.errors.ActiveSqlTransaction,
                               match=rf"{re.escape(name)}\(\) cannot run inside a transaction block"):
                with conn.transaction():
                    conn.execute(f"SELECT * FROM {call}")
            conn.execute("SET default_transaction_read_only = on")
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction,
                               match=rf"cannot execute {re.escape(name)}\(\) in a read-only transaction"):
                conn.execute(f"SELECT * FROM {call}")
        assert orphan.is_dir(), "nothing was removed"
    finally:
        shutil.rmtree(orphan, ignore_errors=True)


def parallel_mode_setting(cluster):
    return "force_parallel_mode" if cluster.one("SHOW server_version_num") < "160000" else "debug_parallel_query"


def test_functions_are_labelled_for_parallel_query(branch):
    """last_branch() reads the backend's own memory: labelled PARALLEL SAFE,
    debug_parallel_query ran it in a worker, which returned no row. Every
    function gives the same answer with and without it."""
    setting = parallel_mode_setting(branch)
    branch.sql("DROP DATABASE IF EXISTS par_b")
    with branch.connect() as conn:
        conn.execute("CREATE DATABASE par_b")
        plain = conn.execute("SELECT datname, template, method FROM pgbranch.last_branch()").fetchall()
        storage = conn.execute("SELECT * FROM pgbranch.database_storage() ORDER BY 1, 2").fetchall()
        conn.execute(f"SET {setting} = on")
        assert conn.execute("SELECT datname, template, method FROM pgbranch.last_branch()").fetchall() == plain
        assert plain == [("par_b", "template1", plain[0][2])]
        assert conn.execute("SELECT * FROM pgbranch.database_storage() ORDER BY 1, 2").fetchall() == storage
    labels = dict(branch.sql("SELECT proname, proparallel FROM pg_proc WHERE pronamespace = 'pgbranch'::regnamespace"))
    # Read-only, but from this backend's memory (last_branch) or through SPI
    # and filesystem probes (database_storage): only the leader runs them.
    assert labels["last_branch"] == "r"
    assert labels["database_storage"] == "r"
    # Everything that writes, or locks until commit, never runs in a worker.
    for f in ("remove_orphans", "convert_to_subvolume", "convert_all_to_subvolumes", "orphans", "doctor", "reset"):
        assert labels[f] == "u", f
    branch.sql("DROP DATABASE par_b")


def test_a_directory_name_core_would_not_write_is_not_a_database(branch):
    """`+N` and `0N` parse as N with u32::from_str: such a directory was
    listed (and removed, with a DROP of N logged) as the orphan of N."""
    odd = [branch.data / "base" / name for name in ("+999991", "0999991", "999991.tmp")]
    for d in odd:
        d.mkdir()
        shutil.chown(d, "postgres", "postgres")
    try:
        listed = [p for (p,) in branch.sql("SELECT path FROM pgbranch.orphans()")]
        assert not any(p.endswith(("999991", "999991.tmp")) for p in listed), listed
        branch.sql("SELECT * FROM pgbranch.remove_orphans()")
        assert all(d.is_dir() for d in odd)
    finally:
        for d in odd:
            shutil.rmtree(d, ignore_errors=True)


def test_leftovers_of_dropped_databases_are_orphans(branch, tmp_path):
    """A conversion (or a branch's replay) interrupted by a crash leaves
    `<oid>.pg_branch_convert` (or `.pg_branch_redo`). Once its database is
    dropped nothing reported it, and in a tablespace it made DROP
    TABLESPACE fail with "directory ... is not empty"."""
    location = mount("PG_BRANCH_TEST_BTRFS") / "pytest-ts-leftover"
    ts = tablespace(branch, "ts_leftover", location)
    branch.sql("DROP DATABASE IF EXISTS lo_a")
    branch.sql("DROP DATABASE IF EXISTS lo_b")
    branch.sql("CREATE DATABASE lo_a")
    branch.sql(f"CREATE DATABASE lo_b TABLESPACE {ts}")
    leftovers = []
    for db, suffix in (("lo_a", "pg_branch_convert"), ("lo_b", "pg_branch_redo")):
        path = branch.data / branch.one(
            "SELECT pg_relation_filepath('pg_class')", dbname=db).rsplit("/", 1)[0]
        leftover = path.with_suffix("." + suffix)
        leftover.mkdir()
        (leftover / "1259").write_bytes(b"x" * 8192)
        shutil.chown(leftover, "postgres", "postgres")
        leftovers.append(leftover)
    # Live databases' leftovers are not orphans: converting removes them.
    listed = {p for (p,) in branch.sql("SELECT path FROM pgbranch.orphans()")}
    assert not {str(p.relative_to(branch.data)) for p in leftovers} & listed
    branch.sql("DROP DATABASE lo_a")
    branch.sql("DROP DATABASE lo_b")
    rel = sorted(str(p.relative_to(branch.data)) for p in leftovers)
    listed = sorted(p for (p,) in branch.sql("SELECT path FROM pgbranch.orphans()") if p in rel)
    assert listed == rel
    status, detail = branch.sql("SELECT status, detail FROM pgbranch.doctor() WHERE item = 'orphaned directories'")[0]
    assert status == "warning" and all(p in detail for p in rel)
    assert branch.one("SELECT count(*) FROM pgbranch.doctor() WHERE item = 'interrupted conversion'") == 0
    removed = sorted(p for (p,) in branch.sql("SELECT path FROM pgbranch.remove_orphans()"))
    assert removed == rel
    assert not any(p.exists() for p in leftovers)
    branch.sql(f"DROP TABLESPACE {ts}")


def test_converting_again_removes_what_a_conversion_interrupted_after_its_swap_left(branch):
    """The database is a subvolume and the old plain directory is still
    next to it: converting again answered "already a subvolume" before any
    cleanup ran, so the old full copy stayed forever, while doctor() said
    that converting again removes it."""
    branch.sql("DROP DATABASE IF EXISTS conv_left")
    branch.sql("CREATE DATABASE conv_left")
    path = branch.db_path("conv_left")
    assert is_subvolume(path)
    leftover = path.with_suffix(".pg_branch_convert")
    shutil.copytree(path, leftover)
    subprocess.run(["chown", "-R", "postgres:postgres", leftover], check=True)
    try:
        assert branch.one("SELECT count(*) FROM pgbranch.doctor() WHERE item = 'interrupted conversion'") == 1
        result = branch.one("SELECT result FROM pgbranch.convert_to_subvolume('conv_left')")
        assert result == "already a subvolume; removed what an interrupted conversion left"
        assert not leftover.exists()
        assert branch.one("SELECT count(*) FROM pgbranch.doctor() WHERE item = 'interrupted conversion'") == 0
        assert branch.one("SELECT count(*) FROM pg_class", dbname="conv_left") > 100
    finally:
        shutil.rmtree(leftover, ignore_errors=True)
        branch.sql("DROP DATABASE conv_left")


def test_convert_all_reports_a_database_renamed_meanwhile(tmp_path):
    """convert_all_to_subvolumes() lists the databases, then locks each in
    turn. One renamed (or dropped) before its turn used to abort the whole
    call with 3D000; it is now reported as skipped and the others done."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-convert-all-rename", 5521).init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        for db in ("aa_renamed", "zz_after"):
            c.sql(f"CREATE DATABASE {db} STRATEGY wal_log")
        with c.connect() as renamer:
            renamer.execute("BEGIN")
            renamer.execute("ALTER DATABASE aa_renamed RENAME TO aa_new_name")
            # convert_all() has listed aa_renamed and waits for its lock.
            worker = Session(c, "convert_all")
            worker.start("SELECT datname, result FROM pgbranch.convert_all_to_subvolumes()")
            assert wait_for(worker.waiting_on_lock)
            renamer.execute("COMMIT")
        rows = dict(worker.join())
        worker.close()
        assert rows["aa_renamed"] == 'skipped: database "aa_renamed" does not exist'
        assert rows["zz_after"].startswith("converted")
        assert is_subvolume(c.db_path("zz_after"))
    finally:
        c.stop(mode="immediate", check=False)


@pytest.mark.parametrize("var", ["PG_BRANCH_TEST_BTRFS", "PG_BRANCH_TEST_XFS"])
def test_a_cluster_with_group_access_gets_branches_with_group_access(var):
    """initdb -g makes directories 0750 and files 0640, so that a backup
    tool in the group can read the data directory. Reflinked branches (and
    conversions) were made 0700 / 0600 whatever the cluster's modes, and
    that tool then got EACCES on them."""
    c = Cluster(mount(var) / "pytest-group-access", 5522).init("-g").start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        c.sql("CREATE DATABASE grp_tpl STRATEGY wal_log")  # a plain directory: branched by reflink
        c.sql("CREATE DATABASE grp_b TEMPLATE grp_tpl")
        dbs = ["grp_b"]
        if var == "PG_BRANCH_TEST_BTRFS":
            assert c.one("SELECT result FROM pgbranch.convert_to_subvolume('grp_tpl')").startswith("converted")
            dbs.append("grp_tpl")
        for db in dbs:
            path = c.db_path(db)
            assert oct(path.stat().st_mode & 0o777) == oct(0o750), db
            modes = {oct(f.stat().st_mode & 0o777) for f in path.iterdir() if f.is_file()}
            assert modes == {oct(0o640)}, (db, modes)
    finally:
        c.stop(mode="immediate", check=False)


def test_remove_orphans_puts_its_drop_records_behind_a_checkpoint(branch):
    """As DROP DATABASE: once remove_orphans() returns, the redo pointer is
    past its DROP records, so crash recovery never replays one over a
    database created later with the same OID."""
    orphan = branch.data / "base" / "999993"
    orphan.mkdir()
    shutil.chown(orphan, "postgres", "postgres")
    before = branch.one("SELECT pg_current_wal_insert_lsn()")
    assert ("base/999993",) in branch.sql("SELECT path FROM pgbranch.remove_orphans()")
    assert not orphan.exists()
    assert branch.one("SELECT redo_lsn > %s::pg_lsn FROM pg_control_checkpoint()", params=(before,))
