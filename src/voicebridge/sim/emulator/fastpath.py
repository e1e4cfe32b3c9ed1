"""The emulator's opt-in speed-ups, for the load generator (``VoiceLiveEmulator(fast=True)``).

At 100 calls the emulator takes 5000 appends a second and sends as many audio deltas. By
default it reads every client message with ``json.loads`` and writes every event with
``json.dumps``: a plain reference implementation. With ``fast=True`` two shortcuts join
in, and each gives exactly what the plain path gives (tests/unit/sim/emulator/test_fastpath.py):

* **Appends are read without a JSON parser** when they have the bridge's spelling
  (:func:`plain_append`) and are **remembered by text** (:class:`FastPath.append`): every
  call plays the same caller recording through the bridge's resampler, so the same texts
  recur (a 50-call load test: under 500 distinct texts in 60 000 appends) and each is
  decoded and measured for the VAD once.
* **Audio deltas are written from a template** cut out of ``json.dumps``'s own output
  (:func:`event_template`, :func:`fill`), without scanning kilobytes of base64 for
  characters to escape.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from voicebridge.sim.emulator.config import APPEND
from voicebridge.sim.emulator.vad import AppendedAudio

APPEND_MEMO_SIZE = 4096  # distinct append texts remembered (FastPath.append)
# An append as json.dumps writes it (the bridge's spelling), cut around the audio.
APPEND_HEAD, APPEND_TAIL = json.dumps({"type": APPEND, "audio": "@"}).split("@")
_ID_MARK, _VALUE_MARK = "@@event_id@@", "@@value@@"


def plain_append(message: str | bytes) -> bytes | None:
    """The PCM of ``message`` when it is exactly ``json.dumps({"type":
    "input_audio_buffer.append", "audio": audio})`` with ``audio`` valid base64 of whole
    PCM16 samples: ``json.loads`` would give just that, so no JSON parser is needed.
    None for anything else: the general path."""
    if not (
        isinstance(message, str)
        and message.startswith(APPEND_HEAD)
        and message.endswith(APPEND_TAIL)
    ):
        return None
    audio = message[len(APPEND_HEAD) : len(message) - len(APPEND_TAIL)]
    try:
        pcm = binascii.a2b_base64(audio, strict_mode=True)  # base64 alphabet only
    except ValueError:  # binascii.Error, or not ASCII
        return None
    return None if len(pcm) % 2 else pcm


def event_template(event: dict[str, Any], field: str) -> tuple[str, str, str]:
    """What the session's ``_send`` writes for ``event``, cut around the event id and
    ``event[field]``: filled in with an id and base64 text (neither needs JSON escaping)
    by :func:`fill` it is exactly what ``json.dumps`` would write."""
    text = json.dumps({"event_id": _ID_MARK, **event, field: _VALUE_MARK})
    head, _, rest = text.partition(_ID_MARK)
    mid, _, tail = rest.partition(_VALUE_MARK)
    if _ID_MARK in tail or _VALUE_MARK in tail or not (head and mid and tail):
        raise ValueError(f"cannot cut a template from {text[:80]!r}")
    return head, mid, tail


def fill(template: tuple[str, str, str], event_id: str, value: str) -> str:
    """The text of the event ``template`` was cut from, with this id and value."""
    head, mid, tail = template
    return f"{head}{event_id}{mid}{value}{tail}"


class FastPath:
    """The shortcuts of one emulator; its append memo is shared by all its sessions."""

    def __init__(self) -> None:
        self._appends: dict[str | bytes, AppendedAudio] = {}

    def append(self, message: str | bytes) -> AppendedAudio | None:
        """The audio of ``message`` if it is a plain append (:func:`plain_append`), else
        None (the session then parses it). Remembered by text, up to
        :data:`APPEND_MEMO_SIZE` texts (then the memo starts again)."""
        audio = self._appends.get(message)
        if audio is None:
            pcm = plain_append(message)
            if pcm is None:
                return None
            if len(self._appends) >= APPEND_MEMO_SIZE:
                self._appends.clear()
            audio = self._appends[message] = AppendedAudio(pcm)
        return audio

    @staticmethod
    def audio_delta_template(ids: dict[str, Any]) -> tuple[str, str, str]:
        """The template of a ``response.audio.delta`` of the content part ``ids``."""
        return event_template({"type": "response.audio.delta", **ids, "delta": ""}, "delta")
