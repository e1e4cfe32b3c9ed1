"""Turn detection: the VAD finds the shipped caller's segments and decides exactly as the RMS
of each 20 ms block would (the reference written out below), carried across appends.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from azure.ai.voicelive.models import (
    ServerEvent,
)

from tests.unit.sim.emulator.client import (
    WHISPER,
    Factory,
    b64,
    caller_at_24k,
    only_session,
    until,
    update,
    vl_connect,
)
from voicebridge.sim.emulator import AppendedAudio, EnergyVad, vad


class ReferenceVad:
    """The VAD as written before: RMS of every 20 ms block, in numpy, carrying samples."""

    def __init__(self, rate_hz: int, threshold_dbfs: float, silence_ms: int) -> None:
        self.block = rate_hz // 50
        self.threshold = 10 ** (threshold_dbfs / 20.0) * 32768.0
        self.silence_blocks = max(1, math.ceil(silence_ms / 20))
        self.carry = np.zeros(0, dtype=np.int16)
        self.blocks_seen, self.speaking, self.run = 0, False, 0

    def feed(self, samples: np.ndarray) -> list[tuple[str, float]]:
        x = np.concatenate([self.carry, samples])
        n = len(x) // self.block
        self.carry = x[n * self.block :].copy()
        blocks = x[: n * self.block].astype(np.float64).reshape(n, self.block)
        events: list[tuple[str, float]] = []
        for is_loud in np.sqrt(np.mean(blocks**2, axis=1)) > self.threshold:
            self.blocks_seen += 1
            if self.speaking:
                self.run = 0 if is_loud else self.run + 1
                if self.run >= self.silence_blocks:
                    self.speaking, self.run = False, 0
                    events.append(("speech_stopped", self.ms(self.silence_blocks)))
            else:
                self.run = self.run + 1 if is_loud else 0
                if self.run >= 5:  # 100 ms of onset
                    self.speaking, self.run = True, 0
                    events.append(("speech_started", self.ms(5)))
        return events

    def ms(self, blocks_back: int) -> float:
        return 7.0 + (self.blocks_seen - blocks_back) * 20


@pytest.mark.parametrize("rate", [16_000, 24_000])
def test_vad_decides_as_the_rms_of_each_block(rate: int) -> None:
    """Real speech at several levels and thresholds, appended in chunks of every kind of
    size (whole blocks, the bridge's 429 + 51 start, odd ones, empty ones)."""
    speech, _ = caller_at_24k()
    if rate == 16_000:
        speech = speech[::3][: len(speech) // 2]
    rng = random.Random(11)
    turns = 0
    for _trial in range(12):
        level = rng.choice([0.003, 0.02, 0.3, 1.0, 4.0])
        pcm = np.clip(np.round(speech * level), -32768, 32767).astype(np.int16)
        threshold = rng.uniform(-65.0, -25.0)
        silence = rng.choice([100, 500, 900])
        vad = EnergyVad(rate, threshold_dbfs=threshold, silence_ms=silence, base_ms=7.0)
        reference = ReferenceVad(rate, threshold, silence)
        got: list[tuple[str, float]] = []
        expected: list[tuple[str, float]] = []
        pos = 0
        while pos < len(pcm):
            n = rng.choice([rate // 50, 429, 51, 0, 1, rng.randint(2, 3 * rate // 50)])
            chunk = pcm[pos : pos + n]
            pos += n
            got += vad.feed(AppendedAudio(chunk.tobytes()))
            expected += reference.feed(chunk)
            assert (vad.speaking, vad.run, vad.blocks_seen) == (
                reference.speaking,
                reference.run,
                reference.blocks_seen,
            )
        assert got == expected
        turns += sum(kind == "speech_started" for kind, _ in got)
    assert turns > 20  # decisions were made, not just none on both sides


def test_loud_energy_is_the_rms_threshold_exactly() -> None:
    for block in (320, 480):
        for dbfs in np.linspace(-65.0, -25.0, 81):
            threshold = 10 ** (dbfs / 20.0) * 32768.0
            least = vad.loud_energy(block, threshold)
            assert np.sqrt(np.float64(least) / block) > threshold
            assert not np.sqrt(np.float64(least - 1) / block) > threshold


async def test_vad_finds_the_caller_segments(emulators: Factory) -> None:
    """The shipped caller.wav, resampled to 24 kHz, yields one turn per caller.json segment."""
    emulator = await emulators(speed=20)
    pcm, segments = caller_at_24k()
    td = {"type": "server_vad", "create_response": False}
    async with vl_connect(emulator) as conn:
        await update(conn, turn_detection=td, input_audio_transcription=WHISPER)
        chunk = 1_680  # 70 ms: not a multiple of the VAD's 20 ms block
        for at in range(0, len(pcm), chunk):
            await conn.input_audio_buffer.append(audio=b64(pcm[at : at + chunk]))
        events: list[ServerEvent] = []
        while sum(e.type.endswith("transcription.completed") for e in events) < len(segments):
            events += await until(conn, "conversation.item.input_audio_transcription.completed")
    started = [e.audio_start_ms for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e.audio_end_ms for e in events if e.type == "input_audio_buffer.speech_stopped"]
    transcripts = [e.transcript for e in events if e.type.endswith("transcription.completed")]
    assert len(started) == len(stopped) == len(segments)
    for seg, start_ms, end_ms in zip(segments, started, stopped, strict=True):
        assert abs(start_ms - seg["start_s"] * 1000) <= 40, (seg, start_ms)
        assert abs(end_ms - seg["end_s"] * 1000) <= 40, (seg, end_ms)
    assert transcripts == [s["text"] for s in segments]
    session = only_session(emulator)
    assert session.input_samples == len(pcm)
    appends = [r for r in session.received if r["type"] == "input_audio_buffer.append"]
    # One record for the whole run of appends: the payloads kept as a sample count.
    sent = -(-len(pcm) // chunk)
    assert appends == [{"type": "input_audio_buffer.append", "audio": len(pcm), "messages": sent}]
    assert session.received_types["input_audio_buffer.append"] == sent
    assert session.responses == []
    kinds = [kind for _, kind, _ in session.timeline]
    assert kinds.count("input_audio_buffer.speech_started") == len(segments)
