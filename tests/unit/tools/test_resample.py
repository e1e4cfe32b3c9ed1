"""``voicebridge resample`` through the real CLI entry point, on generated WAV files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from voicebridge.cli import main
from voicebridge.core.audio import Resampler


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def read_wav(path: Path) -> tuple[int, npt.NDArray[np.int16]]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def signal_16k(n: int = 8005) -> npt.NDArray[np.int16]:
    t = np.arange(n) / 16000
    return np.rint(12000 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.int16)


def one_shot(x: npt.NDArray[np.int16], in_hz: int, out_hz: int) -> npt.NDArray[np.int16]:
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    return np.concatenate([r.feed_array(x), r.flush_array()])


@pytest.mark.parametrize("frame_ms", ["20", "10", "7.5"])
def test_resample_16k_to_24k(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame_ms: str
) -> None:
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    x = signal_16k()
    write_wav(src, x, 16000)
    assert main(["resample", str(src), str(dst), "--rate", "24000", "--frame-ms", frame_ms]) == 0
    rate, y = read_wav(dst)
    assert rate == 24000
    assert y.size == 12008  # ceil(8005 * 3 / 2)
    assert np.array_equal(y, one_shot(x, 16000, 24000))  # framing does not change a sample
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert "8005 samples in, 12008 out" in line
    assert "delay 2.125 ms (51 samples)" in line


def test_resample_24k_to_16k_default_frames(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    x = one_shot(signal_16k(), 16000, 24000)
    write_wav(src, x, 24000)
    assert main(["resample", str(src), str(dst), "--rate", "16000"]) == 0
    rate, y = read_wav(dst)
    assert rate == 16000
    assert y.size == 8006  # ceil(12008 * 2 / 3)
    assert np.array_equal(y, one_shot(x, 24000, 16000))


def test_same_rate_copies_samples(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    x = signal_16k()
    write_wav(src, x, 16000)
    assert main(["resample", str(src), str(dst), "--rate", "16000"]) == 0
    assert np.array_equal(read_wav(dst)[1], x)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_stereo_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "stereo.wav"
    write_wav(src, np.zeros(200, dtype=np.int16), 16000, channels=2)
    assert main(["resample", str(src), str(tmp_path / "o.wav"), "--rate", "24000"]) == 2
    assert "only mono" in _error_line(capsys)
    assert not (tmp_path / "o.wav").exists()


def test_8_bit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "u8.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(100))
    assert main(["resample", str(src), str(tmp_path / "o.wav"), "--rate", "16000"]) == 2
    assert "8-bit samples; only 16-bit PCM" in _error_line(capsys)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.wav"
    assert main(["resample", str(missing), str(tmp_path / "o.wav"), "--rate", "16000"]) == 2
    assert "no such file" in _error_line(capsys)


def test_not_a_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "text.wav"
    src.write_text("hello")
    assert main(["resample", str(src), str(tmp_path / "o.wav"), "--rate", "16000"]) == 2
    assert "not a readable WAV" in _error_line(capsys)


def test_bad_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.wav"
    write_wav(src, signal_16k(100), 16000)
    assert main(["resample", str(src), str(tmp_path / "o.wav"), "--rate", "0"]) == 2
    assert "--rate must be positive" in _error_line(capsys)
