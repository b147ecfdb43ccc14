"""A branch that fails after its directory was cloned leaves nothing behind.

The step after the clone is the checkpoint that CREATE DATABASE waits to start.
Stopping the checkpointer (SIGSTOP) holds the statement there, with the
branch's directory already made and WAL-logged; then the statement is
cancelled (ERROR) or its backend terminated (FATAL).
"""

import threading

import psycopg
import pytest

from harness import checkpointer_stopped, wait_for



def new_dirs(cluster, before):
    return cluster.db_dirs() - before


@pytest.fixture
def template(branch):
    branch.sql("DROP DATABASE IF EXISTS cleanup_tpl")
    branch.sql("CREATE DATABASE cleanup_tpl")
    branch.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g", dbname="cleanup_tpl")
    branch.sql("CHECKPOINT")
    yield "cleanup_tpl"
    branch.sql("DROP DATABASE IF EXISTS cleanup_tpl")


def test_error_after_clone_removes_the_directory(branch, template):
    before = branch.db_dirs()
    start = branch.one("SELECT pg_current_wal_flush_lsn()")
    with checkpointer_stopped(branch):
        with branch.connect() as conn:
            conn.execute("SET statement_timeout = '2s'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("CREATE DATABASE cleanup_err TEMPLATE cleanup_tpl")
            assert new_dirs(branch, before) == set()
    assert branch.one("SELECT count(*) FROM pg_database WHERE datname = 'cleanup_err'") == 0
    # The clone had been logged, so its removal is logged too: a standby
    # that replayed the copy drops it again.
    branch.sql("CHECKPOINT")  # flushes the WAL the aborted statement wrote
    types = [r[0] for r in branch.sql(
        "SELECT record_type FROM pg_get_wal_records_info(%s, pg_current_wal_flush_lsn()) "
        "WHERE resource_manager IN ('pg_branch', 'Database')", params=(start,))]
    assert types == ["BRANCH_CREATE", "DROP"]
    # The template is untouched and can still be branched.
    branch.sql("CREATE DATABASE cleanup_ok TEMPLATE cleanup_tpl")
    assert branch.one("SELECT count(*) FROM t", dbname="cleanup_ok") == 10000
    branch.sql("DROP DATABASE cleanup_ok")


def test_fatal_after_clone_removes_the_directory(branch, template):
    before = branch.db_dirs()
    failure = {}

    def create():
        try:
            with branch.connect() as conn:
                conn.execute("SET application_name = 'cleanup_fatal'")
                conn.execute("CREATE DATABASE cleanup_fatal TEMPLATE cleanup_tpl")
        except psycopg.Error as e:
            failure["error"] = e

    with checkpointer_stopped(branch):
        worker = threading.Thread(target=create)
        worker.start()
        # Wait until the branch is cloned and the backend waits for the checkpoint.
        assert wait_for(lambda: new_dirs(branch, before))
        pid = branch.one("SELECT pid FROM pg_stat_activity WHERE application_name = 'cleanup_fatal'")
        branch.sql("SELECT pg_terminate_backend(%s)", params=(pid,))
        worker.join(30)
        assert wait_for(lambda: new_dirs(branch, before) == set())
    assert "error" in failure
    assert branch.one("SELECT count(*) FROM pg_database WHERE datname = 'cleanup_fatal'") == 0
