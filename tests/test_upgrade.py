"""ALTER EXTENSION pg_branch UPDATE: an installation upgraded from any
earlier version is the same as a fresh one of the current version.

The earlier versions' install scripts are fixtures (tests/upgrade/):
packages ship only the current version's script and the upgrade scripts in
sql/, so the test puts them beside those for the duration of the test.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from harness import PG_BIN, as_postgres

FIXTURES = sorted((Path(__file__).parent / "upgrade").glob("pg_branch--*.sql"))
OLD = [f.stem.split("--")[1] for f in FIXTURES]
CURRENT = "0.3.0"

# Everything that makes up a function of the extension: its signature, its
# labels, who may call it, its comment and what it calls.
FUNCTIONS = """
SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proacl::text,
       obj_description(p.oid, 'pg_proc'), p.prosrc, p.probin, n.nspname
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_branch'
 ORDER BY 1, 2
"""

# The extension's views: definition, privileges, comment.
VIEWS = """
SELECT c.relname, pg_get_viewdef(c.oid), c.relacl::text, obj_description(c.oid, 'pg_class')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'pgbranch' AND c.relkind = 'v'
 ORDER BY 1
"""

# The extension's schema: who may use it.
SCHEMA = "SELECT nspname, nspacl::text FROM pg_namespace WHERE nspname = 'pgbranch'"


@pytest.fixture
def old_script():
    sharedir = subprocess.run([PG_BIN / "pg_config", "--sharedir"], check=True,
                              capture_output=True, text=True).stdout.strip()
    targets = [Path(sharedir) / "extension" / f.name for f in FIXTURES]
    for fixture, target in zip(FIXTURES, targets):
        shutil.copyfile(fixture, target)
    yield
    for target in targets:
        target.unlink()


def test_every_old_version_has_a_fixture():
    assert OLD == ["0.1.0", "0.2.0"]


def describe(cluster, db):
    """`\\dx+ pg_branch` as psql prints it: every member object."""
    return as_postgres(PG_BIN / "psql", "-X", "-h", cluster.sock, "-p", cluster.port, "-d", db,
                       "-c", r"\dx+ pg_branch").stdout


@pytest.mark.parametrize("old", OLD)
def test_update_equals_a_fresh_install(branch, old_script, old):
    for db in ("upgrade_old", "upgrade_new"):
        branch.sql(f"DROP DATABASE IF EXISTS {db}")
        branch.sql(f"CREATE DATABASE {db}")
    branch.sql("CREATE EXTENSION pg_branch", dbname="upgrade_new")
    branch.sql(f"CREATE EXTENSION pg_branch VERSION '{old}'", dbname="upgrade_old")
    fresh = branch.sql(FUNCTIONS, dbname="upgrade_new")
    # The comparison sees the difference the upgrade has to make.
    assert branch.sql(FUNCTIONS, dbname="upgrade_old") != fresh

    branch.sql("ALTER EXTENSION pg_branch UPDATE", dbname="upgrade_old")

    for db in ("upgrade_old", "upgrade_new"):
        assert branch.one("SELECT extversion FROM pg_extension WHERE extname = 'pg_branch'",
                          dbname=db) == CURRENT
    assert branch.sql(FUNCTIONS, dbname="upgrade_old") == fresh
    assert branch.sql(SCHEMA, dbname="upgrade_old") == branch.sql(SCHEMA, dbname="upgrade_new")
    assert describe(branch, "upgrade_old") == describe(branch, "upgrade_new")
    assert "function pgbranch.doctor()" in describe(branch, "upgrade_new")
    assert "view pgbranch.branches" in describe(branch, "upgrade_new")
    assert branch.sql(VIEWS, dbname="upgrade_old") == branch.sql(VIEWS, dbname="upgrade_new")
    for db in ("upgrade_old", "upgrade_new"):
        branch.sql(f"DROP DATABASE {db}")


def test_upgrade_paths_are_known(branch, old_script):
    """PostgreSQL finds the path from every earlier version to the current
    one from the installed scripts."""
    paths = dict(branch.sql("SELECT source, path FROM pg_extension_update_paths('pg_branch') "
                            f"WHERE target = '{CURRENT}' AND path IS NOT NULL"))
    assert paths == {"0.1.0": f"0.1.0--0.2.0--{CURRENT}", "0.2.0": f"0.2.0--{CURRENT}"}
