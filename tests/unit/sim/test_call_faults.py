"""Per-call faults: the emulator faults chosen calls (by their ``x-ms-client-request-id``)
in their first session only; the fake ACS faults one placed call and not the others.

The load test's soak relies on both: a fault must hit the call it was planned for, never
a neighbour, and never the reconnect that recovers from it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.unit.sim.emulator.client import KEY
from tests.unit.sim.fake_acs.bridgelet import until
from tests.unit.sim.test_faults import SocketBridgelet, acs_harness, ramp_pcm
from voicebridge.sim.emulator import CALL_ID_HEADER, VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs

__all__ = ["acs_harness"]  # fixture, re-used

EmuFactory = Callable[..., Awaitable[VoiceLiveEmulator]]


def call_ws(emulator: VoiceLiveEmulator, call_id: str | None, **kwargs: Any) -> Any:
    """A plain websockets client, as the bridge connects for call ``call_id``."""
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?api-version=x"
    headers = {"api-key": KEY} | ({CALL_ID_HEADER: call_id} if call_id else {})
    return ws_connect(url, additional_headers=headers, proxy=None, **kwargs)


async def session_outcome(emulator: VoiceLiveEmulator, call_id: str | None, hold_s: float) -> str:
    """Open a session for ``call_id``, configure it, keep it ``hold_s`` s: ``"dropped"``
    when the server ended it meanwhile, else ``"open"``."""
    async with call_ws(emulator, call_id) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        try:
            async with asyncio.timeout(hold_s):
                while True:
                    await ws.recv()
        except TimeoutError:
            return "open"
        except ConnectionClosed:
            return "dropped"


async def test_a_call_fault_hits_that_calls_first_session_only(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, call_faults={"call-a": {"voicelive-drop": 2.0}})
    # 2 s of media time = 0.2 s of wall time; each session is held 0.5 s.
    assert await session_outcome(emulator, "call-a", 0.5) == "dropped"
    assert await session_outcome(emulator, "call-a", 0.5) == "open"  # its reconnect
    assert await session_outcome(emulator, "call-b", 0.5) == "open"  # another call
    assert await session_outcome(emulator, None, 0.5) == "open"  # no call id at all
    first, again, other, anonymous = emulator.sessions
    assert (first.call_id, first.call_index) == ("call-a", 0)
    assert (again.call_id, again.call_index) == ("call-a", 1)
    assert (other.call_id, other.call_index) == ("call-b", 0)
    assert (anonymous.call_id, anonymous.call_index) == (None, 0)
    assert [name for _, name in first.faults_fired] == ["voicelive-drop"]
    assert first.close_code == 1006
    assert again.faults_fired == other.faults_fired == anonymous.faults_fired == []


async def test_call_faults_keep_the_emulator_wide_ones(emulators: EmuFactory) -> None:
    """``faults=`` still scopes to the emulator's first session; a per-call fault adds
    to it for its own call."""
    emulator = await emulators(
        speed=10,
        faults={"voicelive-close": 2.0},
        call_faults=lambda cid: {"voicelive-drop": 2.0} if cid == "call-b" else None,
    )
    assert await session_outcome(emulator, "call-a", 0.5) == "dropped"  # emulator-wide
    assert await session_outcome(emulator, "call-a", 0.5) == "open"
    assert await session_outcome(emulator, "call-b", 0.5) == "dropped"  # its own
    assert [s.close_code for s in emulator.sessions] == [1011, 1000, 1006]


async def test_a_call_stall_response_holds_that_calls_first_response(
    emulators: EmuFactory,
) -> None:
    emulator = await emulators(speed=10, call_faults={"call-a": {"voicelive-stall-response": 3.0}})

    async def first_response(call_id: str) -> float:
        """Wall seconds from response.create to response.done."""
        async with call_ws(emulator, call_id) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", "session": {}}))
            await ws.send(json.dumps({"type": "response.create"}))
            started = time.monotonic()
            async with asyncio.timeout(10):
                while json.loads(await ws.recv())["type"] != "response.done":
                    pass
            return time.monotonic() - started

    held = await first_response("call-a")
    plain = await first_response("call-b")
    again = await first_response("call-a")
    assert held - plain > 0.25  # 3 s of media time = 0.3 s of wall time
    assert again < held - 0.2
    fired = [[name for _, name in s.faults_fired] for s in emulator.sessions]
    assert fired == [["voicelive-stall-response"], [], []]


async def test_a_call_stall_handshake_stalls_only_that_call(emulators: EmuFactory) -> None:
    emulator = await emulators(call_faults={"call-a": {"voicelive-stall-handshake": None}})
    with pytest.raises(TimeoutError):
        async with call_ws(emulator, "call-a", open_timeout=0.3):
            pass
    assert await session_outcome(emulator, "call-b", 0.1) == "open"
    assert emulator.stalled_handshakes == 1
    assert [s.call_id for s in emulator.sessions] == ["call-b"]


def test_call_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="acs simulator"):
        VoiceLiveEmulator(call_faults={"call-a": {"acs-drop": 1.0}})
    emulator = VoiceLiveEmulator(call_faults=lambda cid: {"nope": None})
    with pytest.raises(ValueError, match="unknown fault"):
        emulator.faults_for_call("call-a")
    assert emulator.faults_for_call(None) == {}
    assert VoiceLiveEmulator().faults_for_call("call-a") == {}


# --------------------------------------------------------------------------- fake ACS


async def test_place_call_faults_apply_to_that_call_only(acs_harness: Any) -> None:
    fake, bridge = await acs_harness({})
    assert isinstance(bridge, SocketBridgelet)
    faulted = await fake.place_call(
        webhook_url=bridge.webhook,
        caller_pcm=ramp_pcm(10),
        faults={"acs-duplicate-callbacks": None},
        call_connection_id="11111111-2222-4333-8444-555555555555",
    )
    plain = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=ramp_pcm(10))
    await faulted.wait_ended(5)
    await plain.wait_ended(5)
    await until(lambda: len(bridge.callbacks) > 0)
    assert faulted.call_connection_id == "11111111-2222-4333-8444-555555555555"
    assert faulted.faults == {"acs-duplicate-callbacks": None} and plain.faults == {}

    def posted(call: Any) -> list[str]:
        return [kind for _, kind, _ in call.callbacks_posted]

    assert posted(faulted)[0::2] == posted(faulted)[1::2]  # every callback twice
    assert len(set(posted(plain))) == len(posted(plain))  # each once
    assert faulted.faults_fired and not plain.faults_fired


async def test_place_call_checks_its_faults_and_id() -> None:
    async with FakeAcs() as fake:
        with pytest.raises(ValueError, match="voicelive simulator"):
            await fake.place_call(
                webhook_url="http://127.0.0.1:9/x",
                caller_pcm=b"",
                faults={"voicelive-drop": 1.0},
            )
    fake = FakeAcs(faults={"acs-close-first": None})
    await fake.start()
    try:
        with pytest.raises(ValueError, match="cannot be combined"):
            await fake.place_call(
                webhook_url="http://127.0.0.1:9/x",
                caller_pcm=b"",
                faults={"acs-disconnect-first": None},
            )
        call = await fake.place_call(
            webhook_url="http://127.0.0.1:9/x", caller_pcm=b"", call_connection_id="same"
        )
        assert call.incoming_call_status == 0  # nobody listens there
        with pytest.raises(ValueError, match="already in use"):
            await fake.place_call(
                webhook_url="http://127.0.0.1:9/x", caller_pcm=b"", call_connection_id="same"
            )
    finally:
        await fake.stop()
