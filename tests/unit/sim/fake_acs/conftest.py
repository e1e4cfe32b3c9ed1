"""Fixtures of the fake ACS's tests: fakes and bridgelets, stopped (and checked) at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.sim.fake_acs.bridgelet import SPEED, Bridgelet
from voicebridge.sim.fake_acs import FakeAcs


@pytest.fixture
def make_fake() -> Any:
    fakes: list[FakeAcs] = []

    async def factory(**kwargs: Any) -> FakeAcs:
        kwargs.setdefault("speed", SPEED)
        kwargs.setdefault("hangup_after_audio_s", 0.1)
        fake = FakeAcs(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    return factory, fakes


@pytest.fixture
async def harness(make_fake: Any) -> AsyncIterator[Any]:
    """``await new(fake_kwargs, **bridgelet_kwargs)`` -> (fake, bridgelet); stopped after."""
    factory, fakes = make_fake
    bridgelets: list[Bridgelet] = []

    async def new(
        fake_kwargs: dict[str, Any] | None = None, **bridge_kwargs: Any
    ) -> tuple[FakeAcs, Bridgelet]:
        fake = await factory(**(fake_kwargs or {}))
        bridge = Bridgelet(endpoint=fake.endpoint, access_key=fake.access_key, **bridge_kwargs)
        await bridge.start()
        bridgelets.append(bridge)
        return fake, bridge

    yield new
    for fake in fakes:
        await fake.stop()
    for bridge in bridgelets:
        await bridge.stop()
    for fake in fakes:
        assert fake.internal_errors == []
