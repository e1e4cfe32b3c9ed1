"""Key presses on the media clock: place_call(dtmf=...), only with enableDtmfTones, never in
the fake's records; caller-script segments with "dtmf"."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.unit.sim.fake_acs.bridgelet import connected_call, tone_frame, until
from voicebridge.core import acs
from voicebridge.sim.fake_acs import FakeAcs, FakeCall, _print_summary, dtmf_from_segments
from voicebridge.sim.fake_acs.keypad import KEY_GAP_S, Keypad, check_dtmf
from voicebridge.sim.simulate import shipped


def keyed(messages: list[str]) -> list[tuple[int, str]]:
    """``(AudioData frames before it, key)`` per DtmfData in the media stream."""
    out: list[tuple[int, str]] = []
    frames = 0
    for text in messages:
        event = acs.parse(text)
        if isinstance(event, acs.AudioData):
            frames += 1
        elif isinstance(event, acs.DtmfData):
            out.append((frames, event.data))
    return out


async def test_keys_are_pressed_on_the_media_clock(
    harness: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.1}, inline_answer=True)
    plan = [(0.1, "12#"), (1.0, "*")]
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"", dtmf=plan)
    await call.wait_ended(5)
    # The caller had nothing to say, yet stayed on until its last key, then 0.1 s more.
    assert call.end_reason == "caller_hung_up"
    # One DtmfData per key, 0.25 s apart, each before the frame of the first tick at or
    # after its press time: 0.1 -> tick 5, 0.35 -> 18, 0.6 -> 30, 1.0 -> 50.
    assert keyed(bridge.media_messages) == [(5, "1"), (18, "2"), (30, "#"), (50, "*")]
    assert call.dtmf_sent == 4
    assert call.dtmf_times_s == [0.1, 0.36, 0.6, 1.0]
    assert call.summary()["dtmf_times_s"] == [0.1, 0.36, 0.6, 1.0]
    assert call.frames_sent == 51 + 5  # up to the last key's tick, then 0.1 s of silence
    tones = [acs.parse(m) for m in bridge.media_messages if '"DtmfData"' in m]
    assert {t.participant_raw_id for t in tones if isinstance(t, acs.DtmfData)} == {
        "4:+15551230001"
    }
    # The keys are nowhere in what the fake records.
    records = json.dumps([call.summary(), call.timeline], default=str)
    assert '"1"' not in records and '"#"' not in records and '"*"' not in records
    assert [d for _, what, d in call.timeline if what == "dtmf"] == [
        {"keys": 1, "tick": 5},
        {"keys": 1, "tick": 18},
        {"keys": 1, "tick": 30},
        {"keys": 1, "tick": 50},
    ]
    _print_summary(call)  # the CLI's report: counts only
    printed = capsys.readouterr().out
    assert "keys pressed: 4" in printed and "#" not in printed and "*" not in printed


async def test_no_keys_without_dtmf_tones_enabled(harness: Any) -> None:
    fake, bridge = await harness(
        fake_kwargs={"hangup_after_audio_s": 0.1}, inline_answer=True, dtmf_tones=False
    )
    call = await fake.place_call(
        webhook_url=bridge.webhook, caller_pcm=tone_frame(1) * 10, dtmf=[(0.0, "123")]
    )
    await call.wait_ended(5)
    assert call.answer_request is not None
    assert call.answer_request["mediaStreamingOptions"]["enableDtmfTones"] is False
    assert keyed(bridge.media_messages) == []
    assert call.dtmf_sent == 0 and call.dtmf_suppressed == 3
    # Nothing keeps the caller on: it hangs up 0.1 s after its audio, as without keys.
    assert call.frames_sent == 10 + 5


async def test_send_dtmf_counts_and_does_not_record_the_key(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await call.send_dtmf("7")
    await until(lambda: keyed(bridge.media_messages) != [])
    assert call.dtmf_sent == 1 and len(call.dtmf_times_s) == 1
    assert [d for _, what, d in call.timeline if what == "dtmf"] == [{"keys": 1}]
    await call.hang_up()


def test_dtmf_from_segments() -> None:
    segments = [
        {"start_s": 1.5, "end_s": 3.0, "text": "My card number is"},
        {"start_s": 4.0, "end_s": 6.0, "text": "", "dtmf": "4111#"},
        {"start_s": 7, "end_s": 8.0, "text": "and zero for a person", "dtmf": "0"},
    ]
    assert dtmf_from_segments(segments) == [(4.0, "4111#"), (7.0, "0")]
    shipped_script = json.loads(shipped("caller.json").read_text())
    assert dtmf_from_segments(shipped_script) == []  # the shipped caller keys nothing
    with pytest.raises(ValueError, match="keypad keys") as err:
        dtmf_from_segments([{"start_s": 1.0, "dtmf": "4111x"}])
    assert "4111" not in str(err.value)  # a bad plan is refused without echoing it
    with pytest.raises(ValueError, match="start_s"):
        dtmf_from_segments([{"dtmf": "1"}])


def test_dtmf_plans_are_checked() -> None:
    assert check_dtmf(None) == [] and check_dtmf([(1, "1")]) == [(1.0, "1")]
    for bad in ([(-1.0, "1")], [(math.nan, "1")], [(1.0, "")], [(1.0, 1)], [("1", "1")]):
        with pytest.raises(ValueError):
            check_dtmf(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtmf"):
        FakeCallFactory().make(dtmf=[(0.0, "1e")])
    pad = Keypad([(0.0, "12"), (0.1, "3")])
    assert pad.planned == 3 and pad.pending == 3
    assert pad.due(0.1) == ["1", "3"] and pad.due(KEY_GAP_S - 0.001) == []
    assert pad.due(KEY_GAP_S) == ["2"] and pad.pending == 0


class FakeCallFactory:
    def make(self, **kwargs: Any) -> Any:
        return FakeCall(
            FakeAcs(),
            caller="+15551230001",
            recipient="+18005550100",
            caller_pcm=b"",
            schema="eventgrid",
            fail_answer=False,
            **kwargs,
        )
