"""Fidelity: every message a statement produces reaches the client with
every field identical to core's, with pg_branch preloaded (issue 12).

Each case runs on a stock cluster and on one with pg_branch preloaded, of
the same version, and compares every diagnostic field psycopg exposes
(e.diag) of the error and of every NOTICE and WARNING, plus the rows a
statement returns (GET STACKED DIAGNOSTICS, read back as JSON). libpq
receives all fields whatever psql's VERBOSITY; client_min_messages is
lowered to log so that nothing the server would say is filtered out.

Both servers run once without and once with RUST_BACKTRACE=1 in their
environment: pgrx's panic hook used to append a Rust backtrace to the
DETAIL of every error that passed through the hook.

CREATE DATABASE cases that pg_branch makes itself raise its own errors
with core's SQLSTATE and wording: for them the source file, line and
function are not compared; everything else is, the cursor position too.
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from harness import LIBRARY, Cluster, mount, wait_for

FIELDS = [
    "severity", "severity_nonlocalized", "sqlstate", "message_primary", "message_detail", "message_hint",
    "statement_position", "internal_position", "internal_query", "context", "schema_name", "table_name",
    "column_name", "datatype_name", "constraint_name", "source_file", "source_line", "source_function",
]
SOURCE = {"source_file", "source_line", "source_function"}

# Every item of GET STACKED DIAGNOSTICS.
STACKED = ["RETURNED_SQLSTATE", "COLUMN_NAME", "CONSTRAINT_NAME", "PG_DATATYPE_NAME", "MESSAGE_TEXT",
           "TABLE_NAME", "SCHEMA_NAME", "PG_EXCEPTION_DETAIL", "PG_EXCEPTION_HINT", "PG_EXCEPTION_CONTEXT"]

SETUP = [
    "CREATE TABLE ct (a int PRIMARY KEY, b int)",
    "INSERT INTO ct VALUES (1, -1)",
    "CREATE TABLE ct_in (a int, b date)",
    "CREATE TABLE dup (a int)",
    "INSERT INTO dup VALUES (1), (1)",
    "CREATE SCHEMA fid",
    "CREATE TABLE fid.ref (id int PRIMARY KEY)",
    "CREATE TABLE fid.child (id int PRIMARY KEY, r int)",
    "INSERT INTO fid.child VALUES (1, 42)",
    # A PL/pgSQL exception handler that reads every stacked item.
    "CREATE FUNCTION stacked(sql text) RETURNS jsonb LANGUAGE plpgsql AS $f$\n"
    "DECLARE " + " ".join(f"v{i} text;" for i in range(len(STACKED))) + "\n"
    "BEGIN\n  EXECUTE sql;\n  RETURN NULL;\n"
    "EXCEPTION WHEN OTHERS THEN\n"
    "  GET STACKED DIAGNOSTICS " + ", ".join(f"v{i} = {item}" for i, item in enumerate(STACKED)) + ";\n"
    "  RETURN jsonb_build_object(" + ", ".join(f"'{item}', v{i}" for i, item in enumerate(STACKED)) + ");\n"
    "END $f$",
    # The same with the statement written in the handler's block, not EXECUTEd.
    "CREATE FUNCTION stacked_direct() RETURNS jsonb LANGUAGE plpgsql AS $f$\n"
    "DECLARE " + " ".join(f"v{i} text;" for i in range(len(STACKED))) + "\n"
    "BEGIN\n  ALTER TABLE ct ADD CONSTRAINT ct_b_check CHECK (b > 0);\n  RETURN NULL;\n"
    "EXCEPTION WHEN OTHERS THEN\n"
    "  GET STACKED DIAGNOSTICS " + ", ".join(f"v{i} = {item}" for i, item in enumerate(STACKED)) + ";\n"
    "  RETURN jsonb_build_object(" + ", ".join(f"'{item}', v{i}" for i, item in enumerate(STACKED)) + ");\n"
    "END $f$",
]

NEW = "fidelity_new"


@dataclass
class Case:
    id: str
    steps: list  # SQL strings, or ("copy", sql, data)
    createdb: bool = False  # pg_branch may make it itself: source fields differ
    # Fields the stock server must fill, so that a comparison is not vacuous.
    expect: dict = field(default_factory=dict)
    autocommit: bool = True


CASES = [
    Case("copy_bad_input", [("copy", "COPY ct_in FROM STDIN", "1\t2024-01-01\n2\tnot a date\n")],
         expect={"sqlstate": "22007", "context": 'COPY ct_in, line 2, column b: "not a date"'}),
    Case("copy_duplicate_key", [("copy", "COPY ct (a) FROM STDIN", "2\n1\n")],
         expect={"sqlstate": "23505", "constraint_name": "ct_pkey", "table_name": "ct", "schema_name": "public",
                 "context": "COPY ct, line 2"}),
    Case("copy_from_program_bad_input", ["COPY ct_in FROM PROGRAM 'echo x'"],
         expect={"sqlstate": "22P02", "context": 'COPY ct_in, line 1, column a: "x"'}),
    Case("do_raise_detail_hint",
         ["DO $$BEGIN RAISE EXCEPTION 'boom %', 42 USING DETAIL = 'the detail', HINT = 'the hint', "
          "ERRCODE = 'P0042', COLUMN = 'col', CONSTRAINT = 'con', DATATYPE = 'typ', TABLE = 'tab', "
          "SCHEMA = 'sch'; END$$"],
         expect={"sqlstate": "P0042", "message_detail": "the detail", "message_hint": "the hint",
                 "column_name": "col", "constraint_name": "con", "datatype_name": "typ", "table_name": "tab",
                 "schema_name": "sch"}),
    Case("create_table_bad_type", ["create table x_t (a nonexistent_type)"],
         expect={"sqlstate": "42704", "statement_position": 21}),
    Case("create_table_check_bad_column", ["CREATE TABLE pos_t (a int CHECK (nosuch > 0))"],
         expect={"sqlstate": "42703", "statement_position": 34}),
    Case("create_table_bad_default", ["CREATE TABLE def_t (a int DEFAULT 'x'::int)"],
         expect={"sqlstate": "22P02", "statement_position": 35}),
    Case("alter_add_check_violated", ["ALTER TABLE ct ADD CONSTRAINT ct_b_check CHECK (b > 0)"],
         expect={"sqlstate": "23514", "constraint_name": "ct_b_check", "table_name": "ct", "schema_name": "public"}),
    Case("alter_add_foreign_key_violated",
         ["ALTER TABLE fid.child ADD CONSTRAINT child_r_fkey FOREIGN KEY (r) REFERENCES fid.ref"],
         expect={"sqlstate": "23503", "constraint_name": "child_r_fkey", "table_name": "child",
                 "schema_name": "fid"}),
    Case("alter_column_type_bad_using", ["ALTER TABLE ct ALTER COLUMN b TYPE int USING (b / 0)"],
         expect={"sqlstate": "22012"}),
    Case("alter_not_null_violated", ["ALTER TABLE ct_in ALTER COLUMN a SET NOT NULL",
                                     "INSERT INTO ct_in VALUES (NULL, NULL)"],
         expect={"sqlstate": "23502", "column_name": "a", "table_name": "ct_in"}),
    Case("create_unique_index_duplicates", ["CREATE UNIQUE INDEX dup_a ON dup (a)"],
         expect={"sqlstate": "23505", "constraint_name": "dup_a", "table_name": "dup"}),
    Case("create_index_bad_column", ["CREATE INDEX ON ct (a, nosuch)"], expect={"sqlstate": "42703"}),
    Case("stacked_diagnostics_execute",
         ["SELECT stacked('ALTER TABLE ct ADD CONSTRAINT ct_b_check CHECK (b > 0)')"]),
    Case("stacked_diagnostics_unique_index", ["SELECT stacked('CREATE UNIQUE INDEX dup_a ON dup (a)')"]),
    Case("stacked_diagnostics_copy", ["SELECT stacked($$COPY ct_in FROM PROGRAM 'echo x'$$)"]),
    Case("stacked_diagnostics_direct", ["SELECT stacked_direct()"]),
    Case("stacked_diagnostics_raise",
         ["SELECT stacked($q$DO $i$BEGIN RAISE EXCEPTION 'x' USING DETAIL = 'd', HINT = 'h', COLUMN = 'c', "
          "CONSTRAINT = 'k', DATATYPE = 't', TABLE = 'tb', SCHEMA = 's'; END$i$ $q$)"]),
    Case("nested_execute_ddl",
         ["DO $$BEGIN EXECUTE 'CREATE TABLE nested_t (a nonexistent_type)'; END$$"],
         expect={"sqlstate": "42704"}),
    Case("doubly_nested_execute_ddl",
         ["DO $$BEGIN EXECUTE $x$DO $y$BEGIN EXECUTE 'ALTER TABLE ct ADD CONSTRAINT ct_b_check CHECK (b > 0)'; "
          "END$y$ $x$; END$$"],
         expect={"sqlstate": "23514", "constraint_name": "ct_b_check"}),
    Case("function_calling_ddl",
         ["CREATE FUNCTION mk() RETURNS void LANGUAGE plpgsql AS $$BEGIN CREATE INDEX ON ct (nosuch); END$$",
          "SELECT mk()"],
         expect={"sqlstate": "42703"}),
    Case("sql_function_ddl_error",
         ["CREATE FUNCTION mk_sql() RETURNS void LANGUAGE sql AS $$CREATE TABLE sqlf (a nonexistent_type)$$",
          "SELECT mk_sql()"],
         expect={"sqlstate": "42704"}),
    Case("notices_pass_through",
         ["DO $$BEGIN RAISE NOTICE 'hello %', 1 USING DETAIL = 'nd', HINT = 'nh'; "
          "RAISE WARNING 'careful' USING ERRCODE = '01XYZ'; RAISE INFO 'info'; RAISE LOG 'log line'; END$$",
          "DROP TABLE IF EXISTS nosuch_table",
          "CREATE TABLE IF NOT EXISTS ct (a int)",
          "DROP INDEX IF EXISTS nosuch_index"]),
    Case("notice_from_create_index_if_not_exists",
         ["CREATE INDEX IF NOT EXISTS ct_pkey ON ct (a)"]),
    Case("utility_in_aborted_transaction", ["BEGIN", "SELECT 1/0", "CREATE TABLE t_aborted (a int)"],
         expect={"sqlstate": "25P02"}),
    # CREATE DATABASE: both outcomes, pg_branch's and core's.
    Case("createdb_bad_option", [f"CREATE DATABASE {NEW} foo = 1"], createdb=True,
         expect={"sqlstate": "42601", "statement_position": 30}),
    Case("createdb_bad_encoding", [f"CREATE DATABASE {NEW} ENCODING 'nonsense'"], createdb=True,
         expect={"sqlstate": "42704", "statement_position": 30}),
    Case("createdb_bad_encoding_number", [f"CREATE DATABASE {NEW} TEMPLATE template1 ENCODING 9999"], createdb=True,
         expect={"sqlstate": "42704", "statement_position": 49}),
    Case("createdb_conflicting_options", [f"CREATE DATABASE {NEW} OWNER postgres OWNER postgres"], createdb=True,
         expect={"sqlstate": "42601", "statement_position": 45}),
    Case("createdb_location_warning", [f"CREATE DATABASE {NEW} LOCATION '/tmp'"], createdb=True),
    Case("createdb_template_missing", [f"CREATE DATABASE {NEW} TEMPLATE nosuch_template"], createdb=True,
         expect={"sqlstate": "3D000"}),
    Case("createdb_duplicate_name", ["CREATE DATABASE postgres"], createdb=True,
         expect={"sqlstate": "42P04"}),
    Case("createdb_owner_missing", [f"CREATE DATABASE {NEW} OWNER nosuch_role"], createdb=True,
         expect={"sqlstate": "42704"}),
    Case("createdb_bad_boolean", [f"CREATE DATABASE {NEW} IS_TEMPLATE = 'maybe'"], createdb=True,
         expect={"sqlstate": "42601"}),
    Case("createdb_in_transaction_block", ["BEGIN", f"CREATE DATABASE {NEW}"], createdb=True,
         expect={"sqlstate": "25001"}),
    Case("createdb_in_function", [f"DO $$BEGIN EXECUTE 'CREATE DATABASE {NEW}'; END$$"], createdb=True,
         expect={"sqlstate": "25001"}),
    Case("createdb_ok", [f"CREATE DATABASE {NEW}"], createdb=True),
]


def diag(d):
    return {f: getattr(d, f) for f in FIELDS}


def run(cluster, case):
    """Every message the case produces, in order, each as a dict of fields."""
    out = []
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute("SET client_min_messages = log")
        conn.add_notice_handler(lambda d: out.append(("message", diag(d))))
        for step in case.steps:
            try:
                if isinstance(step, tuple):
                    _, sql, data = step
                    with conn.cursor() as cur, cur.copy(sql) as copy:
                        copy.write(data)
                    out.append(("ok",))
                else:
                    cur = conn.execute(step)
                    out.append(("rows", cur.fetchall() if cur.description else None))
            except psycopg.Error as e:
                out.append(("error", diag(e.diag)))
    return out


def strip_source(outcome):
    return [(kind, *[{k: v for k, v in d.items() if k not in SOURCE} if isinstance(d, dict) else d for d in rest])
            for kind, *rest in outcome]


def reset(cluster):
    """Undo what a case may have left: a new database, tables, functions."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {NEW}")
        for t in ("x_t", "pos_t", "def_t", "nested_t", "sqlf", "t_aborted"):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute("DROP FUNCTION IF EXISTS mk(), mk_sql()")
        conn.execute("ALTER TABLE ct_in ALTER COLUMN a DROP NOT NULL")
        conn.execute("DROP INDEX IF EXISTS dup_a")


@pytest.fixture(scope="module")
def servers():
    """A stock and a pg_branch cluster, made once for the module."""
    root = mount("PG_BRANCH_TEST_BTRFS")
    branch = Cluster(root / "pytest-fidelity-branch", 5500).init()
    core = Cluster(root / "pytest-fidelity-core", 5501, preload=False).init()
    yield branch, core
    branch.stop(check=False)
    core.stop(check=False)


@pytest.fixture(scope="module", params=[None, "1"], ids=["plain", "RUST_BACKTRACE=1"])
def pair(request, servers):
    """Both servers, (re)started with or without RUST_BACKTRACE=1."""
    branch, core = servers
    for c in servers:
        c.stop(check=False)
        c.env = {"RUST_BACKTRACE": request.param} if request.param else {}
        c.start()
        if not c.one("SELECT count(*) FROM pg_class WHERE relname = 'ct_in'"):
            for s in SETUP:
                c.sql(s)
    if LIBRARY == "pg_branch":
        branch.sql("CREATE EXTENSION IF NOT EXISTS pg_branch")
    return branch, core


def postmaster_environ(cluster):
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def test_servers_have_the_environment(pair):
    """The servers run with the environment the parameter names."""
    branch, core = pair
    for c in pair:
        assert (b"RUST_BACKTRACE=1" in postmaster_environ(c)) == bool(c.env)
    assert branch.one("SHOW shared_preload_libraries") == LIBRARY
    assert core.one("SHOW shared_preload_libraries") == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_fields_as_core(pair, case):
    branch, core = pair
    try:
        want = run(core, case)
        got = run(branch, case)
    finally:
        reset(core)
        reset(branch)
    if case.expect:
        # The last error, as the stock server gives it.
        last = [d for kind, *d in want if kind == "error"][-1][0]
        for k, v in case.expect.items():
            v = str(v) if isinstance(v, int) else v  # libpq gives positions as text
            assert last[k] == v, f"stock server's {k}: {last[k]!r}, expected {v!r}"
    if case.id.startswith("stacked"):
        # The handler must have seen the error, with its fields.
        (stacked,), = [rows for kind, rows in want if kind == "rows"][-1]
        assert stacked["RETURNED_SQLSTATE"] and stacked["PG_EXCEPTION_CONTEXT"], stacked
    if case.createdb:
        got, want = strip_source(got), strip_source(want)
    assert got == want


def test_cancel_inside_utility_statement(pair):
    """pg_cancel_backend while a DO block sleeps: the cancel error, with
    its CONTEXT, is core's."""
    outcomes = []
    for c in reversed(pair):
        result = {}
        with psycopg.connect(c.conninfo(), autocommit=True) as conn:
            pid = conn.info.backend_pid

            def sleep():
                try:
                    conn.execute("DO $$BEGIN PERFORM pg_sleep(600); END$$")
                    result["outcome"] = ("ok",)
                except psycopg.Error as e:
                    result["outcome"] = ("error", diag(e.diag))

            t = threading.Thread(target=sleep)
            t.start()
            try:
                assert wait_for(lambda: c.one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                    "AND wait_event = 'PgSleep'", params=(pid,)) == 1)
                assert c.one("SELECT pg_cancel_backend(%s)", params=(pid,))
            finally:
                t.join(timeout=60)
            assert not t.is_alive()
        outcomes.append(result["outcome"])
    want, got = outcomes
    assert want[0] == "error" and want[1]["sqlstate"] == "57014" and "pg_sleep" in want[1]["context"]
    assert got == want


def test_no_backtrace_from_sql_functions(pair):
    """An error raised inside one of pg_branch's own SQL functions carries
    no Rust backtrace, whatever RUST_BACKTRACE says."""
    branch, _ = pair
    if LIBRARY != "pg_branch":
        pytest.skip("pg_branch is not installed: no SQL API")
    with pytest.raises(psycopg.Error) as e:
        branch.sql("SELECT * FROM pgbranch.convert_to_subvolume('nosuch_db')")
    assert e.value.diag.sqlstate == "3D000"
    assert e.value.diag.message_primary == 'database "nosuch_db" does not exist'
    assert e.value.diag.message_detail is None
