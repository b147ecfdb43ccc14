"""Branching a template that is in use: the writer fence.

A branch holds exactly the transactions that committed before its fence was
complete. Readers and new connections never wait; writers wait only while
the fence is up; a branch waits for open write transactions, and says what
it waits for.
"""

import re
import threading
import time

import psycopg
import pytest

from harness import Background, Cluster, amcheck, mount, oracle, wait_for, waiting_on_lock



@pytest.fixture
def live(branch):
    branch.sql("DROP DATABASE IF EXISTS live")
    branch.sql("CREATE DATABASE live")
    branch.sql("""
        CREATE TABLE t1 (id serial PRIMARY KEY, note text);
        CREATE TABLE t2 (id serial PRIMARY KEY, note text);
        INSERT INTO t1 (note) VALUES ('before');
    """, dbname="live")
    yield "live"
    branch.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'live' AND pid <> pg_backend_pid()")
    for db in [r[0] for r in branch.sql("SELECT datname FROM pg_database WHERE datname LIKE 'live%'")]:
        branch.sql(f"DROP DATABASE {db} WITH (FORCE)")


def notes(cluster, db, table="t1"):
    return sorted(r[0] for r in cluster.sql(f"SELECT note FROM {table}", dbname=db))


@pytest.mark.parametrize("ending", ["COMMIT", "ROLLBACK"])
def test_branch_waits_for_an_open_write_transaction(branch, live, ending):
    with branch.connect(live, autocommit=False) as writer:
        writer.execute("INSERT INTO t1 (note) VALUES ('open')")
        creator = Background(branch, "CREATE DATABASE live_b TEMPLATE live", "creator")
        assert wait_for(lambda: waiting_on_lock(branch, "creator"))
        # Readers and new connections are not held up meanwhile, and
        # neither are other writers of the same table: the branch waits
        # for the open transaction without queueing in front of them.
        assert branch.one("SELECT count(*) FROM t1", dbname=live) == 1
        with branch.connect(live) as other:
            other.execute("SET statement_timeout = '10s'")
            other.execute("INSERT INTO t1 (note) VALUES ('meanwhile')")
        assert not creator.done.is_set()
        writer.execute(ending)
    creator.join()
    expected = ["before", "meanwhile", "open"] if ending == "COMMIT" else ["before", "meanwhile"]
    assert notes(branch, "live_b") == expected
    assert notes(branch, live) == expected


def test_other_writes_proceed_while_the_branch_waits(branch, live):
    with branch.connect(live, autocommit=False) as writer:
        writer.execute("INSERT INTO t1 (note) VALUES ('open')")
        creator = Background(branch, "CREATE DATABASE live_b TEMPLATE live", "creator")
        assert wait_for(lambda: waiting_on_lock(branch, "creator"))
        # The branch waits holding no fence lock, so writes to other
        # tables go on (and commit before the fence is complete).
        branch.sql("INSERT INTO t2 (note) VALUES ('while waiting')", dbname=live)
        writer.execute("COMMIT")
    creator.join()
    assert notes(branch, "live_b") == ["before", "open"]
    assert notes(branch, "live_b", "t2") == ["while waiting"]


def test_branch_holds_exactly_the_commits_before_its_fence(branch, live):
    """Writers commit continuously (single rows, and pairs of rows in two
    tables in one transaction) while branches are made. With commit
    timestamps: every transaction committed before the fence was complete
    is in the branch, whole; none committed after it was lowered is; none
    commits while it is up."""
    stop = threading.Event()
    errors = []

    def single(tag):
        try:
            with branch.connect(live) as conn:
                i = 0
                while not stop.is_set():
                    conn.execute("INSERT INTO t1 (note) VALUES (%s)", (f"{tag}-{i}",))
                    i += 1
        except psycopg.Error as e:
            errors.append(e)

    def pairs():
        try:
            with branch.connect(live, autocommit=False) as conn:
                i = 0
                while not stop.is_set():
                    conn.execute("INSERT INTO t1 (note) VALUES (%s)", (f"pair-{i}",))
                    conn.execute("INSERT INTO t2 (note) VALUES (%s)", (f"pair-{i}",))
                    conn.commit()
                    i += 1
        except psycopg.Error as e:
            errors.append(e)

    workers = [threading.Thread(target=single, args=("a",)), threading.Thread(target=single, args=("b",)),
               threading.Thread(target=pairs)]
    for w in workers:
        w.start()
    fences = []
    try:
        for n in range(5):
            time.sleep(0.3)
            with branch.connect() as conn:
                conn.execute(f"CREATE DATABASE live_b{n} TEMPLATE live")
                fences.append(conn.execute("SELECT fence_up_at, fence_down_at FROM pgbranch.last_branch()").fetchone())
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert not errors
    committed = {t: branch.sql(f"SELECT note, pg_xact_commit_timestamp(xmin) FROM {t}", dbname=live) for t in ("t1", "t2")}
    for n, (up, down) in enumerate(fences):
        for t, rows in committed.items():
            in_branch = set(notes(branch, f"live_b{n}", t))
            before = {note for note, ts in rows if ts < up}
            after = {note for note, ts in rows if ts > down}
            assert in_branch == before, f"live_b{n}.{t}"
            assert not in_branch & after
            assert len(before) + len(after) == len(rows), "a transaction committed while the fence was up"
        pairs_t1 = {x for x in notes(branch, f"live_b{n}", "t1") if x.startswith("pair-")}
        assert pairs_t1 == set(notes(branch, f"live_b{n}", "t2")) - {"before"}
    assert len(committed["t1"]) > 50, "the writers kept writing"


def test_lock_timeout_names_what_blocked_the_branch(branch, live):
    before = branch.db_dirs()
    with branch.connect(live, autocommit=False) as writer:
        writer.execute("UPDATE t1 SET note = 'changing'")
        writer_pid = writer.info.backend_pid
        with branch.connect() as conn:
            conn.execute("SET lock_timeout = '500ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable) as e:
                conn.execute("CREATE DATABASE live_b TEMPLATE live")
    d = e.value.diag
    assert d.message_primary == "canceling statement due to lock timeout"
    assert d.message_detail == ('CREATE DATABASE was waiting for ExclusiveLock on relation "t1" of template '
                                f'database "live", held by process {writer_pid}.')
    assert "pg_stat_activity" in d.message_hint
    assert branch.db_dirs() == before
    assert branch.one("SELECT count(*) FROM pg_database WHERE datname = 'live_b'") == 0


def test_sequences_advanced_by_nextval(branch, live):
    with branch.connect(live, autocommit=False) as writer:
        writer.execute("SELECT nextval('t2_id_seq') FROM generate_series(1, 10)")
        creator = Background(branch, "CREATE DATABASE live_b TEMPLATE live", "creator")
        assert wait_for(lambda: waiting_on_lock(branch, "creator"))
        writer.execute("COMMIT")
    creator.join()
    assert branch.one("SELECT nextval('t2_id_seq')", dbname="live_b") == 11


def test_two_branches_of_one_template_at_once(branch, live):
    with branch.connect(live, autocommit=False) as writer:
        writer.execute("INSERT INTO t1 (note) VALUES ('open')")
        a = Background(branch, "CREATE DATABASE live_a TEMPLATE live", "creator_a")
        b = Background(branch, "CREATE DATABASE live_b TEMPLATE live", "creator_b")
        assert wait_for(lambda: waiting_on_lock(branch, "creator_a") and waiting_on_lock(branch, "creator_b"))
        writer.execute("COMMIT")
    a.join()
    b.join()
    assert notes(branch, "live_a") == notes(branch, "live_b") == ["before", "open"]


def test_concurrent_ddl_on_the_template(branch, live):
    """CREATE TABLE, ALTER TABLE and CREATE INDEX CONCURRENTLY run in a loop
    while branches are made; every branch is a consistent catalog."""
    stop = threading.Event()
    errors = []

    def ddl():
        i = 0
        try:
            with branch.connect(live) as conn:
                while not stop.is_set():
                    conn.execute(f"CREATE TABLE ddl_{i} (x int)")
                    conn.execute(f"ALTER TABLE ddl_{i} ADD COLUMN y text DEFAULT 'y'")
                    conn.execute(f"INSERT INTO ddl_{i} SELECT g FROM generate_series(1, 100) g")
                    conn.execute(f"CREATE INDEX CONCURRENTLY ddl_{i}_x ON ddl_{i} (x)")
                    i += 1
        except psycopg.Error as e:
            errors.append(e)

    worker = threading.Thread(target=ddl)
    worker.start()
    try:
        for n in range(5):
            branch.sql(f"CREATE DATABASE live_ddl{n} TEMPLATE live")
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(60)
    assert not errors
    for n in range(5):
        db = f"live_ddl{n}"
        # Each DDL statement is in the branch whole or not at all: every
        # table it lists is readable, with all or none of its rows.
        for (rel,) in branch.sql("SELECT relname FROM pg_class WHERE relname ~ '^ddl_[0-9]+$'", dbname=db):
            assert branch.one(f"SELECT count(*) FROM {rel}", dbname=db) in (0, 100)
        assert amcheck(branch, db) != 0



def test_oracle_branches_under_pgbench_load(branch):
    """The consistency oracle: 20 branches of a template that pgbench
    (TPC-B-like, 4 clients) writes to the whole time. Every branch keeps
    the TPC-B invariant and passes amcheck; pgbench sees no failure."""
    branch.sql("DROP DATABASE IF EXISTS oracle WITH (FORCE)")
    branch.sql("CREATE DATABASE oracle")
    branch.pgbench("-q", "-i", "-s", "2", "oracle")
    load = branch.pgbench("-n", "-c", "4", "-j", "2", "-T", "25", "oracle", background=True)
    fences = []
    try:
        time.sleep(1)
        for n in range(20):
            with branch.connect() as conn:
                conn.execute(f"CREATE DATABASE oracle_b{n} TEMPLATE oracle")
                fences.append(conn.execute("SELECT fence_ms FROM pgbranch.last_branch()").fetchone()[0])
            assert load.poll() is None, "every branch is made while pgbench writes"
            time.sleep(0.3)
    finally:
        out, _ = load.communicate(timeout=120)
    assert load.returncode == 0, out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is None or failed.group(1) == "0", out
    histories = [oracle(branch, f"oracle_b{n}") for n in range(20)]
    assert histories == sorted(histories) and histories[-1] > histories[0], "pgbench kept writing"
    assert all(f > 0 for f in fences)
    oracle(branch, "oracle")
    for n in range(20):
        branch.sql(f"DROP DATABASE oracle_b{n}")
    branch.sql("DROP DATABASE oracle WITH (FORCE)")


def test_independently_hot_tables_do_not_starve_the_fence(branch):
    """Five tables each written by its own two pgbench clients, and two
    more written together (one pair of clients takes them in one order,
    the other in the other). The fence used to let go of everything and
    wait for one table at a time, so it needed all of them free at once:
    4 of 5 branches ran into a 20 s statement_timeout. After three such
    rounds it now queues for each table in turn, keeping the others, for
    at most deadlock_timeout / 2 (fence.rs): every branch is made, each
    holds the pair's invariant and passes amcheck, and no writer is
    cancelled (a deadlock would abort a pgbench client)."""
    branch.sql("DROP DATABASE IF EXISTS hot WITH (FORCE)")
    branch.sql("CREATE DATABASE hot")
    tables = [f"h{i}" for i in range(5)] + ["p1", "p2"]
    for t in tables:
        branch.sql(f"CREATE TABLE {t} (id int PRIMARY KEY, v int NOT NULL)", dbname="hot")
        branch.sql(f"INSERT INTO {t} SELECT g, 0 FROM generate_series(1, 10) g", dbname="hot")
    scripts = {t: f"\\set r random(1, 10)\nUPDATE {t} SET v = v + 1 WHERE id = :r;\n" for t in tables[:5]}
    # Rows 1-5 and 6-10: the pair's writers never wait for each other.
    scripts["pair_a"] = ("\\set r random(1, 5)\nBEGIN;\nUPDATE p1 SET v = v + 1 WHERE id = :r;\n"
                         "UPDATE p2 SET v = v + 1 WHERE id = :r;\nCOMMIT;\n")
    scripts["pair_b"] = ("\\set r random(6, 10)\nBEGIN;\nUPDATE p2 SET v = v + 1 WHERE id = :r;\n"
                         "UPDATE p1 SET v = v + 1 WHERE id = :r;\nCOMMIT;\n")
    scripts_dir = mount("PG_BRANCH_TEST_BTRFS") / "pytest-hot-scripts"
    scripts_dir.mkdir(exist_ok=True)
    files = {}
    for name, text in scripts.items():
        files[name] = scripts_dir / f"{name}.sql"
        files[name].write_text(text)
        files[name].chmod(0o644)
    runs = [[files[t]] for t in tables[:5]] + [[files["pair_a"], files["pair_b"]]]
    loads = []
    for run in runs:
        loads.append(branch.pgbench("-n", "-c", "2", "-T", "30", *[a for f in run for a in ("-f", f)], "hot",
                                    background=True))
    try:
        time.sleep(1)
        with branch.connect() as conn:
            conn.execute("SET statement_timeout = '25s'")
            for n in range(5):
                conn.execute(f"CREATE DATABASE hot_b{n} TEMPLATE hot")
                assert all(load.poll() is None for load in loads), "every branch is made while pgbench writes"
    finally:
        outs = [load.communicate(timeout=120)[0] for load in loads]
    for load, out in zip(loads, outs):
        assert load.returncode == 0 and "aborted" not in out, out
        failed = re.search(r"number of failed transactions: (\d+)", out)
        assert failed is None or failed.group(1) == "0", out
    for n in range(5):
        db = f"hot_b{n}"
        assert branch.one("SELECT (SELECT sum(v) FROM p1) = (SELECT sum(v) FROM p2)", dbname=db), db
        assert amcheck(branch, db) != 0
        branch.sql(f"DROP DATABASE {db}")
    branch.sql("DROP DATABASE hot WITH (FORCE)")


def test_thousands_of_relations_and_a_small_lock_table(branch):
    """A template with 1500 tables (3000 relations) exceeds a lock table of
    max_locks_per_transaction = 10: the error says which setting to raise,
    doctor() gives the value, and after raising it the branch is made."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-locks", 5496,
                extra_conf="max_locks_per_transaction = 10\nmax_connections = 20").init().start()
    try:
        c.sql("CREATE DATABASE many")
        with c.connect("many") as conn:
            for j in range(1500):
                conn.execute(f"CREATE TABLE t{j} (id int PRIMARY KEY)")
        with pytest.raises(psycopg.errors.OutOfMemory) as e:
            c.sql("CREATE DATABASE many_b TEMPLATE many")
        assert "max_locks_per_transaction" in e.value.diag.message_hint
        assert c.one("SELECT count(*) FROM pg_database WHERE datname = 'many_b'") == 0
        # doctor() saw it coming, and says what to set.
        c.sql("CREATE EXTENSION pg_branch")
        status, detail, hint = c.sql("SELECT status, detail, hint FROM pgbranch.doctor() "
                                     "WHERE item = 'max_locks_per_transaction'")[0]
        assert status == "error" and '"many"' in detail, detail
        needed = int(hint.split("at least ")[1].split()[0])
        assert needed > 10
        with open(c.data / "postgresql.conf", "a") as f:
            f.write(f"max_locks_per_transaction = {needed}\n")
        c.stop()
        c.start()
        c.sql("CREATE DATABASE many_b TEMPLATE many")
        assert c.one("SELECT count(*) FROM pg_class WHERE relname ~ '^t[0-9]+$'", dbname="many_b") == 1500
        assert c.one("SELECT status FROM pgbranch.doctor() WHERE item = 'max_locks_per_transaction'") == "ok"
    finally:
        c.stop(check=False)


def test_autovacuum_on_the_template_is_cancelled_not_waited_for(branch):
    """An autovacuum worker busy on the template holds a lock the fence
    needs; after deadlock_timeout the lock manager cancels it, as it does
    for any lock request that an autovacuum blocks, and the branch goes on.
    The vacuum here is throttled to take minutes."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-autovacuum", 5502, extra_conf="\n".join([
        "autovacuum_naptime = 1", "autovacuum_vacuum_threshold = 0", "autovacuum_vacuum_scale_factor = 0",
        "autovacuum_vacuum_cost_delay = 100", "autovacuum_vacuum_cost_limit = 1", "log_autovacuum_min_duration = 0",
        "deadlock_timeout = '200ms'"])).init().start()
    try:
        c.sql("CREATE DATABASE av")
        c.sql("CREATE TABLE big AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 200000) g", dbname="av")
        c.sql("DELETE FROM big WHERE g % 2 = 0", dbname="av")
        # Wait until the worker holds its lock on the table (it shows in
        # pg_stat_activity a moment before it takes the lock).
        big = c.one("SELECT 'big'::regclass::oid", dbname="av")
        assert wait_for(lambda: c.one("""SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                                          WHERE a.backend_type = 'autovacuum worker' AND l.granted
                                            AND l.mode = 'ShareUpdateExclusiveLock' AND l.relation = %s""",
                                      params=(big,)) == 1, timeout=60)
        c.sql("CREATE DATABASE av_branch TEMPLATE av")
        assert c.one("SELECT count(*) FROM big", dbname="av_branch") == 100000
        assert "canceling autovacuum task" in (c.root / "log").read_text()
    finally:
        c.stop(check=False)


def test_an_anti_wraparound_autovacuum_is_waited_for_never_cancelled():
    """Core never cancels an autovacuum that runs to prevent wraparound, and
    neither does a branch: the fence waits for it to finish the table it
    holds (it takes its lock one table at a time), within lock_timeout and
    statement_timeout, and the log shows no cancelled task. The vacuum of
    that one table is throttled to take minutes; the table has
    autovacuum_enabled = false, which anti-wraparound vacuums ignore, so
    that no ordinary autovacuum of it (its 200 000 inserted rows call for
    one) holds it first and keeps the anti-wraparound one away."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-av-wraparound", 5516, extra_conf="\n".join([
        "autovacuum_naptime = 1", "autovacuum_freeze_max_age = 100000", "log_autovacuum_min_duration = 0",
        "deadlock_timeout = '200ms'"])).init().start()
    try:
        c.sql("CREATE DATABASE avw")
        c.sql("CREATE TABLE big WITH (autovacuum_enabled = false, autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1) AS "
              "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 200000) g", dbname="avw")
        c.sql("""CREATE PROCEDURE burn(n int) LANGUAGE plpgsql AS $$
                 BEGIN FOR i IN 1..n LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$""")
        with c.connect() as conn:
            conn.execute("SET synchronous_commit = off")
            conn.execute("CALL burn(150000)")
        big = c.one("SELECT 'big'::regclass::oid", dbname="avw")
        assert wait_for(lambda: c.one("""SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                                          WHERE a.backend_type = 'autovacuum worker' AND l.granted
                                            AND l.mode = 'ShareUpdateExclusiveLock' AND l.relation = %s
                                            AND a.query LIKE '%%to prevent wraparound%%'""",
                                      params=(big,)) == 1, timeout=120)
        with c.connect() as conn:
            conn.execute("SET lock_timeout = '2s'")
            with pytest.raises(psycopg.errors.LockNotAvailable) as e:
                conn.execute("CREATE DATABASE avw_branch TEMPLATE avw")
        assert 'relation "big" of template database "avw"' in e.value.diag.message_detail
        assert c.one("SELECT count(*) FROM pg_database WHERE datname = 'avw_branch'") == 0
        assert "canceling autovacuum task" not in (c.root / "log").read_text()
    finally:
        c.stop(mode="immediate", check=False)
