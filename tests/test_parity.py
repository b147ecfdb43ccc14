"""Parity: every CREATE DATABASE case gives the same outcome with and
without pg_branch.

Each case runs on two clusters made the same way, one with pg_branch
preloaded (`branch`) and one without (`core`). The outcome compared is the
SQLSTATE, message, detail and hint of an error, the NOTICEs and WARNINGs,
and for a success the new pg_database row (relative to its template), its
shared dependencies and what the new database contains. On the pg_branch
side a failure must leave no directory and no catalog row behind, and a
success must be a real branch (a btrfs subvolume) unless core was asked for.

The list starts from core's own regression cases for CREATE DATABASE
(src/test/regress/sql/database.sql, create_role.sql) and adds every option
and error path of createdb() in PostgreSQL 15 to 18; each version's suite
compares against that version's own core.
"""

import shutil
from dataclasses import dataclass

import psycopg
import pytest

from harness import is_subvolume

NEW = "regression_new"
LONG = "regression_" + "x" * 60  # truncated by the parser to 63 bytes


@dataclass
class Case:
    id: str
    sql: list  # statements, run in order on one connection
    user: str = "postgres"
    dbname: str = "postgres"
    template: str = "template1"  # what the new row is compared against
    autocommit: bool = True
    branched: bool = True  # on success, pg_branch made it (else core did)
    new: str = NEW


CASES = [
    Case("plain", [f"CREATE DATABASE {NEW}"]),
    Case("template_keyword", [f"CREATE DATABASE {NEW} TEMPLATE tpl_is"], template="tpl_is"),
    Case("with_template", [f"CREATE DATABASE {NEW} WITH TEMPLATE = tpl_is"], template="tpl_is"),
    Case("template0", [f"CREATE DATABASE {NEW} TEMPLATE template0"], template="template0"),
    Case("template_is_current_db", [f"CREATE DATABASE {NEW} TEMPLATE tpl_is"], dbname="tpl_is", template="tpl_is"),
    Case("flags", [f"CREATE DATABASE {NEW} TEMPLATE tpl_is IS_TEMPLATE = true ALLOW_CONNECTIONS = false CONNECTION LIMIT = 5"],
         template="tpl_is"),
    Case("connection_limit_invalid", [f"CREATE DATABASE {NEW} CONNECTION LIMIT = -2"]),
    Case("owner", [f"CREATE DATABASE {NEW} OWNER regress_other"]),
    Case("owner_default", [f"CREATE DATABASE {NEW} OWNER = DEFAULT"]),
    Case("owner_missing", [f"CREATE DATABASE {NEW} OWNER regress_nosuch"]),
    Case("encoding_same", [f"CREATE DATABASE {NEW} ENCODING 'UTF8'"]),
    Case("encoding_number", [f"CREATE DATABASE {NEW} ENCODING 6"]),
    Case("encoding_bad_name", [f"CREATE DATABASE {NEW} ENCODING 'nonsense'"]),
    Case("encoding_bad_number", [f"CREATE DATABASE {NEW} ENCODING 9999"]),
    Case("encoding_locale_mismatch", [f"CREATE DATABASE {NEW} ENCODING 'LATIN1'"]),
    Case("encoding_template_mismatch", [f"CREATE DATABASE {NEW} ENCODING 'SQL_ASCII'"]),
    Case("encoding_from_template0", [f"CREATE DATABASE {NEW} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'"],
         template="template0"),
    Case("locale_mismatch", [f"CREATE DATABASE {NEW} LOCALE 'C'"]),
    Case("lc_collate_invalid", [f"CREATE DATABASE {NEW} LC_COLLATE 'nonsense'"]),
    Case("lc_ctype_mismatch", [f"CREATE DATABASE {NEW} LC_CTYPE 'C'"]),
    Case("icu_locale_missing", [f"CREATE DATABASE {NEW} LOCALE_PROVIDER icu"]),
    Case("icu_from_template0", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und'"],
         template="template0"),
    Case("icu_locale_with_libc", [f"CREATE DATABASE {NEW} ICU_LOCALE 'und'"]),
    Case("locale_provider_invalid", [f"CREATE DATABASE {NEW} LOCALE_PROVIDER foo"]),
    # Options and providers of later versions: on earlier ones both sides
    # must refuse them the same way.
    Case("locale_names_icu_locale", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER icu LOCALE 'und'"],
         template="template0"),
    Case("icu_locale_canonicalised", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en_US'"],
         template="template0"),
    Case("icu_rules", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und' ICU_RULES '&a < b'"],
         template="template0"),
    Case("icu_rules_with_libc", [f"CREATE DATABASE {NEW} ICU_RULES '&a < b'"]),
    Case("builtin_from_template0", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'"],
         template="template0"),
    Case("builtin_via_locale", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER builtin LOCALE 'C'"],
         template="template0"),
    Case("builtin_missing_locale", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER builtin"],
         template="template0"),
    Case("builtin_invalid_locale", [f"CREATE DATABASE {NEW} TEMPLATE template0 LOCALE_PROVIDER builtin BUILTIN_LOCALE 'nonsense'"],
         template="template0"),
    Case("builtin_locale_with_libc", [f"CREATE DATABASE {NEW} BUILTIN_LOCALE 'C'"]),
    Case("locale_provider_mismatch", [f"CREATE DATABASE {NEW} LOCALE_PROVIDER icu ICU_LOCALE 'und'"]),
    Case("collation_version", [f"CREATE DATABASE {NEW} COLLATION_VERSION = '123.4'"]),
    Case("option_repeated", [f"CREATE DATABASE {NEW} OWNER regress_other OWNER postgres"]),
    Case("option_unknown", [f"CREATE DATABASE {NEW} foo = 1"]),
    Case("location_obsolete", [f"CREATE DATABASE {NEW} LOCATION '/tmp'"]),
    Case("oid_reserved", [f"CREATE DATABASE {NEW} OID = 100"]),
    Case("oid_explicit", [f"CREATE DATABASE {NEW} OID = 54321"]),
    Case("oid_in_use", [f"CREATE DATABASE {NEW} OID = 54322"]),
    Case("template_missing", [f"CREATE DATABASE {NEW} TEMPLATE regress_nosuch"]),
    Case("template_invalid", [f"CREATE DATABASE {NEW} TEMPLATE regress_invalid"]),
    Case("name_taken", ["CREATE DATABASE tpl_is"]),
    Case("name_truncated", [f"CREATE DATABASE {LONG}"], new=LONG[:63]),
    Case("no_createdb_privilege", [f"CREATE DATABASE {NEW}"], user="regress_nocreatedb"),
    Case("copy_not_permitted", [f"CREATE DATABASE {NEW} TEMPLATE tpl_owned"], user="regress_createdb"),
    Case("copy_own_database", [f"CREATE DATABASE {NEW} TEMPLATE tpl_mine"], user="regress_createdb", template="tpl_mine"),
    Case("copy_template_as_non_owner", [f"CREATE DATABASE {NEW} TEMPLATE tpl_is"], user="regress_createdb", template="tpl_is"),
    Case("owner_not_member", [f"CREATE DATABASE {NEW} OWNER regress_other"], user="regress_createdb"),
    Case("tablespace", [f"CREATE DATABASE {NEW} TABLESPACE regress_ts"]),
    Case("tablespace_missing", [f"CREATE DATABASE {NEW} TABLESPACE regress_nosuch"]),
    Case("tablespace_global", [f"CREATE DATABASE {NEW} TABLESPACE pg_global"]),
    Case("tablespace_no_privilege", [f"CREATE DATABASE {NEW} TEMPLATE tpl_mine TABLESPACE regress_ts2"],
         user="regress_createdb"),
    Case("tablespace_conflict", [f"CREATE DATABASE {NEW} TEMPLATE tpl_in_ts TABLESPACE regress_ts"]),
    Case("template_in_two_tablespaces", [f"CREATE DATABASE {NEW} TEMPLATE tpl_in_ts"], template="tpl_in_ts"),
    Case("in_transaction_block", [f"CREATE DATABASE {NEW}"], autocommit=False),
    Case("in_function", [f"DO $$BEGIN EXECUTE 'CREATE DATABASE {NEW}'; END$$"]),
    Case("read_only_transaction", ["SET default_transaction_read_only = on", f"CREATE DATABASE {NEW}"]),
    Case("strategy_wal_log", [f"CREATE DATABASE {NEW} STRATEGY = WAL_LOG"], branched=False),
    Case("strategy_file_copy", [f"CREATE DATABASE {NEW} TEMPLATE tpl_is STRATEGY file_copy"], template="tpl_is",
         branched=False),
    Case("strategy_repeated", [f"CREATE DATABASE {NEW} STRATEGY wal_log STRATEGY wal_log"], branched=False),
]

SETUP = [
    "CREATE ROLE regress_nocreatedb LOGIN",
    "CREATE ROLE regress_createdb LOGIN CREATEDB",
    "CREATE ROLE regress_other LOGIN",
    "CREATE DATABASE tpl_is IS_TEMPLATE = true",
    "CREATE DATABASE tpl_owned OWNER regress_other",
    "CREATE DATABASE tpl_mine OWNER regress_createdb",
    "CREATE DATABASE tpl_busy",
    "CREATE DATABASE regress_oid54322 OID = 54322",
    "CREATE DATABASE regress_invalid",
    "UPDATE pg_database SET datconnlimit = -2 WHERE datname = 'regress_invalid'",
    "CREATE TABLESPACE regress_ts LOCATION '{root}/ts1'",
    "CREATE TABLESPACE regress_ts2 LOCATION '{root}/ts2'",
    "GRANT CREATE ON TABLESPACE regress_ts TO regress_createdb",
    "CREATE DATABASE tpl_in_ts",
    ("tpl_is", "CREATE TABLE things (id int PRIMARY KEY, name text); INSERT INTO things SELECT g, 'thing ' || g FROM generate_series(1, 1000) g"),
    ("tpl_is", "CREATE ROLE regress_reader; GRANT SELECT ON things TO regress_reader"),
    ("tpl_in_ts", "CREATE TABLE here (x int) TABLESPACE regress_ts; INSERT INTO here VALUES (1), (2)"),
    ("tpl_in_ts", "CREATE TABLE default_ts (y int); INSERT INTO default_ts VALUES (3)"),
]


def prepare(cluster):
    for d in ("ts1", "ts2"):
        p = cluster.root / d
        p.mkdir(exist_ok=True)
        shutil.chown(p, "postgres", "postgres")
    for step in SETUP:
        db, sql = step if isinstance(step, tuple) else ("postgres", step)
        cluster.sql(sql.format(root=cluster.root), dbname=db)


@pytest.fixture(scope="module")
def clusters(branch, core):
    prepare(branch)
    prepare(core)
    return {"branch": branch, "core": core}


ROW = """
SELECT d.datdba::regrole::text, pg_encoding_to_char(d.encoding), d.datlocprovider, d.datistemplate,
       d.datallowconn, d.datconnlimit, d.datfrozenxid = t.datfrozenxid, d.datminmxid = t.datminmxid,
       s.spcname, d.datacl IS NULL,
       -- every other column, whatever this PostgreSQL version has
       to_jsonb(d) - 'oid' - 'datname' - 'datdba' - 'dattablespace' - 'datfrozenxid' - 'datminmxid' - 'datacl',
       (SELECT array_agg(sd.deptype::text || ':' || sd.refobjid::regrole::text ORDER BY 1)
          FROM pg_shdepend sd WHERE sd.dbid = 0 AND sd.objid = d.oid AND sd.classid = 'pg_database'::regclass),
       (SELECT array_agg(sd.deptype::text || ':' || sd.refobjid::regrole::text ORDER BY 1)
          FROM pg_shdepend sd WHERE sd.dbid = d.oid)
  FROM pg_database d, pg_database t, pg_tablespace s
 WHERE d.datname = %s AND t.datname = %s AND s.oid = d.dattablespace
"""


def run(cluster, case):
    """Run the case; return (outcome, messages) and clean up after it."""
    messages = []
    with psycopg.connect(cluster.conninfo(case.dbname, case.user), autocommit=case.autocommit) as conn:
        conn.add_notice_handler(lambda d: messages.append((d.severity_nonlocalized, d.sqlstate, d.message_primary)))
        try:
            for s in case.sql:
                conn.execute(s)
            outcome = ("ok",)
        except psycopg.Error as e:
            outcome = ("error", e.diag.sqlstate, e.diag.message_primary, e.diag.message_detail, e.diag.message_hint)
    return outcome, messages


def describe(cluster, case):
    row = cluster.sql(ROW, params=(case.new, case.template))
    allowconn = row[0][4]
    content = None
    if allowconn:
        content = cluster.sql("SELECT count(*), (SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace) FROM pg_class",
                              dbname=case.new)
    oid = cluster.one("SELECT oid FROM pg_database WHERE datname = %s", params=(case.new,))
    return row, content, oid


def drop_new(cluster, case):
    if cluster.one("SELECT 1 FROM pg_database WHERE datname = %s", params=(case.new,)):
        cluster.sql(f'ALTER DATABASE "{case.new}" IS_TEMPLATE false')
        cluster.sql(f'DROP DATABASE "{case.new}"')


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_outcome_as_core(clusters, case):
    branch, core = clusters["branch"], clusters["core"]
    dirs_before = branch.db_dirs()
    names_before = branch.sql("SELECT datname FROM pg_database ORDER BY 1")

    got, got_msgs = run(branch, case)
    want, want_msgs = run(core, case)
    try:
        assert got == want, f"pg_branch: {got}\ncore:      {want}"
        assert got_msgs == want_msgs
        if got[0] == "ok":
            got_row, got_content, got_oid = describe(branch, case)
            want_row, want_content, want_oid = describe(core, case)
            assert got_row == want_row
            assert got_content == want_content
            if "OID =" in case.sql[-1]:
                assert got_oid == want_oid
            path = branch.data / "base" / str(got_oid)
            if got_row[0][8] != "pg_default":
                path = next((branch.data / "pg_tblspc").glob(f"*/*/{got_oid}"))
            assert is_subvolume(path) == case.branched, f"{path} subvolume={is_subvolume(path)}"
            new_dirs = branch.db_dirs() - dirs_before
            assert new_dirs and {d.split("/")[-1] for d in new_dirs} == {str(got_oid)}
        else:
            # A failed statement leaves nothing behind.
            assert branch.db_dirs() == dirs_before
            assert branch.sql("SELECT datname FROM pg_database ORDER BY 1") == names_before
    finally:
        drop_new(branch, case)
        drop_new(core, case)


def test_invalid_strategy_hint_names_snapshot(clusters):
    """Core's error and SQLSTATE, with a hint that lists our strategy too."""
    branch, core = clusters["branch"], clusters["core"]
    case = Case("strategy_invalid", [f"CREATE DATABASE {NEW} STRATEGY = bogus"])
    got, _ = run(branch, case)
    want, _ = run(core, case)
    # (16.2's hint reads '"wal_log", and "file_copy"'; others' without the comma.)
    assert want[:4] == ("error", "22023", 'invalid create database strategy "bogus"', None)
    assert want[4].startswith('Valid strategies are "wal_log"') and want[4].endswith(' and "file_copy".')
    assert got == ("error", "22023", 'invalid create database strategy "bogus"', None,
                   'Valid strategies are "wal_log", "file_copy" and "snapshot".')


def test_busy_template_is_branched_where_core_refuses(clusters):
    """Deliberate difference: core refuses a template with other sessions
    (55006, after 5 s); pg_branch branches it (see test_live_template.py)."""
    branch, core = clusters["branch"], clusters["core"]
    case = Case("busy_template", [f"CREATE DATABASE {NEW} TEMPLATE tpl_busy"])
    outcomes = []
    for c in (branch, core):
        with c.connect("tpl_busy"):
            outcomes.append(run(c, case)[0])
    try:
        assert outcomes[1] == ("error", "55006", 'source database "tpl_busy" is being accessed by other users',
                               "There is 1 other session using the database.", None)
        assert outcomes[0] == ("ok",)
        assert is_subvolume(branch.db_path(NEW))
    finally:
        drop_new(branch, case)
        drop_new(core, case)


def test_prepared_transaction_in_template(clusters):
    """Core refuses (55006) at once; pg_branch waits for the prepared
    transaction, says so, and with lock_timeout fails naming it."""
    branch, core = clusters["branch"], clusters["core"]
    case = Case("busy_prepared", ["SET lock_timeout = '1s'", f"CREATE DATABASE {NEW} TEMPLATE tpl_busy"])
    outcomes = []
    for c in (branch, core):
        with c.connect("tpl_busy", autocommit=False) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS p (x int)")
            conn.commit()
            conn.execute("INSERT INTO p VALUES (1)")
            conn.execute("PREPARE TRANSACTION 'regress_busy'")
        xid = c.one("SELECT transaction FROM pg_prepared_xacts WHERE gid = 'regress_busy'", dbname="tpl_busy")
        try:
            outcomes.append((run(c, case), xid))
        finally:
            c.sql("ROLLBACK PREPARED 'regress_busy'", dbname="tpl_busy")
    ((got, notices), xid), ((want, _), _) = outcomes
    assert want[:4] == ("error", "55006", 'source database "tpl_busy" is being accessed by other users',
                        "There is 1 prepared transaction using the database.")
    assert got[:3] == ("error", "55P03", "canceling statement due to lock timeout")
    assert got[3] == (f'CREATE DATABASE was waiting for ExclusiveLock on relation "p" of template database "tpl_busy", '
                      f'held by prepared transaction "regress_busy" (xid {xid}).')
    assert "pg_prepared_xacts" in got[4]
    assert ("NOTICE", "00000", f'waiting for prepared transaction "regress_busy" (xid {xid}), which wrote to '
            'relation "p" of template database "tpl_busy"') in notices
    assert branch.one("SELECT count(*) FROM pg_database WHERE datname = %s", params=(NEW,)) == 0
