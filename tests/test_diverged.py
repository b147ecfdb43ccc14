"""pgbranch.diverged(): the relations of a branch that differ from its
parent's, from extent maps (src/diverged.rs), on btrfs (a snapshot) and
on XFS (reflinks).

The oracle is independent of extents: the pages of a relation's file
that differ, byte for byte, between branch and parent must have diverged,
and a relation nobody wrote to must not be listed at all."""

import psycopg
import pytest


DIVERGED = """SELECT relation, kind, fork, status, branch_bytes, parent_bytes, diverged_bytes
                FROM pgbranch.diverged(%s)"""
PAGE = 8192


@pytest.fixture(params=["btrfs", "xfs"])
def cluster(request):
    c = request.getfixturevalue("branch" if request.param == "btrfs" else "xfs")
    c.fs = request.param
    # Nothing but the test may write: no autovacuum (nor ANALYZE) anywhere.
    c.sql("ALTER SYSTEM SET autovacuum = off")
    c.sql("SELECT pg_reload_conf()")
    yield c
    for db in ("dv_b", "dv_app"):
        c.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    c.sql("ALTER SYSTEM RESET autovacuum")
    c.sql("SELECT pg_reload_conf()")
    c.sql("DROP ROLE IF EXISTS dv_reader")


def public(rows):
    """The rows of our own tables (a branch's DDL changes catalogs too)."""
    return sorted(r[:4] for r in rows if r[0].startswith("public."))


def file_of(c, db, rel):
    return c.data / c.one("SELECT pg_relation_filepath(%s)", dbname=db, params=(rel,))


def differing_pages(a, b):
    """Pages at the same position whose bytes differ (a page only one file has counts)."""
    da, db = a.read_bytes(), b.read_bytes()
    n = max(len(da), len(db)) // PAGE
    return sum(da[i * PAGE:(i + 1) * PAGE] != db[i * PAGE:(i + 1) * PAGE] for i in range(n))


def test_diverged_lists_exactly_what_was_written(cluster):
    c = cluster
    c.sql("CREATE DATABASE dv_app STRATEGY FILE_COPY")
    if c.fs == "btrfs":
        # A subvolume, so the branch is a snapshot (on XFS: reflinks).
        assert c.one("SELECT result FROM pgbranch.convert_to_subvolume('dv_app')").startswith("converted")
    for sql in [
        # fillfactor 50: every UPDATE below stays on its page (HOT), so
        # the index is not written.
        "CREATE TABLE a (id int PRIMARY KEY, v int) WITH (fillfactor = 50)",
        "INSERT INTO a SELECT g, 0 FROM generate_series(1, 20000) g",
        "CREATE TABLE b (id int PRIMARY KEY, pad text)",
        "INSERT INTO b SELECT g, repeat('b', 100) FROM generate_series(1, 20000) g",
        "CREATE TABLE gone (x int)",
        "INSERT INTO gone VALUES (1)",
    ]:
        c.sql(sql, dbname="dv_app")
    # Statistics first (ANALYZE writes pg_statistic), then every tuple
    # frozen, catalogs included: reading them in the branch then sets no
    # hint bit, so writes nothing.
    c.sql("ANALYZE", dbname="dv_app")
    c.sql("VACUUM FREEZE", dbname="dv_app")
    c.sql("CHECKPOINT")
    c.sql("CREATE DATABASE dv_b TEMPLATE dv_app")

    # A fresh branch differs in nothing, even after a session read it all.
    assert c.sql(DIVERGED, params=("dv_b",)) == []
    c.sql("SELECT count(*) FROM a, b WHERE a.id = b.id", dbname="dv_b")
    assert c.sql(DIVERGED, params=("dv_b",)) == []

    # An UPDATE of 100 rows of one table: that table's heap (and the
    # visibility map bits it clears), and nothing else in the database.
    c.sql("UPDATE a SET v = v + 1 WHERE id <= 100", dbname="dv_b")
    rows = c.sql(DIVERGED, params=("dv_b",))
    assert {(r[0], r[1], r[3]) for r in rows} == {("public.a", "table", "changed")}, rows
    forks = {r[2]: r for r in rows}
    assert "main" in forks and set(forks) <= {"main", "vm", "fsm"}, rows
    main = forks["main"]
    c.sql("CHECKPOINT")
    pages = differing_pages(file_of(c, "dv_b", "a"), file_of(c, "dv_app", "a"))
    assert pages >= 1
    # Every page that differs has diverged; the rest of the file is shared.
    assert pages * PAGE <= main[6] < main[4] // 4, (pages, main)
    assert main[4] >= file_of(c, "dv_b", "a").stat().st_size and main[5] > 0, main

    # DDL: a table dropped, a table and a view created. (The catalogs the
    # DDL wrote are listed too, as pg_catalog relations.)
    for sql in ["DROP TABLE gone", "CREATE TABLE fresh AS SELECT g FROM generate_series(1, 10) g",
                "CREATE VIEW vw AS SELECT 1 AS one"]:
        c.sql(sql, dbname="dv_b")
    rows = c.sql(DIVERGED, params=("dv_b",))
    assert ("pg_catalog.pg_class", "table", "main", "changed") in {r[:4] for r in rows}
    mine = public(rows)
    assert ("public.gone", "table", "main", "only in parent") in mine
    assert ("public.fresh", "table", "main", "only in branch") in mine
    assert ("public.vw", "view", None, "only in branch") in mine
    assert {r[0] for r in mine} == {"public.a", "public.gone", "public.fresh", "public.vw"}, mine
    gone = next(r for r in rows if r[0] == "public.gone" and r[2] == "main")
    assert gone[4] is None and gone[5] > 0 and gone[6] == 0
    fresh = next(r for r in rows if r[0] == "public.fresh" and r[2] == "main")
    assert fresh[5] is None and fresh[4] == fresh[6] > 0

    # A write in the parent diverges the two as well: extents cannot say
    # which side wrote.
    c.sql("UPDATE b SET pad = 'parent' WHERE id = 1", dbname="dv_app")
    rows = c.sql(DIVERGED, params=("dv_b",))
    assert {r[0] for r in rows if r[0].startswith("public.")} == {
        "public.a", "public.b", "public.gone", "public.fresh", "public.vw"}, rows
    b_main = next(r for r in rows if r[0] == "public.b" and r[2] == "main")
    assert b_main[6] >= PAGE

    # Privileges: pg_read_server_files, as for branch_size().
    c.sql("CREATE ROLE dv_reader LOGIN")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.sql(DIVERGED, user="dv_reader", params=("dv_b",))
    c.sql("GRANT pg_read_server_files TO dv_reader")
    assert c.sql(DIVERGED, user="dv_reader", params=("dv_b",)) == rows

    # Not a branch, no such database.
    with pytest.raises(psycopg.errors.WrongObjectType, match='database "dv_app" is not a branch'):
        c.sql(DIVERGED, params=("dv_app",))
    with pytest.raises(psycopg.errors.InvalidCatalogName, match='database "dv_nope" does not exist'):
        c.sql(DIVERGED, params=("dv_nope",))

    # diverged() holds no lock once it has returned: a DROP of either
    # database from another session does not wait for this transaction.
    with c.connect(autocommit=False) as reader:
        reader.execute(DIVERGED, ("dv_b",)).fetchall()
        with c.connect() as other:
            # Before the fix it waited here for the reader's locks.
            other.execute("SET lock_timeout = '10s'")
            other.execute("ALTER DATABASE dv_app RENAME TO dv_app_renamed")
            other.execute("ALTER DATABASE dv_app_renamed RENAME TO dv_app")
    # An invalid branch (an interrupted DROP DATABASE) is refused.
    c.sql("UPDATE pg_database SET datconnlimit = -2 WHERE datname = 'dv_b'")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match='cannot compare invalid database "dv_b"'):
        c.sql(DIVERGED, params=("dv_b",))
    c.sql("UPDATE pg_database SET datconnlimit = -1 WHERE datname = 'dv_b'")

    # The parent dropped: said plainly, with what to use instead. Half
    # dropped (invalid, as an interrupted DROP DATABASE leaves it) counts.
    c.sql("UPDATE pg_database SET datconnlimit = -2 WHERE datname = 'dv_app'")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="has been dropped"):
        c.sql(DIVERGED, params=("dv_b",))
    c.sql("DROP DATABASE dv_app")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        c.sql(DIVERGED, params=("dv_b",))
    assert e.value.diag.message_primary == 'the parent of branch "dv_b" has been dropped'
    assert '"dv_app"' in e.value.diag.message_detail
    assert "branch_size" in e.value.diag.message_hint
