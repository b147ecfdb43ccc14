"""What the tests and the benchmarks drive: real PostgreSQL clusters and
the tools that load, inspect and check them.

scripts/test.sh mounts the filesystems and names them in PG_BRANCH_TEST_BTRFS,
PG_BRANCH_TEST_XFS and PG_BRANCH_TEST_EXT4. Each cluster is initdb'd under
one of them, owned by the `postgres` OS user (the server refuses to run as
root), and reached over a Unix socket in its own directory. The pytest
fixtures that share clusters between tests are in conftest.py; bench/run.sh
puts this directory on PYTHONPATH for the benchmarks.
"""


import os
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres"
# What shared_preload_libraries names: a path tries a build of pg_branch
# without installing it (the SQL API then is not there).
LIBRARY = os.environ.get("PG_BRANCH_TEST_LIBRARY", "pg_branch")


def mount(var):
    path = os.environ.get(var)
    if not path:
        raise RuntimeError(f"{var} is not set: run the suite through scripts/test.sh, which mounts it")
    return Path(path)


class CommandFailed(subprocess.CalledProcessError):
    """A command run as postgres failed; the message carries its output."""

    def __str__(self):
        return f"{super().__str__()}\n{self.stdout}{self.stderr}"


def as_postgres(*cmd, check=True, **kw):
    done = subprocess.run(["sudo", "-u", RUN_AS, "--", *map(str, cmd)], capture_output=True, text=True, **kw)
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, done.args, done.stdout, done.stderr)
    return done


class ServerDidNotStart(subprocess.CalledProcessError):
    """pg_ctl start failed; the message carries the end of the server log."""

    def __str__(self):
        return self.stderr


class Cluster:
    """One PostgreSQL server in `root/data`, socket in `root/sock`."""

    def __init__(self, root, port, preload=True, extra_conf="", env=None):
        self.root = Path(root)
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        # Two checkouts can test side by side on one machine with their own
        # ports (PG_BRANCH_TEST_PORT_OFFSET) and directories (the mounts).
        self.port = port + int(os.environ.get("PG_BRANCH_TEST_PORT_OFFSET", "0"))
        self.preload = preload
        self.extra_conf = extra_conf
        # Environment variables for the server (e.g. RUST_BACKTRACE): sudo
        # resets the environment, so they are passed through env(1).
        self.env = dict(env or {})

    def fresh(self):
        """An empty cluster directory owned by postgres (a leftover server
        in it is stopped first), for initdb or pg_basebackup to fill."""
        if self.root.exists():
            self.stop(mode="immediate", check=False)
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.sock.mkdir()
        shutil.chown(self.root, RUN_AS, RUN_AS)
        shutil.chown(self.sock, RUN_AS, RUN_AS)
        return self

    def init(self, *initdb_args):
        self.fresh()
        as_postgres(PG_BIN / "initdb", "-D", self.data, "-E", "UTF8", "--locale=C.UTF-8", "-A", "trust", "-U", "postgres",
                    *initdb_args)
        conf = [
            f"port = {self.port}",
            "listen_addresses = ''",
            f"unix_socket_directories = '{self.sock}'",
            "wal_level = replica",
            "max_wal_senders = 4",
            "max_prepared_transactions = 4",
            "track_commit_timestamp = on",
            "fsync = on",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] '",
        ]
        if self.preload:
            conf.append(f"shared_preload_libraries = '{LIBRARY}'")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n" + self.extra_conf + "\n")
        return self

    def start(self, wait_seconds=60):
        env = [f"{k}={v}" for k, v in self.env.items()]
        try:
            as_postgres("env", *env, PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-w",
                        "-t", str(wait_seconds), "start")
        except subprocess.CalledProcessError as e:
            # What the server said is the only clue to why it did not start.
            log = (self.root / "log").read_text(errors="replace").splitlines()[-40:]
            raise ServerDidNotStart(e.returncode, e.cmd, e.output,
                                    f"{self.data} did not start: {e.stderr.strip()}\n" + "\n".join(log)) from e
        return self

    def stop(self, mode="fast", check=True):
        if (self.data / "postmaster.pid").exists():
            as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=check)

    def server_pids(self):
        """Every process of this server: they all run in its data directory."""
        data = os.path.realpath(self.data)
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "cwd") == data:
                        pids.append(int(p.name))
                except OSError:
                    pass
        return pids

    def kill9(self):
        """A power cut: every server process dies at once, with no chance to
        run exit callbacks (a backend that saw the postmaster die first
        would clean up after itself, which a crash never does). All are
        stopped with SIGSTOP, then killed with SIGKILL; a child the
        postmaster forked meanwhile is caught by the loop, since every
        server process runs in the data directory (children call setsid(),
        so the postmaster's process group does not hold them)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = {pid, *self.server_pids()}
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 30
        while time.time() < deadline:
            pids = self.server_pids()
            # Until its parent reaps it, the dead postmaster is a zombie
            # whose PID still blocks a restart.
            if not pids and not Path(f"/proc/{pid}").exists():
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("server processes survived SIGKILL")

    def conninfo(self, dbname="postgres", user="postgres"):
        return f"host={self.sock} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname="postgres", user="postgres", autocommit=True):
        return psycopg.connect(self.conninfo(dbname, user), autocommit=autocommit)

    def sql(self, query, dbname="postgres", user="postgres", params=None):
        """Run one statement; return all rows (or None)."""
        with self.connect(dbname, user) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def one(self, query, dbname="postgres", **kw):
        rows = self.sql(query, dbname, **kw)
        return rows[0][0] if rows else None

    def has_contrib(self, name):
        """Whether extension `name` is installed (PostgreSQL 16 from the
        pgserver wheel ships no contrib modules)."""
        return bool(self.one("SELECT count(*) FROM pg_available_extensions WHERE name = %s", params=(name,)))

    def require_contrib(self, name):
        if not self.has_contrib(name):
            pytest.skip(f"{name} is not installed in this PostgreSQL build")

    def db_dirs(self):
        """Names in base/ and in every tablespace's version directory."""
        names = set(os.listdir(self.data / "base"))
        tblspc = self.data / "pg_tblspc"
        for link in tblspc.iterdir():
            for version in link.iterdir():
                names |= {f"{link.name}/{n}" for n in os.listdir(version)}
        return names

    def db_path(self, dbname):
        oid = self.one("SELECT oid FROM pg_database WHERE datname = %s", params=(dbname,))
        return self.data / "base" / str(oid)

    def pgbench(self, *args, background=False):
        """pgbench against this server, as postgres: the finished run (its
        output captured; an error if it failed), or with `background` the
        running process, its output and errors in one text pipe, for the
        caller to communicate() with or terminate."""
        cmd = ["sudo", "-u", RUN_AS, "--", PG_BIN / "pgbench", *map(str, args),
               "-h", self.sock, "-p", str(self.port), "-U", "postgres"]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return subprocess.run(cmd, check=True, capture_output=True, text=True)


def waiting_on_lock(cluster, application_name):
    return cluster.one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        params=(application_name,)) == 1


class Background:
    """Run one statement on its own connection in a thread."""

    def __init__(self, cluster, sql, name, dbname="postgres"):
        self.error = None
        self.done = threading.Event()

        def run():
            try:
                with cluster.connect(dbname) as conn:
                    conn.execute("SELECT set_config('application_name', %s, false)", (name,))
                    conn.execute(sql)
            except psycopg.Error as e:
                self.error = e
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self):
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def tablespace(cluster, name, directory):
    """A tablespace in `directory` (made, owned by postgres), replacing any
    earlier one of that name."""
    cluster.sql(f"DROP TABLESPACE IF EXISTS {name}")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    shutil.chown(directory, "postgres", "postgres")
    cluster.sql(f"CREATE TABLESPACE {name} LOCATION '{directory}'")
    return name


def wait_for(predicate, timeout=30):
    """Poll `predicate` until it holds; False if it never did within `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def is_subvolume(path):
    return os.stat(path).st_ino == 256 and subprocess.run(
        ["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip() == "btrfs"


def exclusive_bytes(path):
    """btrfs' count of bytes in `path` that no other file shares."""
    subprocess.run(["btrfs", "filesystem", "sync", path], check=True, capture_output=True)
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", path],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    total, exclusive, *_ = out[-1].split()
    return int(exclusive)


@contextmanager
def checkpointer_stopped(cluster):
    pid = cluster.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def oracle(cluster, db):
    """pgbench's TPC-B invariant, and amcheck on every btree and table."""
    sums = cluster.sql("""SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
                                 (SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
                                 (SELECT count(*) FROM pgbench_history)""", dbname=db)[0]
    assert sums[0] == sums[1] == sums[2] == sums[3], f"{db}: {sums}"
    assert amcheck(cluster, db) != 0
    return sums[4]


def amcheck(cluster, db):
    """bt_index_check(heapallindexed) on every valid btree index and
    verify_heapam on every table; returns how many indexes were checked,
    or -1 where amcheck is not installed (PostgreSQL 16 from the pgserver
    wheel has no contrib modules)."""
    if not cluster.has_contrib("amcheck"):
        return -1
    # Not on a standby, which replays the branch with amcheck in it.
    if not cluster.one("SELECT pg_is_in_recovery()", dbname=db):
        cluster.sql("CREATE EXTENSION IF NOT EXISTS amcheck", dbname=db)
    checked = cluster.one("""SELECT count(bt_index_check(c.oid, true)) FROM pg_index i
                               JOIN pg_class c ON c.oid = i.indexrelid
                               JOIN pg_am am ON am.oid = c.relam
                              WHERE am.amname = 'btree' AND i.indisvalid""", dbname=db)
    corrupt = cluster.sql("""SELECT c.relname, v.* FROM pg_class c, verify_heapam(c.oid) v
                              WHERE c.relkind IN ('r', 'm', 't')""", dbname=db)
    assert corrupt == [], f"{db}: {corrupt}"
    return checked


class Gdb:
    """gdb attached to one server process, driven line by line: the
    deterministic way to hold a checkpoint at a chosen step."""

    def __init__(self, pid):
        self.proc = subprocess.Popen(["gdb", "-q", "-nx", "-p", str(pid)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        self.send("set pagination off", "set confirm off", "handle SIGUSR1 SIGUSR2 SIGINT SIGTERM SIGHUP nostop noprint pass")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def send(self, *commands):
        for c in commands:
            self.proc.stdin.write(c + "\n")
        self.proc.stdin.flush()

    def run(self, *commands):
        """Send `commands`, the last of which is `continue`, and return once
        the process runs again."""
        before = sum("Continuing." in line for line in self.lines)
        self.send(*commands)
        assert wait_for(lambda: sum("Continuing." in line for line in self.lines) > before), "".join(self.lines)

    def stopped_at(self, function):
        """Whether a breakpoint in `function` has been hit: "Breakpoint N,
        0x... in function ()" without debug symbols (Debian's PostgreSQL 15),
        "Breakpoint N, function (args) at file.c:line" with them (the
        versions scripts/postgres.sh builds)."""
        hit = re.compile(rf"Breakpoint \d+, (0x[0-9a-f]+ in )?{re.escape(function)} \(")
        return any(hit.search(line) for line in self.lines)

    def stopped(self):
        """Whether any breakpoint has been hit (a libc function's name is
        its internal alias, `__GI_setxattr`, where libc's debug symbols are
        installed)."""
        return any(re.search(r"Breakpoint \d+, ", line) for line in self.lines)

    def close(self):
        """Detach (removing every breakpoint first) and quit; kill gdb only
        if it does not quit: a tracer killed with breakpoints still in
        place would leave them to trap the process."""
        if self.proc.poll() is None:
            try:
                self.send("delete", "detach", "quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait()


def fingerprint(cluster, db, *more):
    """Row count, balance sum and content hash of table `accounts` and the
    state of its sequence (the tables tests/ builds), plus the values of
    the SQL expressions `more`: equal fingerprints, equal contents."""
    columns = ["(SELECT count(*) FROM accounts)", "(SELECT sum(balance) FROM accounts)",
               "(SELECT md5(string_agg(id || ':' || balance || ':' || note, ',' ORDER BY id)) FROM accounts)",
               "(SELECT last_value FROM accounts_id_seq)", *more]
    return cluster.sql(f"SELECT {', '.join(columns)}", dbname=db)


def pct(values, p):
    """The `p`th percentile of `values` (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# The databases that claim XIDs older than the oldest one the cluster keeps
# the status of (a wrong datfrozenxid): must be none.
HORIZON_VIOLATIONS = """
SELECT coalesce(string_agg(datname || ' ' || datfrozenxid, ', '), '') FROM pg_database
 WHERE age(datfrozenxid) > age((pg_control_checkpoint()).oldest_xid)
"""


def wait_replayed(primary, standby, timeout=120):
    # The flush position, not the insert position: after a record that ends
    # at a page boundary the insert position is past the next page header,
    # where replay never gets until another record comes.
    lsn = primary.one("SELECT pg_current_wal_flush_lsn()")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if standby.one("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", params=(lsn,)):
            return
        time.sleep(0.1)
    raise AssertionError("standby did not catch up")


def wait_archived(primary):
    """Switch to a new WAL segment and wait until the archiver has copied
    the one just finished."""
    segment = primary.one("SELECT pg_walfile_name(pg_switch_wal())")
    assert wait_for(lambda: primary.one("SELECT coalesce(last_archived_wal >= %s, false) FROM pg_stat_archiver",
                                        params=(segment,)), 60), "the archiver did not copy " + segment


def archiving_cluster(root, port):
    """A started cluster of its own at `root` that archives its WAL into
    `<root>-archive` (emptied first), given as its `.archive`: for
    point-in-time recovery, and standbys that restore from it."""
    archive = root.parent / f"{root.name}-archive"
    shutil.rmtree(archive, ignore_errors=True)
    archive.mkdir()
    shutil.chown(archive, "postgres", "postgres")
    c = Cluster(root, port, extra_conf=f"archive_mode = on\narchive_command = 'cp %p {archive}/%f'\n").init().start()
    c.archive = archive
    return c


def make_standby(primary, root, port, preload=True):
    """A streaming standby of `primary` at `root`. On this one host a
    tablespace cannot stay where it is on the primary (pg_basebackup
    refuses a directory that is not empty): each moves to `root/ts<n>`."""
    standby = Cluster(root, port, preload=preload).fresh()
    locations = primary.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                            "WHERE pg_tablespace_location(oid) <> '' ORDER BY oid")
    mappings = [f"--tablespace-mapping={loc}={root / f'ts{n}'}" for n, (loc,) in enumerate(locations)]
    as_postgres(PG_BIN / "pg_basebackup", "-D", standby.data, "-R", "-X", "stream", "-c", "fast",
                *mappings, "-h", primary.sock, "-p", primary.port, "-U", "postgres")
    with open(standby.data / "postgresql.conf", "a") as f:
        # archive_mode off: a promoted standby must not archive its new
        # timeline into the primary's archive.
        f.write(f"port = {standby.port}\nunix_socket_directories = '{standby.sock}'\nhot_standby = on\narchive_mode = off\n")
        if not preload:
            f.write("shared_preload_libraries = ''\n")
    return standby.start()
