"""The Debian package (scripts/package.sh), installed the way users install
extension packages: `apt-get install ./postgresql-15-pg-branch_….deb`
into Debian's own PostgreSQL 15, then used by a server with nothing of the
source tree, then removed and purged.

scripts/test.sh builds the package and names it in PG_BRANCH_DEB; run
without it (a plain pytest run), these tests are skipped."""

import os
import subprocess
from pathlib import Path

import pytest

from harness import Cluster, as_postgres, is_subvolume, mount

DEB = os.environ.get("PG_BRANCH_DEB")
pytestmark = pytest.mark.skipif(not DEB, reason="scripts/test.sh's package step sets PG_BRANCH_DEB")
PACKAGE = "postgresql-15-pg-branch"
BIN = Path("/usr/lib/postgresql/15/bin")
FILES = [Path("/usr/lib/postgresql/15/lib/pg_branch.so"),
         Path("/usr/share/postgresql/15/extension/pg_branch.control"),
         Path("/usr/lib/postgresql/15/bin/pg_branch")]


def run(*cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done.stdout


def status():
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", PACKAGE], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else "unknown"


def test_the_package_installs_branches_and_purges_cleanly():
    info = run("dpkg-deb", "--field", DEB, "Package", "Depends")
    assert f"Package: {PACKAGE}" in info and "postgresql-15" in info
    contents = run("dpkg-deb", "--contents", DEB)
    for path in ("pg_branch.so", "pg_branch.control", "pg_branch--0.2.0--0.3.0.sql", "bin/pg_branch", "copyright"):
        assert path in contents, path
    # What the source tree installed goes first, so that everything the
    # server loads below comes from the package.
    for f in FILES + list(Path("/usr/share/postgresql/15/extension").glob("pg_branch*")):
        f.unlink(missing_ok=True)

    run("apt-get", "install", "-y", "-q", "--no-install-recommends", str(Path(DEB).resolve()))
    assert status() == "install ok installed"
    owned = run("dpkg", "-L", PACKAGE)
    for f in FILES:
        assert str(f) in owned and f.exists(), f

    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "package", 5495)
    c.init().start()
    try:
        c.sql("CREATE EXTENSION pg_branch")
        assert c.one("SELECT extversion FROM pg_extension WHERE extname = 'pg_branch'") == "0.3.0"
        c.sql("CREATE DATABASE app")
        c.sql("CREATE TABLE t AS SELECT 42 AS answer", dbname="app")
        c.sql("SELECT * FROM pgbranch.convert_to_subvolume('app')")
        with c.connect() as conn:
            conn.execute("CREATE DATABASE app_copy TEMPLATE app")
            assert conn.execute("SELECT method FROM pgbranch.last_branch()").fetchone()[0] == "snapshot"
        assert is_subvolume(c.db_path("app_copy"))
        assert c.one("SELECT answer FROM t", dbname="app_copy") == 42
        # The upgrade scripts are where the server looks for them.
        paths = c.sql("SELECT source, target FROM pg_extension_update_paths('pg_branch') WHERE path IS NOT NULL")
        assert ("0.1.0", "0.3.0") in paths and ("0.2.0", "0.3.0") in paths
        assert "pg_branch fork" in as_postgres(BIN / "pg_branch", "--help").stdout
    finally:
        c.stop(check=False)

    # Removed, then (installed again) purged: nothing of it is left either way.
    # (It has no configuration files, so a removal already forgets it.)
    run("apt-get", "remove", "-y", "-q", PACKAGE)
    assert not any(f.exists() for f in FILES)
    assert status() in ("unknown", "deinstall ok config-files")
    run("apt-get", "install", "-y", "-q", "--no-install-recommends", str(Path(DEB).resolve()))
    assert all(f.exists() for f in FILES)
    run("apt-get", "purge", "-y", "-q", PACKAGE)
    assert not any(f.exists() for f in FILES)
    assert status() == "unknown"
    assert list(Path("/usr/share/postgresql/15/extension").glob("pg_branch*")) == []
    assert not Path(f"/usr/share/doc/{PACKAGE}").exists()
    # The server's packages are untouched.
    assert run("dpkg-query", "-W", "-f", "${Status}", "postgresql-15") == "install ok installed"
