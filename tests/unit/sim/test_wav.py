"""The simulator's one WAV helper and its one free-port helper."""

from __future__ import annotations

import wave
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soxr

from voicebridge.core.audio import Resampler
from voicebridge.sim.wav import read_wav, resample, write_wav


def _wav(
    path: Path, frames: bytes, *, rate: int = 16000, channels: int = 1, width: int = 2
) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)


def test_written_samples_read_back_from_a_path_bytes_or_a_resource(tmp_path: Path) -> None:
    pcm = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    path = tmp_path / "x.wav"
    write_wav(path, pcm, 24000)
    for source in (path, str(path), path.read_bytes()):
        samples, rate = read_wav(source)
        assert rate == 24000 and samples.dtype == np.int16 and samples.tolist() == pcm.tolist()
    shipped, rate = read_wav(resources.files("voicebridge.sim") / "data" / "caller.wav")
    assert rate == 16000 and len(shipped) > rate


def test_stereo_is_refused_unless_mixed_down_and_8_bit_always(tmp_path: Path) -> None:
    stereo = np.array([[100, 300], [-5, -6], [7, 8]], dtype="<i2")
    path = tmp_path / "stereo.wav"
    _wav(path, stereo.tobytes(), channels=2)
    with pytest.raises(ValueError, match="expected mono, got 2 channels"):
        read_wav(path)
    mixed, rate = read_wav(path, mix_down=True)
    assert rate == 16000 and mixed.tolist() == [200, -6, 8]  # the mean, rounded half to even
    _wav(path, bytes(10), width=1)
    with pytest.raises(ValueError, match="expected 16-bit PCM, got 8-bit"):
        read_wav(path, mix_down=True)


def test_each_resampler_is_the_conversion_its_user_had() -> None:
    t = np.arange(1600) / 16000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    rs = Resampler(in_hz=16000, out_hz=24000)
    bridge = np.frombuffer(rs.feed(pcm.tobytes()) + rs.flush(), dtype="<i2")
    assert resample(pcm, 16000, 24000, how="bridge").tolist() == bridge.tolist()
    plain = np.asarray(soxr.resample(pcm, 16000, 24000), dtype="<i2")
    assert resample(pcm, 16000, 24000, how="soxr").tolist() == plain.tolist()
    y = soxr.resample(pcm.astype(np.float32) / 32768.0, 16000, 24000, quality="VHQ")
    vhq = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    assert resample(pcm, 16000, 24000, how="soxr-vhq").tolist() == vhq.tolist()
    for how in ("bridge", "soxr", "soxr-vhq"):
        assert resample(pcm, 16000, 16000, how=how) is pcm  # type: ignore[arg-type]
        assert len(resample(pcm[:0], 16000, 24000, how=how)) == 0  # type: ignore[arg-type]
