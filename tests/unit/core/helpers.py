"""Helpers for the core's tests: a CallBridge fed as frames and texts, no sockets, no clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.bridge import CallBridge, Rates


def make(**kw: Any) -> CallBridge:
    """A bridge at Voice Live rate ``vl_hz`` (ACS 16 kHz); other keywords are the
    bridge's own configuration groups."""
    rate = kw.pop("vl_hz", 24000)
    cfg = vl.build_session_config(input_hz=rate, output_hz=rate, voice="alloy")
    if kw.pop("interrupt_response", True) is False:
        cfg["turn_detection"]["interrupt_response"] = False
    rates = Rates(voicelive_in_hz=rate, voicelive_out_hz=rate)
    return CallBridge(session_config=cfg, rates=rates, **kw)


def caller_frame(samples: int = 320, value: int = 1000) -> str:
    pcm = np.full(samples, value, dtype="<i2").tobytes()
    return acs.audio_data_message(base64.b64encode(pcm).decode())


def delta(rid: str, samples: int, value: int = 2000) -> dict[str, Any]:
    pcm = np.full(samples, value, dtype="<i2").tobytes()
    return {
        "type": "response.audio.delta",
        "response_id": rid,
        "item_id": "i" + rid,
        "delta": base64.b64encode(pcm).decode(),
    }


def vl_in(b: CallBridge, event: dict[str, Any], now: float = 0.0) -> None:
    """Feed ``event`` as the frame a Voice Live socket delivers."""
    b.receive_voicelive(json.dumps(event).encode(), now)


def sent(b: CallBridge) -> list[dict[str, Any]]:
    """What the bridge queued for Voice Live, parsed back from its wire text."""
    return [json.loads(text) for text in b.voicelive_to_send()]


def start_session(b: CallBridge) -> list[dict[str, Any]]:
    vl_in(b, {"type": "session.created", "session": {"id": "s1"}})
    vl_in(b, {"type": "session.updated", "session": {"id": "s1"}})
    return sent(b)


def counters(b: CallBridge) -> dict[str, Any]:
    """The bridge's counters, as its report shows them."""
    counted: dict[str, Any] = b.report()["counters"]
    return counted
