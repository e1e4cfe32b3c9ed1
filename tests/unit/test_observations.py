"""protocol_observation lines: once per process per fact, never an unknown fact."""

from __future__ import annotations

import base64
import json
import logging

import numpy as np
import pytest

from voicebridge import observations


@pytest.fixture(autouse=True)
def fresh() -> None:
    observations.reset()


def test_each_fact_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voicebridge.protocol")
    assert observations.observe("acs_callback_content_type", value="application/json")
    assert not observations.observe("acs_callback_content_type", value="text/plain")
    (record,) = caplog.records
    head, _, payload = record.getMessage().partition(" ")
    assert head == "protocol_observation"
    assert json.loads(payload) == {"fact": "acs_callback_content_type", "value": "application/json"}
    with pytest.raises(KeyError):
        observations.observe("acs_callbak_content_type", value="x")


def frame(level: float) -> str:
    pcm = (np.sin(np.arange(320) / 3.0) * level * 32767).astype("<i2").tobytes()
    data = {"kind": "AudioData", "audioData": {"data": base64.b64encode(pcm).decode()}}
    return json.dumps(data)


def test_inbound_levels_tell_playback_from_quiet() -> None:
    levels = observations.InboundLevels(window_s=0.2, every=1)
    full = False
    for i in range(10):
        full = levels.feed(frame(0.5 if i % 2 else 0.01), playing=bool(i % 2))
    assert full
    report = levels.report()
    assert report["dbfs_while_agent_plays"] > report["dbfs_otherwise"] + 30
    junk = observations.InboundLevels(window_s=0.1, every=1)
    for text in ("not json", "[]", '{"kind": "AudioData"}'):
        junk.feed(text, playing=False)  # skipped, never raised
    assert not junk.sampled
