"""Fault injection: the ``--fault`` parser, and each fault really happening in the simulators.

The Voice Live faults are driven through the real ``azure.ai.voicelive`` SDK where it shows what
a client sees, and through a plain ``websockets`` client where the exact frames matter (junk
frames, close frames versus a dropped TCP connection). The fake ACS faults use the in-test
``Bridgelet`` of ``fake_acs/bridgelet.py`` (aiohttp server + the real Call Automation SDK).
Clocks run ``speed`` times faster than real time; every server binds 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import numpy as np
import pytest
from aiohttp import WSMsgType, web
from azure.ai.voicelive.aio import ConnectionClosed as VlConnectionClosed
from azure.ai.voicelive.aio import connect
from azure.ai.voicelive.models import ServerEventError, ServerEventSessionCreated
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.unit.sim.emulator.client import KEY, FakeTokenCredential, b64, tone, update, vl_connect
from tests.unit.sim.fake_acs.bridgelet import Bridgelet, until
from voicebridge.core import acs
from voicebridge.sim import fake_acs
from voicebridge.sim.emulator import VoiceLiveEmulator, caller_texts, load_prompts
from voicebridge.sim.fake_acs import FRAME_S, FakeAcs, FakeCall
from voicebridge.sim.faults import FAULT_HELP, FAULTS, check_faults, parse_faults

EmuFactory = Callable[..., Awaitable[VoiceLiveEmulator]]
RATE = 16_000
FRAME = RATE // 50


# --------------------------------------------------------------------------- parsing


def test_parse_faults_good_specs() -> None:
    faults = parse_faults(
        [
            "voicelive-drop=10",
            " VoiceLive-Delay = 250 ",
            "voicelive-error=message_creation_failed",
            "voicelive-stall-handshake",
            "acs-drop=2.5",
            "acs-duplicate-callbacks",
        ]
    )
    assert faults.voicelive == {
        "voicelive-drop": 10.0,
        "voicelive-delay": 250.0,
        "voicelive-error": "message_creation_failed",
        "voicelive-stall-handshake": None,
    }
    assert faults.acs == {"acs-drop": 2.5, "acs-duplicate-callbacks": None}
    assert faults.names[0] == "voicelive-drop" and faults
    assert not parse_faults([])
    assert parse_faults(["voicelive-drop=0"]).voicelive == {"voicelive-drop": 0.0}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["voicelive-explode"], "unknown fault 'voicelive-explode'"),
        ([""], "unknown fault"),
        (["voicelive-drop"], "needs an argument"),
        (["voicelive-drop="], "needs an argument"),
        (["voicelive-drop=soon"], "must be a number"),
        (["acs-drop=-1"], ">= 0"),
        (["acs-drop=inf"], "finite"),
        (["acs-drop=nan"], "finite"),
        (["voicelive-malformed=1"], "takes no argument"),
        (["voicelive-error=bad code!"], "CODE must be"),
        (["acs-drop=1", "acs-drop=2"], "more than once"),
        (["acs-disconnect-first", "acs-close-first"], "cannot be combined"),
    ],
)
def test_parse_faults_rejects_bad_specs(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_faults(specs)


def test_check_faults_and_constructors_validate_mappings() -> None:
    assert check_faults({"voicelive-drop": "3"}, "voicelive") == {"voicelive-drop": 3.0}
    assert check_faults(None, "acs") == {}
    with pytest.raises(ValueError, match="acs simulator"):
        check_faults({"acs-drop": 1.0}, "voicelive")
    with pytest.raises(ValueError, match="unknown fault"):
        VoiceLiveEmulator(faults={"nope": None})
    with pytest.raises(ValueError, match="voicelive simulator"):
        FakeAcs(faults={"voicelive-malformed": None})
    with pytest.raises(ValueError, match="takes no argument"):
        FakeAcs(faults={"acs-close-first": 1.0})


def test_fault_help_lists_every_fault() -> None:
    lines = FAULT_HELP.splitlines()
    for info in FAULTS.values():
        assert any(line.split()[0] == info.usage for line in lines[1:]), info.name
    assert len(lines) == len(FAULTS) + 1


# --------------------------------------------------------------------------- Voice Live


def raw(emulator: VoiceLiveEmulator, **kwargs: Any) -> Any:
    """A plain websockets client (exact frames, close frames) with the api-key header.

    Handshake timeouts are tested with it rather than with the SDK: cancelling the SDK's
    ``__aenter__`` leaks its aiohttp ``ClientSession`` (it only closes it on ``ClientError``).
    """
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?api-version=x"
    return ws_connect(url, additional_headers={"api-key": KEY}, proxy=None, **kwargs)


async def closed(emulator: VoiceLiveEmulator, index: int) -> Any:
    """The emulator's record of session ``index``, once its handler has finished."""
    await asyncio.wait_for(emulator.sessions[index].closed.wait(), 5)
    return emulator.sessions[index]


async def raw_update(ws: ClientConnection, **session: Any) -> None:
    assert json.loads(await ws.recv())["type"] == "session.created"
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    assert json.loads(await ws.recv())["type"] == "session.updated"


async def drain(ws: ClientConnection, within_s: float = 5.0) -> list[str | bytes]:
    """Every frame until the server ends the connection."""
    frames: list[str | bytes] = []
    async with asyncio.timeout(within_s):
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(await ws.recv())
    return frames


async def still_serves(emulator: VoiceLiveEmulator, *, linger_s: float = 0.0) -> None:
    """A new SDK session works normally (a response streams) after the faulty one."""
    async with vl_connect(emulator) as conn:
        await update(conn)
        await conn.send({"type": "response.create"})
        async with asyncio.timeout(5):
            while (event := await conn.recv()).type != "response.done":
                pass
        assert event.response.status == "completed"
        await asyncio.sleep(linger_s)


async def test_voicelive_drop_aborts_the_first_session_only(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-drop": 2.0})
    async with raw(emulator) as ws:
        opened = time.monotonic()
        await raw_update(ws)
        await drain(ws)
        lasted = time.monotonic() - opened
        assert ws.protocol.close_rcvd is None and ws.close_code == 1006  # no close frame
    assert 0.15 < lasted < 1.0
    first = await closed(emulator, 0)
    assert first.close_code == 1006
    [(at, name)] = first.faults_fired
    assert name == "voicelive-drop" and 1.9 <= at < 3.0
    assert ("fault" in {kind for _, kind, _ in first.timeline}) and first.closed.is_set()
    await still_serves(emulator, linger_s=0.3)  # > 2 s of media time: no drop this time
    assert emulator.sessions[1].faults_fired == []


async def test_voicelive_close_sends_1011_to_the_sdk(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-close": 1.0})
    async with raw(emulator) as ws:
        await raw_update(ws)
        await drain(ws)
        assert ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
            1011,
            "server error",
        )
    assert (await closed(emulator, 0)).close_code == 1011
    await still_serves(emulator, linger_s=0.2)
    assert emulator.sessions[1].close_code != 1011


async def test_voicelive_stall_handshake_never_answers(emulators: EmuFactory) -> None:
    emulator = await emulators(faults={"voicelive-stall-handshake": None})
    with pytest.raises(TimeoutError):
        async with raw(emulator, open_timeout=0.3):
            pass
    assert emulator.stalled_handshakes == 1 and emulator.sessions == []
    assert [name for _, name in emulator.faults_fired] == ["voicelive-stall-handshake"]
    # A client that keeps waiting is released by stop() with a 503, promptly.
    waiting = asyncio.create_task(raw(emulator).__aenter__())
    await until(lambda: emulator.stalled_handshakes == 2)
    started = time.monotonic()
    await emulator.stop()
    with pytest.raises(InvalidStatus) as info:
        await waiting
    assert info.value.response.status_code == 503
    assert time.monotonic() - started < 2.0


async def test_voicelive_stall_reconnect_serves_only_the_first(emulators: EmuFactory) -> None:
    emulator = await emulators(faults={"voicelive-stall-reconnect": None})
    async with vl_connect(emulator) as first:
        await update(first)
        with pytest.raises(TimeoutError):
            async with raw(emulator, open_timeout=0.3):
                pass
        await first.send({"type": "session.update", "session": {}})
        assert (await first.recv()).type == "session.updated"  # the first one still works
    assert len(emulator.sessions) == 1 and emulator.stalled_handshakes == 1


async def test_voicelive_stall_response_holds_every_event(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-stall-response": 4.0})
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with raw(emulator) as ws:
        await raw_update(ws)
        await ws.send(json.dumps({"type": "response.create"}))
        audio_ms = 0.0
        async with asyncio.timeout(5):
            while audio_ms < 500:
                event = json.loads(await ws.recv())
                if event["type"] == "response.audio.delta":
                    audio_ms += len(event["delta"]) * 3 / 4 / 2 / 24
        await asyncio.sleep(0.1)  # inside the 0.4 s hold: a client event is processed...
        sent_at = time.monotonic()
        await ws.send(json.dumps({"type": "bogus.event"}))
        async with asyncio.timeout(5):
            while True:
                event = json.loads(await ws.recv())
                arrivals.append((time.monotonic(), event))
                if event["type"] == "response.done":
                    break
    # ...but its error only arrives once the hold is over, in order, and the response completes.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    first_at = arrivals[0][0]
    assert first_at - sent_at > 0.2, "output resumed too early"
    # Nothing else stalls: one hold fired, and no later gap is as long as it was (0.4 s
    # wall; only a machine stalled that long could make one).
    (session,) = emulator.sessions
    assert [name for _, name in session.faults_fired] == ["voicelive-stall-response"]
    assert max(gaps, default=0) < 0.4 + 1.0
    types = [event["type"] for _, event in arrivals]
    assert "error" in types and types[-1] == "response.done"
    assert arrivals[-1][1]["response"]["status"] == "completed"
    ids = [int(event["event_id"].split("_")[1]) for _, event in arrivals]
    assert ids == sorted(ids)
    session = emulator.sessions[0]
    assert [name for _, name in session.faults_fired] == ["voicelive-stall-response"]
    assert session.responses[0]["samples_sent"] == session.responses[0]["samples_total"]


async def test_voicelive_malformed_interleaves_junk_then_goes_on(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-malformed": None})
    frames: list[str | bytes] = []
    async with raw(emulator) as ws:
        await raw_update(ws)
        await ws.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(5):
            while not (
                isinstance(frames[-1:] and frames[-1], str) and "response.done" in frames[-1]
            ):
                frames.append(await ws.recv())
    junk = []
    for i, frame in enumerate(frames):
        assert isinstance(frame, str)
        try:
            parsed = json.loads(frame)
        except ValueError:
            junk.append((i, "not-json"))
            continue
        if isinstance(parsed, list):
            junk.append((i, "json-array"))
        elif "type" not in parsed:
            junk.append((i, "no-type"))
        elif parsed["type"] == "emulator.unknown_event":
            junk.append((i, "unknown-type"))
        elif parsed["type"] == "response.audio.delta" and "!" in parsed["delta"]:
            junk.append((i, "bad-base64-delta"))
            assert parsed["response_id"].startswith("resp_")
    assert [kind for _, kind in junk] == [
        "not-json",
        "json-array",
        "no-type",
        "unknown-type",
        "bad-base64-delta",
    ]
    for i, _ in junk:  # each one right after a real audio delta
        assert json.loads(frames[i - 1])["type"] == "response.audio.delta"
    assert json.loads(frames[-1])["response"]["status"] == "completed"
    assert [n for _, n in emulator.sessions[0].faults_fired] == ["voicelive-malformed"] * 5
    await still_serves(emulator)
    assert emulator.sessions[1].faults_fired == []


async def test_voicelive_error_code_after_session_updated(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-error": "rate_limit_exceeded"})
    async with vl_connect(emulator) as conn:
        await update(conn)
        error = await conn.recv()
        assert isinstance(error, ServerEventError)
        assert (error.error.type, error.error.code) == (
            "invalid_request_error",
            "rate_limit_exceeded",
        )
        await conn.send({"type": "session.update", "session": {}})
        assert (await conn.recv()).type == "session.updated"  # once only; the session goes on
    await still_serves(emulator)
    assert [e["code"] for e in emulator.sessions[1].errors_sent] == []


async def test_voicelive_error_message_creation_failed_stalls_then_closes(
    emulators: EmuFactory,
) -> None:
    emulator = await emulators(
        speed=10, stall_s=0.3, faults={"voicelive-error": "message_creation_failed"}
    )
    async with vl_connect(emulator) as conn:
        await update(conn)
        error = await conn.recv()
        assert isinstance(error, ServerEventError)
        assert error.error.code == "message_creation_failed"
        waited = time.monotonic()
        await conn.send({"type": "response.create"})  # ignored: silence, then 1011
        with pytest.raises(VlConnectionClosed) as info:
            await conn.recv()
        assert info.value.code == 1011
        assert 0.2 < time.monotonic() - waited < 2.0
    assert (await closed(emulator, 0)).close_code == 1011
    await still_serves(emulator)


async def test_voicelive_delay_delays_every_event_in_order(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=2, faults={"voicelive-delay": 400.0})  # 0.2 s wall
    async with raw(emulator) as ws:
        connected = time.monotonic()
        assert json.loads(await ws.recv())["type"] == "session.created"
        assert time.monotonic() - connected > 0.18
        asked = time.monotonic()
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        assert json.loads(await ws.recv())["type"] == "session.updated"
        assert 0.18 < time.monotonic() - asked < 1.0
        await ws.send(json.dumps({"type": "response.create"}))
        ids = []
        async with asyncio.timeout(10):
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                ids.append(int(event["event_id"].split("_")[1]))
    assert ids == sorted(ids) and len(ids) > 10


async def test_voicelive_expire_sets_expires_at_and_closes_1001(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-expire": 3.0})
    for _ in range(2):  # every session
        async with vl_connect(emulator) as conn:
            before = time.time()
            created = await conn.recv()
            assert isinstance(created, ServerEventSessionCreated)
            expires = created.session.expires_at.timestamp()
            assert 0.2 < expires - before < 0.5
            await conn.send({"type": "session.update", "session": {}})
            assert (await conn.recv()).type == "session.updated"
            with pytest.raises(VlConnectionClosed) as info:
                async with asyncio.timeout(3):
                    await conn.recv()
            assert info.value.code == 1001
            assert abs(time.time() - expires) < 0.15
    assert [(await closed(emulator, i)).close_code for i in (0, 1)] == [1001, 1001]
    assert all(s.faults_fired[0][1] == "voicelive-expire" for s in emulator.sessions)


async def test_voicelive_no_session_updated_in_the_first_session(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-no-session-updated": None})
    async with raw(emulator) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        # The configuration was applied: audio is accepted without session_update_required.
        silence = np.zeros(2400, dtype=np.int16)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(silence)}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
    first = emulator.sessions[0]
    assert first.errors_sent == [] and first.input_samples == 2400
    assert [n for _, n in first.faults_fired] == ["voicelive-no-session-updated"]
    await still_serves(emulator)


async def test_voicelive_no_response_for_the_first_turn(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=10, faults={"voicelive-no-response": None})
    turn = np.concatenate([tone(0.6), np.zeros(24_000, dtype=np.int16)])

    async def say_and_collect(conn: Any, linger_s: float) -> list[str]:
        await conn.input_audio_buffer.append(audio=b64(turn))
        seen: list[str] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(linger_s):
                while True:
                    seen.append((await conn.recv()).type)
        return seen

    async with vl_connect(emulator) as conn:
        await update(conn)
        first = await say_and_collect(conn, 0.4)
        assert "input_audio_buffer.committed" in first and "response.created" not in first
        await conn.send({"type": "response.create"})  # a client response still works
        async with asyncio.timeout(5):
            while (await conn.recv()).type != "response.done":
                pass
        second = await say_and_collect(conn, 0.4)
        assert "response.created" in second  # only the first turn is affected
    session = emulator.sessions[0]
    assert [n for _, n in session.faults_fired] == ["voicelive-no-response"]
    assert [r["trigger"] for r in session.responses] == ["client", "turn"]


# --------------------------------------------------------------------------- reconnects


async def next_prompt(conn: Any, emulator: VoiceLiveEmulator) -> str:
    """Ask for a response, wait for its end; the emulator's prompt name for it."""
    await conn.send({"type": "response.create"})
    async with asyncio.timeout(5):
        while (await conn.recv()).type != "response.done":
            pass
    return str(emulator.sessions[-1].responses[-1]["prompt"])


async def test_model_mode_replay_continues_the_conversation(emulators: EmuFactory) -> None:
    """History replayed before the first response: no second greeting, the cycle goes on."""
    emulator = await emulators(speed=20)
    cycle = load_prompts().answer_cycle
    async with vl_connect(emulator) as conn:
        await update(conn, input_audio_transcription={"model": "whisper-1"})
        for role, text in (("assistant", "Hello"), ("user", "Hi"), ("assistant", "Sure")):
            kind = "output_text" if role == "assistant" else "input_text"
            item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
            await conn.send({"type": "conversation.item.create", "item": item})
        assert await next_prompt(conn, emulator) == cycle[1]
        turn = np.concatenate([tone(0.6), np.zeros(24_000, dtype=np.int16)])
        await conn.input_audio_buffer.append(audio=b64(turn))
        async with asyncio.timeout(5):
            while (event := await conn.recv()).type != (
                "conversation.item.input_audio_transcription.completed"
            ):
                pass
        assert event.transcript == caller_texts()[1]  # the replayed user turn counted


async def test_agent_resume_continues_the_conversation(emulators: EmuFactory) -> None:
    emulator = await emulators(speed=20)
    cycle = load_prompts().answer_cycle
    agent = {"agent_name": "bot", "project_name": "proj", "conversation_id": "conv_x"}
    async with connect(credential=FakeTokenCredential(), endpoint=emulator.endpoint, **agent) as c:
        await update(c)
        assert [await next_prompt(c, emulator) for _ in range(2)] == ["greeting", cycle[0]]
    async with connect(credential=FakeTokenCredential(), endpoint=emulator.endpoint, **agent) as c:
        await update(c)
        assert emulator.sessions[1].resumed
        assert await next_prompt(c, emulator) == cycle[1]


# --------------------------------------------------------------------------- fake ACS

SPEED = 20.0


class SocketBridgelet(Bridgelet):
    """A Bridgelet that keeps every media socket apart and can pre-load agent audio."""

    def __init__(self, *, agent_audio_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.agent_audio_s = agent_audio_s
        self.sockets: list[dict[str, Any]] = []

    async def _media(self, request: web.Request) -> web.StreamResponse:
        record: dict[str, Any] = {"headers": dict(request.headers), "messages": [], "close": None}
        self.sockets.append(record)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.events.append(("ws_open", len(self.sockets)))
        if self.agent_audio_s:
            pcm = np.full(int(self.agent_audio_s * RATE), 1000, dtype="<i2").tobytes()
            for at in range(0, len(pcm), 2 * FRAME):
                await ws.send_str(acs.audio_data(b64_bytes(pcm[at : at + 2 * FRAME])))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                record["messages"].append(msg.data)
        record["close"] = ws.close_code
        self.events.append(("ws_closed", ws.close_code))
        return ws


def b64_bytes(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode("ascii")


def ramp_pcm(frames: int) -> bytes:
    """Caller audio whose frame ``i`` holds the value ``i + 1`` (to see which were sent)."""
    return np.repeat(np.arange(1, frames + 1, dtype="<i2"), FRAME).tobytes()


def frame_values(messages: list[str]) -> list[int]:
    values = []
    for m in messages:
        parsed = acs.parse(m)
        if isinstance(parsed, acs.AudioData) and parsed.pcm and any(parsed.pcm):
            values.append(int(np.frombuffer(parsed.pcm, dtype="<i2")[0]))  # not silence
    return values


@pytest.fixture
async def acs_harness() -> AsyncIterator[Callable[..., Awaitable[tuple[FakeAcs, SocketBridgelet]]]]:
    made: list[tuple[FakeAcs, SocketBridgelet]] = []

    async def new(faults: dict[str, Any], **kwargs: Any) -> tuple[FakeAcs, SocketBridgelet]:
        fake = FakeAcs(speed=kwargs.pop("speed", SPEED), hangup_after_audio_s=0.1, faults=faults)
        await fake.start()
        bridge = SocketBridgelet(endpoint=fake.endpoint, access_key=fake.access_key, **kwargs)
        await bridge.start()
        made.append((fake, bridge))
        return fake, bridge

    yield new
    for fake, bridge in made:
        await fake.stop()
        await bridge.stop()
        assert fake.internal_errors == []


async def place(fake: FakeAcs, bridge: Bridgelet, pcm: bytes) -> FakeCall:
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm)
    await asyncio.wait_for(call.media_connected.wait(), 5)
    return call


async def test_acs_drop_aborts_media_and_posts_nothing(acs_harness: Any) -> None:
    fake, bridge = await acs_harness({"acs-drop": 0.5}, agent_audio_s=2.0)
    call = await place(fake, bridge, ramp_pcm(100))
    await until(lambda: bridge.sockets[0]["close"] is not None)
    callbacks_at_drop = len(bridge.callbacks)
    assert bridge.sockets[0]["close"] == 1006  # aborted, no close frame
    values = frame_values(bridge.sockets[0]["messages"])
    assert values == list(range(1, 26))  # 0.5 s of caller audio, then nothing
    [(at, name)] = call.faults_fired
    assert name == "acs-drop" and abs(at - 0.5) < 0.1
    # Nobody hangs up: the fake gives up after MEDIA_DROP_END_S of call time (0.5 s wall).
    await call.wait_ended(10)
    assert call.end_reason == "media_dropped"
    assert len(bridge.callbacks) == callbacks_at_drop  # no callback after the drop
    assert "CallDisconnected" not in bridge.callback_types()
    # The agent audio still queued at the drop was discarded, and counted.
    assert call.samples_flushed_by_drop > 0
    assert call.samples_heard + call.samples_flushed_by_drop == call.received_samples
    assert len(call.heard) == 25 * FRAME


async def test_acs_drop_then_bridge_hang_up_is_media_dropped(acs_harness: Any) -> None:
    fake, bridge = await acs_harness({"acs-drop": 0.2})
    call = await place(fake, bridge, ramp_pcm(100))
    await until(lambda: bool(call.faults_fired))
    await bridge.client.get_call_connection(call.call_connection_id).hang_up(True)
    await call.wait_ended(2)
    assert call.end_reason == "media_dropped"
    assert "CallDisconnected" not in bridge.callback_types()


async def test_acs_reconnect_opens_a_second_socket(acs_harness: Any) -> None:
    fake, bridge = await acs_harness({"acs-reconnect": 0.5}, agent_audio_s=2.0, speed=10.0)
    call = await place(fake, bridge, ramp_pcm(100))  # 2 s of caller audio
    await call.wait_ended(15)
    assert call.end_reason == "caller_hung_up"
    first, second = bridge.sockets
    assert first["close"] == 1006 and call.media_sockets == 2
    for key in ("x-ms-call-connection-id", "x-ms-call-correlation-id"):
        assert first["headers"][key] == second["headers"][key]
    for sock in (first, second):  # each socket carries a valid Call Automation JWT
        token = sock["headers"]["Authorization"].removeprefix("Bearer ")
        key = fake._key.public_key()
        jwt.decode(token, key, algorithms=["RS256"], audience=fake.resource_id)
    assert isinstance(acs.parse(second["messages"][0]), acs.AudioMetadata)
    before, after = frame_values(first["messages"]), frame_values(second["messages"])
    assert before == list(range(1, 26))
    # Caller audio resumes at the current call time: the frames of the gap (0.5 s plus the
    # time the new handshake took) are lost.
    lost_frames = after[0] - 26
    assert 25 <= lost_frames <= 40
    resumed_tick = [d["tick"] for _, what, d in call.timeline if what == "media_connected"][1]
    assert resumed_tick == 25 + lost_frames
    assert after == list(range(after[0], 101))
    assert call.caller_samples_lost_in_gap == lost_frames * FRAME
    assert call.caller_samples_sent + call.caller_samples_lost_in_gap == 100 * FRAME
    # heard stays on the call clock: the gap is silence, one frame per tick.
    assert len(call.heard) == (call.frames_sent + lost_frames) * FRAME
    assert not call.heard[25 * FRAME : (25 + lost_frames) * FRAME].any()
    # The play queue was flushed at the drop; everything received is accounted for.
    flushed_by_stop = sum(n for _, n in call.stop_audio)
    assert call.samples_flushed_by_drop > 0
    assert (
        call.samples_heard + flushed_by_stop + call.samples_flushed_by_drop + call.queued_samples
        == call.received_samples
    )
    timeline = call.timeline
    sockets = [d["socket"] for _, what, d in timeline if what == "media_connected"]
    assert sockets == [1, 2]
    dropped = next(t for t, what, _ in timeline if what == "media_dropped")
    reconnected = [t for t, what, _ in timeline if what == "media_connected"][1]
    assert 0.45 < reconnected - dropped < lost_frames * FRAME_S + 0.05
    assert [n for _, n in call.faults_fired] == ["acs-reconnect"]
    assert bridge.callback_types().count("MediaStreamingStarted") == 1


async def test_acs_duplicate_callbacks(acs_harness: Any) -> None:
    fake, bridge = await acs_harness({"acs-duplicate-callbacks": None})
    call = await place(fake, bridge, ramp_pcm(10))
    await call.wait_ended(5)
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    ids = [event["id"] for _, event in bridge.callbacks]
    types = bridge.callback_types()
    assert len(ids) % 2 == 0 and ids[0::2] == ids[1::2] and types[0::2] == types[1::2]
    assert len(set(ids)) == len(ids) // 2  # each event twice, back to back, same id
    assert {"CallConnected", "ParticipantsUpdated", "MediaStreamingStarted"} <= set(types)
    assert [n for _, n in call.faults_fired] == ["acs-duplicate-callbacks"] * (len(ids) // 2)
    assert len(call.callbacks_posted) == len(ids)


async def test_acs_reorder_callbacks(acs_harness: Any) -> None:
    fake, bridge = await acs_harness({"acs-reorder-callbacks": None})
    call = await place(fake, bridge, ramp_pcm(10))
    await until(lambda: "CallConnected" in bridge.callback_types())
    assert bridge.callback_types()[:3] == [
        "ParticipantsUpdated",
        "MediaStreamingStarted",
        "CallConnected",
    ]
    assert [n for _, n in call.faults_fired] == ["acs-reorder-callbacks"]
    await call.wait_ended(5)


@pytest.mark.parametrize("fault", ["acs-disconnect-first", "acs-close-first"])
async def test_acs_hang_up_order(acs_harness: Any, fault: str) -> None:
    fake, bridge = await acs_harness({fault: None}, speed=5.0)
    call = await place(fake, bridge, ramp_pcm(5))
    await call.wait_ended(5)
    assert call.end_reason == "caller_hung_up"
    order = [
        what
        for what, detail in bridge.events
        if what == "ws_closed" or detail == "CallDisconnected"
    ]
    timeline = call.timeline
    disconnected = next(
        t for t, what, d in timeline if what == "callback" and d["type"] == "CallDisconnected"
    )
    closed = next(t for t, what, _ in timeline if what == "media_closed")
    if fault == "acs-disconnect-first":
        assert order == ["callback", "ws_closed"]
        assert 0.9 < closed - disconnected < 1.5
    else:
        assert order == ["ws_closed", "callback"]
        assert 0.9 < disconnected - closed < 1.5
    assert [n for _, n in call.faults_fired] == [fault]
    assert fake_acs.HANGUP_SPLIT_S == 1.0 and FRAME_S == 0.02
