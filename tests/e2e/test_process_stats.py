"""``/api/stats`` describes the process (tasks, descriptors, allocations) for soak tests;
the object census only when the environment allows it: ``GET /debug/stats``, which
exists only with ``DEBUG_ENDPOINTS=true`` — the switch the load test's leak check sets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.e2e.test_routes import bridge, bridge_settings
from voicebridge.config import Settings
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import running_bridge
from voicebridge.tools.loadtest import children
from voicebridge.tools.loadtest.options import LoadOptions

__all__ = ["bridge"]  # the fixture, re-used

pytestmark = pytest.mark.e2e


@pytest.fixture
async def debug_bridge(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    acs = FakeAcs()
    await acs.start()
    try:
        overrides = bridge_settings(acs, tmp_path) | {"debug_endpoints": True}
        async with running_bridge(overrides) as (app, base):
            yield app, base
    finally:
        await acs.stop()


def check_process(process: dict[str, Any]) -> None:
    assert process["tasks"] >= 1 and process["open_fds"] > process["open_sockets"] >= 1
    assert process["allocated_blocks"] > 0 and len(process["gc_counts"]) == 3


async def test_stats_show_the_process_and_the_census_only_when_enabled(
    bridge: tuple[Any, str, FakeAcs],
) -> None:
    _, base, _ = bridge
    async with httpx.AsyncClient() as client:
        plain = (await client.get(f"{base}/api/stats?objects=1&trim=1")).json()
        debug = await client.get(f"{base}/debug/stats?trim=1")
    check_process(plain["process"])
    assert "census" not in plain  # the census is never on the public /api/stats ...
    assert debug.status_code == 404  # ... and off unless the environment says so


async def test_the_debug_route_serves_the_census_when_enabled(
    debug_bridge: tuple[Any, str],
) -> None:
    _, base = debug_bridge
    async with httpx.AsyncClient() as client:
        plain = (await client.get(f"{base}/api/stats?objects=1")).json()
        full = (await client.get(f"{base}/debug/stats?trim=1")).json()
    assert "census" not in plain and "calls_by_outcome" in plain
    check_process(full["process"])
    census = full["census"]
    assert census["objects"] > 1000 and census["by_type"]["builtins.dict"] > 100
    assert set(census["retained"]) == {"finished_calls", "ended_ids", "seen_event_ids"}
    assert census["pymalloc"]["arenas"] >= 1 and census["pymalloc"]["allocated_bytes"] > 0
    assert census["heap"]["rss_mb_after"] > 0


@pytest.mark.parametrize("leak_check", [True, False])
def test_the_load_tests_leak_check_turns_the_debug_routes_on(
    leak_check: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge the load test starts reads the same switch the app mounts on."""
    router = SimpleNamespace(
        endpoint="http://127.0.0.1:9",
        issuer="http://127.0.0.1:9",
        openid_config_url="http://127.0.0.1:9/openid",
    )
    env = children.bridge_env(
        LoadOptions(calls=1, leak_check=leak_check),
        port=9,
        voicelive="http://127.0.0.1:9",
        router=router,  # type: ignore[arg-type]
        access_key="eA==",
        resource_id="00000000-0000-0000-0000-000000000000",
        log_dir=tmp_path,
    )
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(env):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().debug_endpoints is leak_check  # type: ignore[call-arg]
