"""The cluster fixture: one PostgreSQL database, three `countersign serve` replicas and HAProxy per test module.

Starting the cluster takes seconds, so a module shares one; tests leave it as they found it (a
test that kills a replica restarts it). A module that needs other settings overrides
`cluster_options` with the keyword arguments of `Cluster` (a policy, `[server]` keys, more TOML):

    @pytest.fixture(scope="module")
    def cluster_options() -> dict[str, Any]:
        return {"server": {"poll_interval": "0.2s"}}

When the module's tests are done, `countersign audit verify` must find the chain intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import _PG_PROBLEM, PG_ADMIN_URL, skip_unless_present
from tests.replicas.cluster import Cluster, create_database, drop_database, haproxy_problem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, cluster_options: dict[str, Any]) -> Iterator[Cluster]:
    skip_unless_present("haproxy", haproxy_problem())
    skip_unless_present("postgres", _PG_PROBLEM)
    database_url = create_database(PG_ADMIN_URL)
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), database_url, **cluster_options)
    try:
        cluster.start()
        yield cluster
        verified = cluster.audit_verify()
        assert verified.returncode == 0 and verified.stdout.startswith("audit chain intact"), (
            f"{verified.stdout}{verified.stderr}"
        )
    finally:
        cluster.stop()
        drop_database(PG_ADMIN_URL, database_url)
