"""Tests for core.audio: the streaming resampler and the 20 ms framer.

Every quality target is checked by computation on real signals (never by timing):
streaming == one-shot, exact sample counts, alias/image rejection, passband
flatness, THD+N, constant latency without bursts, and agreement with soxr VHQ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from voicebridge.core.audio import Framer, Resampler, design_lowpass

I16 = npt.NDArray[np.int16]
F64 = npt.NDArray[np.float64]
G = TypeVar("G", bound=np.generic)

DIRECTIONS = [(16000, 24000), (24000, 16000)]
FULL_SCALE = 32767.0
MINUS_1_DBFS = FULL_SCALE * 10 ** (-1 / 20)


# -- helpers ---------------------------------------------------------------------------


def tone(freq: float, rate: int, seconds: float, amp: float, phase: float = 0.3) -> I16:
    n = np.arange(round(rate * seconds))
    return np.rint(amp * np.sin(2 * np.pi * freq * n / rate + phase)).astype(np.int16)


def one_shot(x: I16, in_hz: int, out_hz: int) -> I16:
    """The whole signal in one feed to a fresh resampler, then flush."""
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    return np.concatenate([r.feed_array(x), r.flush_array()])


def frame_outputs(r: Resampler, x: I16, frame: int) -> list[bytes]:
    return [r.feed(x[i : i + frame].tobytes()) for i in range(0, x.size, frame)]


def as_i16(data: bytes) -> I16:
    return np.frombuffer(data, dtype="<i2")


def fit_sine(y: npt.NDArray[np.floating] | I16, freq: float, rate: int) -> tuple[float, F64]:
    """Least-squares fit of a sine at ``freq`` (plus DC); return (amplitude, residual)."""
    n = np.arange(y.size)
    basis = np.stack(
        [np.cos(2 * np.pi * freq * n / rate), np.sin(2 * np.pi * freq * n / rate), np.ones(n.size)],
        axis=1,
    )
    yf = y.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, yf, rcond=None)
    return float(np.hypot(coef[0], coef[1])), yf - basis @ coef


def peak_dbfs(y: I16 | F64) -> float:
    """Highest spectral line of ``y`` in dB relative to a full-scale sine.

    An all-zero int16 signal reads as -200 dB: whatever it contained rounded away,
    so it was below 1/2 LSB (-96 dBFS).
    """
    w = signal.windows.blackmanharris(y.size)
    spectrum = np.abs(np.fft.rfft(y.astype(np.float64) * w)) * 2 / w.sum()
    return float(20 * np.log10(max(spectrum.max() / FULL_SCALE, 1e-10)))


def textbook(x: I16, in_hz: int, out_hz: int) -> F64:
    """The same filter the slow way: zero-stuff, convolve, decimate, undo the delay.

    Float output (no rounding), so it can show what lies below 1 LSB.
    """
    h, up, down, half = design_lowpass(in_hz, out_hz)
    stuffed = np.zeros(x.size * up)
    stuffed[::up] = x
    n_out = -(-x.size * up // down)
    return np.convolve(stuffed, h)[half::down][:n_out]


def speech_like(rate: int, seconds: float, seed: int) -> I16:
    """Voiced harmonics with a wandering pitch, formants, syllable envelope, some noise.

    Band-limited to 6.5 kHz so a comparison with another resampler tests the passband
    and not the (deliberately different) transition bands.
    """
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    t = np.arange(n) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    ph = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * ph) / k for k in range(1, 40))
    x = np.asarray(voiced) + 0.3 * rng.standard_normal(n)
    for fc, bw in ((700, 150), (1200, 200), (2600, 300)):
        b, a = signal.iirpeak(fc, fc / bw, fs=rate)
        x = x + 2 * signal.lfilter(b, a, x)
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2  # syllables
    sos = signal.butter(12, 6500, fs=rate, output="sos")
    x = signal.sosfiltfilt(sos, x)
    x *= 0.25 * FULL_SCALE / np.abs(x).max()
    return np.rint(x).astype(np.int16)


def band_noise(rate: int, seconds: float, seed: int) -> I16:
    rng = np.random.default_rng(seed)
    sos = signal.butter(12, 6500, fs=rate, output="sos")
    x = signal.sosfiltfilt(sos, rng.standard_normal(round(rate * seconds)))
    return np.rint(x * 0.1 * FULL_SCALE / x.std()).astype(np.int16)


# -- filter design ---------------------------------------------------------------------


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_design_is_symmetric_with_whole_sample_delay(in_hz: int, out_hz: int) -> None:
    h, up, down, half = design_lowpass(in_hz, out_hz)
    assert h.size == 2 * half + 1 == 205
    assert np.array_equal(h, h[::-1])
    assert half % down == 0
    assert h.sum() == pytest.approx(up)
    # Every polyphase branch has unit DC gain (within the stopband level).
    branches = np.r_[h, np.zeros(-h.size % up)].reshape(-1, up).sum(axis=0)
    np.testing.assert_allclose(branches, 1.0, atol=1e-5)


def test_prototype_response() -> None:
    h, up, *_ = design_lowpass(16000, 24000)
    freqs, resp = signal.freqz(h / up, worN=np.arange(0, 24000, 5.0), fs=48000)
    db = 20 * np.log10(np.maximum(np.abs(resp), 1e-12))
    assert np.abs(db[freqs <= 7000]).max() < 0.01
    assert db[freqs >= 8500].max() < -100


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_delay_is_constant_and_small(in_hz: int, out_hz: int) -> None:
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    assert r.delay_ms == pytest.approx(2.125)
    assert r.delay_ms <= 3.0
    assert r.delay_samples == round(r.delay_ms * out_hz / 1000)


# -- streaming is exact ----------------------------------------------------------------


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_streamed_frames_equal_one_shot(in_hz: int, out_hz: int) -> None:
    x = speech_like(in_hz, 1.0, seed=1)
    whole = one_shot(x, in_hz, out_hz)
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    framed = as_i16(b"".join(frame_outputs(r, x, in_hz // 50)) + r.flush())
    assert np.array_equal(framed, whole)


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_polyphase_equals_textbook_filter(in_hz: int, out_hz: int) -> None:
    """The polyphase matrices are exactly the prototype filter: the frequency-domain
    properties of design_lowpass (tested above) are those of the streaming path."""
    x = band_noise(in_hz, 0.5, seed=9)
    ref = np.clip(np.rint(textbook(x, in_hz, out_hz)), -32768, 32767)
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    ours = as_i16(b"".join(frame_outputs(r, x, in_hz // 50)) + r.flush())
    assert ours.size == ref.size
    diff = np.abs(ours - ref)
    # Summation order differs from np.convolve, so a value within an ulp of k + 1/2
    # may round the other way; that is all that may differ.
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= ref.size // 10000


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
@pytest.mark.parametrize("seed", range(4))
def test_random_byte_chunkings_equal_one_shot(in_hz: int, out_hz: int, seed: int) -> None:
    # Chunks of any byte length, odd ones included: the odd byte is carried. float64
    # summation happens per output in the same order whatever the chunking, so the
    # results are identical, not merely within 1 LSB.
    rng = np.random.default_rng(seed)
    x = band_noise(in_hz, 0.5, seed)
    whole = one_shot(x, in_hz, out_hz)
    data = x.tobytes()
    cuts = np.sort(rng.integers(0, len(data), size=rng.integers(1, 200)))
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    out = b"".join(
        r.feed(data[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)], strict=True)
    )
    assert np.array_equal(as_i16(out + r.flush()), whole)


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_long_feeds_equal_frames(in_hz: int, out_hz: int) -> None:
    # Feeds longer than the working buffer are processed in pieces internally.
    x = band_noise(in_hz, 3.0, seed=6)
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    framed = as_i16(b"".join(frame_outputs(r, x, in_hz // 50)) + r.flush())
    assert np.array_equal(as_i16(r.feed(x.tobytes()) + r.flush()), framed)
    assert np.array_equal(one_shot(x, in_hz, out_hz), framed)


def test_byte_at_a_time_equals_one_shot() -> None:
    x = band_noise(16000, 0.02, seed=5)
    r = Resampler(in_hz=16000, out_hz=24000)
    data = x.tobytes()
    out = b"".join(r.feed(data[i : i + 1]) for i in range(len(data)))
    assert np.array_equal(as_i16(out + r.flush()), one_shot(x, 16000, 24000))


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_flush_and_clear_start_a_fresh_stream(in_hz: int, out_hz: int) -> None:
    x = band_noise(in_hz, 0.2, seed=2)
    expected = one_shot(x, in_hz, out_hz)
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    r.feed(band_noise(in_hz, 0.1, seed=3).tobytes() + b"\x01")  # leaves an odd byte too
    r.flush()
    assert (r.samples_in, r.samples_out) == (0, 0)
    assert np.array_equal(as_i16(r.feed(x.tobytes()) + r.flush()), expected)
    r.feed(band_noise(in_hz, 0.1, seed=4).tobytes() + b"\x01")
    r.clear()
    assert (r.samples_in, r.samples_out) == (0, 0)
    assert np.array_equal(as_i16(r.feed(x.tobytes()) + r.flush()), expected)


def test_empty_stream() -> None:
    r = Resampler(in_hz=16000, out_hz=24000)
    assert r.feed(b"") == b""
    assert r.feed(b"\x00") == b""  # half a sample: carried, then dropped at flush
    assert r.flush() == b""
    assert r.clear() == 0


def test_full_scale_overshoot_saturates_instead_of_wrapping() -> None:
    # A full-scale square wave rings past full scale (Gibbs); rint + clip must saturate.
    n = np.arange(16000)
    x = np.where((n // 8) % 2 == 0, 32767, -32768).astype(np.int16)
    y = one_shot(x, 16000, 24000)
    assert y.max() == 32767
    assert y.min() == -32768
    ideal = soxr.resample(x.astype(np.float64), 16000, 24000, "VHQ")
    loud = np.abs(ideal) > 8000
    assert np.array_equal(np.sign(y[loud]), np.sign(ideal[loud]))


def test_invalid_rates() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resampler(in_hz=0, out_hz=16000)


RATE_PAIRS = [
    (16000, 24000),
    (24000, 16000),
    (8000, 16000),
    (16000, 8000),
    (48000, 16000),
    (44100, 16000),
    (16000, 16000),
]


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(RATE_PAIRS),
    chunks=st.lists(st.integers(min_value=0, max_value=2500), max_size=10),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_sample_conservation_any_chunking(
    pair: tuple[int, int], chunks: list[int], seed: int
) -> None:
    """N input samples give exactly ceil(N * out / in) samples once flushed, the same
    samples as one feed of the whole input, and clear() reports exactly what flush()
    would still have produced."""
    in_hz, out_hz = pair
    data = np.random.default_rng(seed).integers(0, 256, sum(chunks), dtype=np.uint8).tobytes()
    flushed = Resampler(in_hz=in_hz, out_hz=out_hz)
    cleared = Resampler(in_hz=in_hz, out_hz=out_hz)
    out = bytearray()
    pos = 0
    for size in chunks:
        piece = data[pos : pos + size]
        pos += size
        got = flushed.feed(piece)
        assert cleared.feed(piece) == got
        out += got
    n_in = len(data) // 2
    assert flushed.samples_in == cleared.samples_in == n_in
    tail = flushed.flush()
    assert cleared.clear() == len(tail) // 2
    out += tail
    if flushed.passthrough:
        assert bytes(out) == data
    else:
        assert len(out) == 2 * -(-n_in * out_hz // in_hz)
        x = np.frombuffer(data[: 2 * n_in], dtype="<i2")
        assert np.array_equal(as_i16(bytes(out)), one_shot(x, in_hz, out_hz))


# -- frequency-domain quality ----------------------------------------------------------

SETTLE_S = 0.05  # skip start-up and flush tails: the filter is 4.25 ms long


def steady(y: npt.NDArray[G], rate: int) -> npt.NDArray[G]:
    skip = round(SETTLE_S * rate)
    return y[skip : y.size - skip]


def alias_dbfs(freq: float) -> float:
    """24k -> 16k: highest spectral line of a -1 dBFS tone above 8 kHz after resampling."""
    x = tone(freq, 24000, 1.0 + 2 * SETTLE_S, MINUS_1_DBFS)
    return peak_dbfs(steady(one_shot(x, 24000, 16000), 16000))


def image_dbfs(freq: float) -> float:
    """16k -> 24k: highest spectral line above 8.5 kHz of a -1 dBFS tone (its image)."""
    x = tone(freq, 16000, 1.0 + 2 * SETTLE_S, MINUS_1_DBFS)
    y = steady(one_shot(x, 16000, 24000), 24000).astype(np.float64)
    w = signal.windows.blackmanharris(y.size)
    spectrum = np.abs(np.fft.rfft(y * w)) * 2 / w.sum()
    freqs = np.fft.rfftfreq(y.size, 1 / 24000)
    return float(20 * np.log10(spectrum[freqs >= 8500].max() / FULL_SCALE))


def alias_dbfs_unrounded(freq: float) -> float:
    """Same as alias_dbfs through the textbook filter in float: the level below 1 LSB."""
    x = tone(freq, 24000, 1.0 + 2 * SETTLE_S, MINUS_1_DBFS)
    return peak_dbfs(steady(textbook(x, 24000, 16000), 16000))


# Frequencies coprime with 24000 (in Hz): a tone like 10 kHz repeats every 12 samples,
# so its own int16 rounding error is a set of in-band lines (2, 4, 6 kHz at -96 dBFS)
# that would be mistaken for aliases. Coprime ones spread that error as noise.
ALIAS_TEST_HZ = [8501, 9001, 9499, 10007, 10501, 11003, 11903]


@pytest.mark.parametrize("freq", ALIAS_TEST_HZ)
def test_aliasing_of_tones_above_8500_hz(freq: float) -> None:
    # In int16 the aliases of a -1 dBFS tone round away entirely (< 1/2 LSB); an
    # alias at -90 dBFS would be a 1 LSB sine and show up here.
    assert alias_dbfs(freq) <= -90
    assert alias_dbfs_unrounded(freq) <= -100


@pytest.mark.parametrize("freq", [4001, 5501, 7001, 7499])  # coprime with 16000, as above
def test_images_above_8500_hz(freq: float) -> None:
    assert image_dbfs(freq) <= -90


PASSBAND_HZ = [*range(100, 7000, 300), 7000]


def passband_gains_db(in_hz: int, out_hz: int) -> F64:
    """Output/input amplitude of -6 dBFS tones up to 7 kHz, by least-squares fits."""
    gains = []
    for f in PASSBAND_HZ:
        x = tone(f, in_hz, 0.2 + 2 * SETTLE_S, FULL_SCALE / 2)
        a_in, _ = fit_sine(steady(x, in_hz), f, in_hz)
        a_out, _ = fit_sine(steady(one_shot(x, in_hz, out_hz), out_hz), f, out_hz)
        gains.append(20 * math.log10(a_out / a_in))
    return np.array(gains)


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_passband_flat_to_7_khz(in_hz: int, out_hz: int) -> None:
    assert np.abs(passband_gains_db(in_hz, out_hz)).max() <= 0.1


def thd_n_db(in_hz: int, out_hz: int, freq: float = 1000.0) -> float:
    """THD+N of a -1 dBFS tone: residual RMS after fitting out the fundamental."""
    x = tone(freq, in_hz, 0.5 + 2 * SETTLE_S, MINUS_1_DBFS)
    amp, residual = fit_sine(steady(one_shot(x, in_hz, out_hz), out_hz), freq, out_hz)
    return float(20 * np.log10(np.sqrt(np.mean(residual**2)) / (amp / math.sqrt(2))))


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_thd_plus_noise_of_1_khz_tone(in_hz: int, out_hz: int) -> None:
    assert thd_n_db(in_hz, out_hz) <= -90


# -- latency and pacing ----------------------------------------------------------------


def chirp(rate: int, seconds: float) -> I16:
    t = np.arange(round(rate * seconds)) / rate
    x = signal.chirp(t, 100, t[-1], 6000) * signal.windows.tukey(t.size, 0.2)
    return np.rint(0.5 * FULL_SCALE * x).astype(np.int16)


def measured_delay(y: I16 | F64, ref: F64) -> float:
    """Lag of ``y`` behind ``ref`` in samples, by cross-correlation (parabolic peak)."""
    c = signal.correlate(y.astype(np.float64), ref, mode="full")
    lags = signal.correlation_lags(y.size, ref.size, mode="full")
    i = int(np.argmax(c))
    a, b, d = c[i - 1], c[i], c[i + 1]
    return float(lags[i] + 0.5 * (a - d) / (a - 2 * b + d))


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_streamed_latency_is_delay_samples_and_output_is_never_bursty(
    in_hz: int, out_hz: int
) -> None:
    """Feed 20 ms frames; each frame yields one full 20 ms frame after the first, and
    the stream, placed in real time, lags the ideally resampled input by exactly
    delay_samples."""
    frame_in, frame_out = in_hz // 50, out_hz // 50
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    x = chirp(in_hz, 0.5)
    outs = frame_outputs(r, x, frame_in)
    assert [len(o) // 2 for o in outs] == [frame_out - r.delay_samples] + [frame_out] * (
        len(outs) - 1
    )
    # Real time: frame k's output is sent when frame k has arrived, so output sample j
    # is heard at the same instant as input time (j + delay_samples) / out_hz.
    timeline = np.r_[np.zeros(r.delay_samples), as_i16(b"".join(outs))]
    ideal = soxr.resample(x.astype(np.float64), in_hz, out_hz, "VHQ")
    assert measured_delay(timeline, ideal) == pytest.approx(r.delay_samples, abs=0.02)


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
def test_latency_is_the_same_in_every_frame(in_hz: int, out_hz: int) -> None:
    """An impulse anywhere in any frame comes out delay_samples after its ideal time."""
    frame_in = in_hz // 50
    r = Resampler(in_hz=in_hz, out_hz=out_hz)
    _, up, down, _ = design_lowpass(in_hz, out_hz)
    for k, offset in [(0, 0), (0, 60), (1, 0), (3, 150), (7, frame_in - down), (12, 96)]:
        x = np.zeros(frame_in * 15, dtype=np.int16)
        at = k * frame_in + offset  # a multiple of `down`: lands on an output sample
        x[at] = 20000
        timeline = np.r_[np.zeros(r.delay_samples), as_i16(b"".join(frame_outputs(r, x, frame_in)))]
        r.clear()
        assert int(np.argmax(timeline)) == at * up // down + r.delay_samples


def test_soxr_stream_is_bursty_on_20_ms_frames() -> None:
    """Why we do not stream through soxr: documented behaviour, asserted.

    soxr.ResampleStream (HQ) fed 20 ms int16 frames 16k -> 24k returns 0 or 734
    samples per 480-sample frame (0, 734, 0, 734, 734, 0, ...) and keeps 512 back
    until ``last=True``; VHQ returns 1650 every third or fourth frame and keeps 900.
    The same frames through Resampler give 429 then exactly 480 per frame.
    """
    x = band_noise(16000, 1.0, seed=7)
    stream = soxr.ResampleStream(16000, 24000, 1, dtype="int16", quality="HQ")
    sizes = [stream.resample_chunk(x[i : i + 320]).size for i in range(0, x.size, 320)]
    held_back = stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True).size
    assert 0 in sizes
    assert max(sizes) > 480
    assert held_back > 240  # > 10 ms of every response arrives only at the flush
    r = Resampler(in_hz=16000, out_hz=24000)
    ours = [len(o) // 2 for o in frame_outputs(r, x, 320)]
    assert set(ours[1:]) == {480}
    assert len(r.flush()) // 2 == r.delay_samples


# -- soxr as the quality reference -----------------------------------------------------


def error_vs_soxr_db(x: I16, in_hz: int, out_hz: int) -> float:
    ours = one_shot(x, in_hz, out_hz).astype(np.float64)
    ref = soxr.resample(x.astype(np.float64), in_hz, out_hz, "VHQ")
    assert ref.size == ours.size
    assert measured_delay(ours, ref) == pytest.approx(0.0, abs=0.02)  # both delay-free
    err = steady(ours - ref, out_hz)  # skip the edges, where soxr's start-up differs
    return float(20 * np.log10(np.std(err) / np.std(steady(ref, out_hz))))


@pytest.mark.parametrize(("in_hz", "out_hz"), DIRECTIONS)
@pytest.mark.parametrize("make", [speech_like, band_noise])
def test_agrees_with_soxr_vhq_in_the_passband(
    in_hz: int, out_hz: int, make: Callable[[int, float, int], I16]
) -> None:
    x = make(in_hz, 1.0, 11)
    assert error_vs_soxr_db(x, in_hz, out_hz) <= -60


# -- pass-through ----------------------------------------------------------------------


def test_passthrough_returns_input_unchanged() -> None:
    r = Resampler(in_hz=16000, out_hz=16000)
    assert r.passthrough
    assert (r.delay_samples, r.delay_ms) == (0, 0.0)
    chunk = band_noise(16000, 0.02, seed=1).tobytes()
    assert r.feed(chunk) is chunk
    assert r.feed(b"\x01") == b"\x01"
    assert (r.samples_in, r.samples_out) == (320, 320)
    assert r.feed(b"\x02") == b"\x02"
    assert (r.samples_in, r.samples_out) == (321, 321)
    assert r.flush() == b""
    assert (r.samples_in, r.samples_out) == (0, 0)
    assert r.clear() == 0
    assert not Resampler(in_hz=16000, out_hz=24000).passthrough


# -- framer ----------------------------------------------------------------------------


def test_framer_exact_frames_and_remainder() -> None:
    f = Framer(frame_bytes=640)
    data = bytes(range(256)) * 10  # 2560 bytes
    assert f.push(data[:1000]) == [data[:640]]
    assert f.pending_bytes == 360
    assert f.push(data[1000:1279]) == []  # odd byte count: just carried
    assert f.pending_bytes == 639
    assert f.push(data[1279:2560]) == [data[640:1280], data[1280:1920], data[1920:2560]]
    assert f.pending_bytes == 0
    assert f.flush() is None
    assert f.padded_bytes == 0


def test_framer_flush_pads_and_clear_drops() -> None:
    f = Framer(frame_bytes=960)
    assert f.push(b"\x01" * 961) == [b"\x01" * 960]
    assert f.flush() == b"\x01" + bytes(959)
    assert f.padded_bytes == 959
    assert f.flush() is None
    f.push(b"\x02" * 100)
    assert f.clear() == 100
    assert f.pending_bytes == 0
    assert f.flush() is None
    assert f.clear() == 0


def test_framer_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        Framer(frame_bytes=0)


@settings(max_examples=200, deadline=None)
@given(
    frame_bytes=st.sampled_from([640, 960, 7]),
    chunks=st.lists(st.binary(max_size=2500), max_size=12),
    clear_at=st.integers(min_value=-1, max_value=12),
)
def test_framer_conserves_bytes_for_any_chunking(
    frame_bytes: int, chunks: list[bytes], clear_at: int
) -> None:
    f = Framer(frame_bytes=frame_bytes)
    frames: list[bytes] = []
    kept = bytearray()  # every byte pushed, minus what clear() reports dropping
    for i, chunk in enumerate(chunks):
        if i == clear_at:
            dropped = f.clear()
            del kept[len(kept) - dropped :]
        frames += f.push(chunk)
        kept += chunk
    last = f.flush()
    if last is not None:
        frames.append(last)
    assert all(len(fr) == frame_bytes for fr in frames)
    assert sum(map(len, frames)) == len(kept) + f.padded_bytes
    assert b"".join(frames) == bytes(kept) + bytes(f.padded_bytes)
    assert f.pending_bytes == 0


@pytest.mark.parametrize(("in_hz", "out_hz"), [(24000, 16000), (16000, 24000)])
def test_uncompensated_stream_is_a_pure_delay(in_hz: int, out_hz: int) -> None:
    """compensate_delay=False: full frames from the first one, the same samples as the
    compensated stream shifted by delay_samples, and output_for() counts them all."""
    x = speech_like(in_hz, 1.0, seed=3)
    frame = in_hz // 50
    comp = Resampler(in_hz=in_hz, out_hz=out_hz)
    pure = Resampler(in_hz=in_hz, out_hz=out_hz, compensate_delay=False)
    chunks = frame_outputs(pure, x, frame)
    assert all(len(c) == 2 * out_hz // 50 for c in chunks)  # the first frame too
    y_pure = as_i16(b"".join(chunks) + pure.flush())
    y_comp = as_i16(b"".join(frame_outputs(comp, x, frame)) + comp.flush())
    d = comp.delay_samples
    assert len(y_pure) == pure.output_for(x.size) == len(y_comp) + d
    assert np.array_equal(y_pure[d:], y_comp)
    assert pure.output_for(0) == 0
    produced = len(pure.feed(x[:100].tobytes())) // 2
    assert pure.clear() == pure.output_for(100) - produced
