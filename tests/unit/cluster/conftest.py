"""A private redis-server on loopback for each test module of the cluster package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from voicebridge.sim.cluster.redis_server import RedisServer


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    redis = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    await redis.start()
    try:
        yield redis
    finally:
        await redis.stop()
