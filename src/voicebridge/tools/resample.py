"""``voicebridge resample IN.wav OUT.wav --rate HZ``: hear what the bridge does to audio.

Streams a mono PCM16 WAV through the production :class:`~voicebridge.core.audio.Resampler`
exactly as a call does (one ``feed`` per frame, ``flush`` at the end) and writes the
result at ``--rate``. The output has exactly ``ceil(n * rate / in_rate)`` samples and
is aligned with the input (the filter delay is compensated), so the two files can be
compared sample by sample.
"""

from __future__ import annotations

import argparse
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

from voicebridge.core.audio import Resampler

__all__ = ["ResampleReport", "UsageError", "configure", "resample_wav", "run"]


class UsageError(Exception):
    """A problem with the files or options; :func:`run` reports it on one line, exit 2."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments to ``parser``."""
    parser.add_argument("input", type=Path, metavar="IN.wav", help="mono 16-bit PCM WAV")
    parser.add_argument("output", type=Path, metavar="OUT.wav", help="where to write the result")
    parser.add_argument("--rate", type=int, required=True, metavar="HZ", help="output rate")
    parser.add_argument(
        "--frame-ms",
        type=float,
        default=20.0,
        metavar="MS",
        help="feed size in milliseconds, as the call's media frames (default: 20)",
    )


@dataclass(frozen=True, slots=True)
class ResampleReport:
    """What :func:`resample_wav` did."""

    in_hz: int
    out_hz: int
    samples_in: int
    samples_out: int
    delay_samples: int
    delay_ms: float


def resample_wav(src: Path, dst: Path, *, rate: int, frame_ms: float = 20.0) -> ResampleReport:
    """Stream ``src`` through a fresh Resampler, one ``feed`` per frame, into ``dst``.

    Raises :class:`UsageError` (before writing anything) for a missing or unusable
    input file or bad options.
    """
    if rate <= 0:
        raise UsageError(f"--rate must be positive, got {rate}")
    try:
        with wave.open(str(src), "rb") as reader:
            return _stream(reader, src, dst, rate=rate, frame_ms=frame_ms)
    except FileNotFoundError:
        raise UsageError(f"{src}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise UsageError(f"{src}: not a readable WAV file ({exc})") from None


def _stream(
    reader: wave.Wave_read, src: Path, dst: Path, *, rate: int, frame_ms: float
) -> ResampleReport:
    if reader.getnchannels() != 1:
        raise UsageError(f"{src}: {reader.getnchannels()} channels; only mono is supported")
    if reader.getsampwidth() != 2:
        bits = 8 * reader.getsampwidth()
        raise UsageError(f"{src}: {bits}-bit samples; only 16-bit PCM is supported")
    in_hz = reader.getframerate()
    frame = round(in_hz * frame_ms / 1000)
    if frame <= 0:
        raise UsageError(f"--frame-ms {frame_ms} is less than one sample at {in_hz} Hz")
    resampler = Resampler(in_hz=in_hz, out_hz=rate)
    samples_out = 0
    try:
        with wave.open(str(dst), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(rate)
            # One feed per frame, as the media pump does, then the end-of-stream flush.
            while chunk := reader.readframes(frame):
                out = resampler.feed(chunk)
                writer.writeframes(out)
                samples_out += len(out) // 2
            samples_in = resampler.samples_in
            out = resampler.flush()
            writer.writeframes(out)
            samples_out += len(out) // 2
    except OSError as exc:
        raise UsageError(f"{dst}: cannot write ({exc.strerror or exc})") from None
    return ResampleReport(
        in_hz=in_hz,
        out_hz=rate,
        samples_in=samples_in,
        samples_out=samples_out,
        delay_samples=resampler.delay_samples,
        delay_ms=resampler.delay_ms,
    )


def run(args: argparse.Namespace) -> int:
    """Resample ``args.input`` to ``args.output``; print one summary line."""
    try:
        r = resample_wav(args.input, args.output, rate=args.rate, frame_ms=args.frame_ms)
    except UsageError as exc:
        print(f"voicebridge resample: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.input} -> {args.output}: {r.in_hz} Hz -> {r.out_hz} Hz, "
        f"{r.samples_in} samples in, {r.samples_out} out, "
        f"delay {r.delay_ms:.3f} ms ({r.delay_samples} samples)"
    )
    return 0
