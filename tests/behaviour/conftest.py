"""The behaviour suites' shared-store fixtures: the store tests' real redis-server, its clients,
stores and systems that always close, and a failover pair."""

from tests.stores.conftest import client, redis_server, stores, systems  # noqa: F401
from tests.stores.test_faults import failover  # noqa: F401
