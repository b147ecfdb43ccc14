"""The pytest fixtures: clusters shared by the tests of a session, and the
check that runs after each test. The clusters themselves are harness.py's."""

import pytest

from harness import HORIZON_VIOLATIONS, Cluster, mount


@pytest.fixture(scope="session")
def branch():
    """A cluster on btrfs with pg_branch preloaded and the extension created."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-branch", 5491).init().start()
    c.sql("CREATE EXTENSION pg_branch")
    if c.has_contrib("pg_walinspect"):
        c.sql("CREATE EXTENSION pg_walinspect")
    yield c
    c.stop(check=False)


@pytest.fixture(scope="session")
def core():
    """The same cluster without pg_branch: the behaviour to match."""
    c = Cluster(mount("PG_BRANCH_TEST_BTRFS") / "pytest-core", 5492, preload=False).init().start()
    yield c
    c.stop(check=False)


@pytest.fixture(scope="session")
def ext4():
    """pg_branch preloaded on a filesystem that cannot clone."""
    c = Cluster(mount("PG_BRANCH_TEST_EXT4") / "pytest-ext4", 5493).init().start()
    c.sql("CREATE EXTENSION pg_branch")
    yield c
    c.stop(check=False)


@pytest.fixture(scope="session")
def xfs():
    """pg_branch preloaded on XFS with reflink."""
    c = Cluster(mount("PG_BRANCH_TEST_XFS") / "pytest-xfs", 5494).init().start()
    c.sql("CREATE EXTENSION pg_branch")
    yield c
    c.stop(check=False)




@pytest.fixture(autouse=True)
def frozen_horizon_holds(request):
    """After every test on the shared pg_branch cluster: no database may
    claim XIDs older than the oldest one the cluster still keeps the
    status of (clog truncation follows pg_control's oldest XID)."""
    yield
    if "branch" in request.fixturenames:
        c = request.getfixturevalue("branch")
        c.sql("CHECKPOINT")
        assert c.one(HORIZON_VIOLATIONS) == "", "a database is older than the cluster's oldest XID"
