#!/usr/bin/env python3
"""Generate the shipped audio assets with espeak-ng (run once; the outputs are committed).

Outputs (paths relative to the repository root):

* ``src/voicebridge/assets/apology.wav`` and ``goodbye.wav``: 24 kHz mono PCM16 bridge prompts
  (played to the caller when Voice Live is unavailable / when the bridge ends the call).
* ``src/voicebridge/sim/data/<prompt>.wav`` + ``prompts.json``: the Voice Live emulator's agent
  prompts, 24 kHz mono PCM16, with their exact transcripts and the order the emulator answers in.
* ``src/voicebridge/sim/data/caller.wav`` + ``caller.json``: the default caller recording, 16 kHz
  mono PCM16, with its speech segments (``start_s``, ``end_s``, ``text``, ``barge_in``).

Nothing at run or test time needs espeak-ng: only this script does
(``apt-get install -y espeak-ng``). The output is deterministic for a given espeak-ng build
(1.51 was used); re-running rewrites the files in place.

Processing of every utterance: espeak-ng (22050 Hz) -> trim leading/trailing silence ->
shorten internal pauses longer than a cap -> 5 ms fades -> soxr VHQ resample -> peak
normalise -> int16. Silence between caller segments is digital zero.

The caller recording is laid out against a model of the emulator and the bridge (constants
below), so that turns never overlap agent audio except for the one deliberate barge-in. The
script prints that model as a timing table and fails if any margin is violated.

Usage: ``python scripts/make_audio.py [--root DIR] [--dry-run]``
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import shutil
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

# --- voices and synthesis settings -------------------------------------------------------
ESPEAK = "espeak-ng"
AGENT_VOICE = "en-us+f3"  # US English, female variant 3: "the agent"
CALLER_VOICE = "en-gb+m3"  # British English, male variant 3: clearly a different speaker
CALLER_RATE_WPM = 175  # espeak's default speaking rate
ESPEAK_RATE_RANGE = range(140, 266, 5)  # words/min searched to hit a prompt's target length
AGENT_RATE_HZ = 24_000
CALLER_RATE_HZ = 16_000
AGENT_PEAK_DBFS = -3.0
CALLER_PEAK_DBFS = -4.0

# --- silence shaping ----------------------------------------------------------------------
SHAPE_BLOCK_S = 0.010  # analysis block for trimming / pause shortening
SHAPE_SILENCE_DBFS = -45.0  # a 10 ms block quieter than this is a pause
AGENT_MAX_PAUSE_S = 0.30  # sentence breaks in agent prompts stay natural
CALLER_MAX_PAUSE_S = 0.20  # inside a caller turn: far below the 500 ms end-of-turn silence
FADE_S = 0.005

# --- the timing model the caller recording is laid out against ----------------------------
# Mirrors the emulator's defaults (src/voicebridge/sim/emulator.py) and the bridge's pacing.
GREETING_START_S = 0.20  # greeting response starts this long after the call connects
VAD_SILENCE_S = 0.50  # server VAD ends a turn after this much silence (silence_duration_ms)
VAD_ONSET_S = 0.10  # speech_started fires after ~100 ms of speech energy
RESPONSE_DELAY_S = 0.15  # emulator: end of turn -> response.created
HEAR_DELAY_S = 0.10  # extra delay before the caller hears agent audio (pacing lead, ACS queue)
GENERATION_SPEEDUP = 3.0  # the emulator streams audio ~3x faster than real time
REPLY_GAP_S = 1.50  # caller waits this long after hearing the end of an answer
BARGE_IN_AFTER_S = 2.00  # the caller cuts into the long answer this far into hearing it
TRAILING_AFTER_GOODBYE_S = 0.80  # silence kept after the goodbye answer has been heard
MIN_BARGE_MARGIN_S = 1.0
# Verification of caller pauses with the emulator's VAD blocks and threshold.
VAD_BLOCK_S = 0.020
VAD_THRESHOLD_DBFS = -45.0
MAX_CALLER_PAUSE_S = 0.30


@dataclass(frozen=True)
class Prompt:
    """An agent prompt: ``target_s`` picks the espeak rate (closest duration wins)."""

    name: str
    role: str
    text: str
    target_s: float


PROMPTS = [
    Prompt("greeting", "greeting", "Hello, thanks for calling Contoso. How can I help?", 2.5),
    Prompt(
        "answer_1",
        "answer",
        "Sure. Your order shipped yesterday, and it should arrive on Friday.",
        3.0,
    ),
    Prompt(
        "answer_long",
        "long_answer",
        "Returns are simple. You have thirty days from delivery to send the item back. "
        "Print the free label from your account page, pack the item in its original box, "
        "and drop it off at any post office.",
        8.5,
    ),
    Prompt("answer_short", "short_answer", "Of course. Thirty days, and the label is free.", 2.2),
    Prompt("goodbye", "goodbye", "You're welcome. Have a great day. Goodbye!", 2.0),
    Prompt("answer_2", "answer", "I can help with that. Let me look up your account.", 3.0),
]
# The emulator answers user turns in this order (then cycles). With caller.json: turn 1 ->
# answer_1, turn 2 -> the long answer, the barge-in -> the short answer, goodbye -> goodbye.
ANSWER_CYCLE = ["answer_1", "answer_long", "answer_short", "goodbye", "answer_2"]

BRIDGE_ASSETS = {
    "apology": "Sorry, we can't take your call right now. Please try again later. Goodbye.",
    "goodbye": "We need to end the call now. Thank you for calling. Goodbye.",
}
BRIDGE_ASSET_RATE_WPM = 170
BRIDGE_ASSET_MAX_S = 5.0


@dataclass(frozen=True)
class CallerTurn:
    text: str
    barge_in: bool = False


CALLER_TURNS = [
    CallerTurn("Hi, I'd like to check on my order. It hasn't arrived yet."),
    CallerTurn("Great. And how do returns work, if it doesn't fit?"),
    CallerTurn("Sorry, just the short version please.", barge_in=True),
    CallerTurn("Thanks, goodbye."),
]


# --- synthesis and shaping ------------------------------------------------------------------
def espeak(text: str, voice: str, rate_wpm: int) -> tuple[np.ndarray, int]:
    """Synthesize ``text``; returns float samples in [-1, 1] and espeak's sample rate."""
    raw = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(rate_wpm), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(raw)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0, rate


def block_dbfs(x: np.ndarray, block: int) -> np.ndarray:
    """RMS level in dBFS of consecutive ``block``-sample blocks (the tail is dropped)."""
    n = len(x) // block
    rms = np.sqrt(np.mean(x[: n * block].reshape(n, block) ** 2, axis=1))
    db: np.ndarray = 20.0 * np.log10(np.maximum(rms, 1e-9))
    return db


def shape(x: np.ndarray, rate: int, max_pause_s: float) -> np.ndarray:
    """Trim silence at both ends and shorten internal pauses to ``max_pause_s``.

    A pause is cut in its middle, so the decay of the word before it and the onset of the
    word after it are untouched.
    """
    block = round(SHAPE_BLOCK_S * rate)
    loud = np.flatnonzero(block_dbfs(x, block) > SHAPE_SILENCE_DBFS)
    if len(loud) == 0:
        raise ValueError("espeak produced silence")
    keep_blocks = round(max_pause_s / SHAPE_BLOCK_S)
    pieces = []
    seg_start = loud[0]
    for a, b in itertools.pairwise(loud):
        gap = b - a - 1
        if gap > keep_blocks:
            head = keep_blocks // 2
            pieces.append(x[seg_start * block : (a + 1 + head) * block])
            seg_start = b - (keep_blocks - head)
    pieces.append(x[seg_start * block : (loud[-1] + 1) * block])
    y = np.concatenate(pieces)
    fade = round(FADE_S * rate)
    ramp = np.linspace(0.0, 1.0, fade)
    y[:fade] *= ramp
    y[-fade:] *= ramp[::-1]
    return y


def finish(x: np.ndarray, in_rate: int, out_rate: int, peak_dbfs: float) -> np.ndarray:
    """Resample (soxr VHQ), peak-normalise and convert to int16."""
    y: np.ndarray = soxr.resample(x, in_rate, out_rate, quality="VHQ")
    y *= 10 ** (peak_dbfs / 20.0) / np.max(np.abs(y))
    return np.round(y * 32767.0).astype(np.int16)


def utterance(
    text: str, voice: str, rate_wpm: int, out_rate: int, max_pause_s: float, peak: float
) -> np.ndarray:
    x, rate = espeak(text, voice, rate_wpm)
    return finish(shape(x, rate, max_pause_s), rate, out_rate, peak)


def fit_rate(prompt: Prompt) -> tuple[int, np.ndarray]:
    """The espeak rate whose shaped output is closest to the prompt's target duration."""
    best: tuple[float, int, np.ndarray] | None = None
    for wpm in ESPEAK_RATE_RANGE:
        pcm = utterance(
            prompt.text, AGENT_VOICE, wpm, AGENT_RATE_HZ, AGENT_MAX_PAUSE_S, AGENT_PEAK_DBFS
        )
        err = abs(len(pcm) / AGENT_RATE_HZ - prompt.target_s)
        if best is None or err < best[0]:
            best = (err, wpm, pcm)
    assert best is not None
    return best[1], best[2]


def longest_pause_s(pcm: np.ndarray, rate: int) -> float:
    """Longest internal run of below-threshold blocks, as the emulator's VAD would see it."""
    block = round(VAD_BLOCK_S * rate)
    quiet = block_dbfs(pcm.astype(np.float64) / 32768.0, block) <= VAD_THRESHOLD_DBFS
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * VAD_BLOCK_S


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


# --- caller layout --------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the timing table (all times in seconds from call connect)."""

    who: str
    text: str
    start: float
    end: float
    response: str = ""
    resp_start: float = 0.0  # when the caller starts hearing the answer
    resp_end: float = 0.0
    note: str = ""


def layout(
    turns: list[np.ndarray], durations: dict[str, float]
) -> tuple[list[tuple[float, float]], list[Row], float]:
    """Place the caller turns; returns segment (start, end) times, the table and total length."""
    rows: list[Row] = []
    heard_start = GREETING_START_S + HEAR_DELAY_S
    heard_end = heard_start + durations["greeting"]
    rows.append(
        Row(
            "agent",
            "greeting",
            GREETING_START_S,
            GREETING_START_S,
            "greeting",
            heard_start,
            heard_end,
        )
    )
    segments: list[tuple[float, float]] = []
    long_heard: tuple[float, float] | None = None
    long_streamed_at = 0.0
    for answer_index, (turn, pcm) in enumerate(zip(CALLER_TURNS, turns, strict=True)):
        if turn.barge_in:
            assert long_heard is not None, "a barge-in must follow the long answer"
            start = long_heard[0] + BARGE_IN_AFTER_S
        else:
            start = heard_end + REPLY_GAP_S
        start = round(start * 50) / 50  # on a 20 ms grid, like the frames that carry it
        end = start + len(pcm) / CALLER_RATE_HZ
        segments.append((start, end))
        name = ANSWER_CYCLE[answer_index % len(ANSWER_CYCLE)]
        sent = end + VAD_SILENCE_S + RESPONSE_DELAY_S
        heard_start, heard_end = sent + HEAR_DELAY_S, sent + HEAR_DELAY_S + durations[name]
        row = Row("caller", turn.text, start, end, name, heard_start, heard_end)
        if turn.barge_in:
            assert long_heard is not None
            detected = start + VAD_ONSET_S
            before, after = detected - long_heard[0], long_heard[1] - detected
            row.note = (
                f"barge-in detected at {detected:.2f}: {before:.2f} s into the long answer, "
                f"{after:.2f} s before its end; emulator still streaming it: "
                f"{'yes' if detected < long_streamed_at else 'no'}"
            )
            if min(before, after) <= MIN_BARGE_MARGIN_S:
                raise SystemExit(f"barge-in margin too small: {row.note}")
        if name == "answer_long":
            long_heard = (heard_start, heard_end)
            long_streamed_at = sent + durations[name] / GENERATION_SPEEDUP
            row.note = f"emulator finishes streaming it at ~{long_streamed_at:.2f} s (speed 1)"
        rows.append(row)
    total = heard_end + TRAILING_AFTER_GOODBYE_S
    return segments, rows, round(total * 50) / 50


def print_table(rows: list[Row], total: float) -> None:
    print(f"\nCaller timing model (s from call connect; total {total:.2f} s)")
    print(f"{'who':6} {'start':>6} {'end':>6}  {'response':13} {'heard':>6} {'->':>6}  text")
    for r in rows:
        span = f"{r.start:6.2f} {r.end:6.2f}" if r.who == "caller" else f"{'-':>6} {'-':>6}"
        print(f"{r.who:6} {span}  {r.response:13} {r.resp_start:6.2f} {r.resp_end:6.2f}  {r.text}")
        if r.note:
            print(f"{'':38}  ^ {r.note}")


# --- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    if shutil.which(ESPEAK) is None:
        print(f"{ESPEAK} not found: apt-get install -y espeak-ng", file=sys.stderr)
        return 2
    assets = args.root / "src" / "voicebridge" / "assets"
    data = args.root / "src" / "voicebridge" / "sim" / "data"

    outputs: list[tuple[Path, np.ndarray, int]] = []
    print("Bridge prompts (24 kHz):")
    for name, text in BRIDGE_ASSETS.items():
        pcm = utterance(
            text,
            AGENT_VOICE,
            BRIDGE_ASSET_RATE_WPM,
            AGENT_RATE_HZ,
            AGENT_MAX_PAUSE_S,
            AGENT_PEAK_DBFS,
        )
        seconds = len(pcm) / AGENT_RATE_HZ
        if seconds >= BRIDGE_ASSET_MAX_S:
            raise SystemExit(f"{name}.wav is {seconds:.2f} s, over {BRIDGE_ASSET_MAX_S} s")
        print(f"  {name:12} {seconds:5.2f} s  {text}")
        outputs.append((assets / f"{name}.wav", pcm, AGENT_RATE_HZ))

    print(f"Agent prompts (24 kHz, voice {AGENT_VOICE}):")
    durations: dict[str, float] = {}
    manifest = []
    for prompt in PROMPTS:
        wpm, pcm = fit_rate(prompt)
        seconds = len(pcm) / AGENT_RATE_HZ
        durations[prompt.name] = seconds
        print(
            f"  {prompt.name:12} {seconds:5.2f} s (target {prompt.target_s}, {wpm} wpm)"
            f"  {prompt.text}"
        )
        outputs.append((data / f"{prompt.name}.wav", pcm, AGENT_RATE_HZ))
        manifest.append(
            {
                "name": prompt.name,
                "role": prompt.role,
                "file": f"{prompt.name}.wav",
                "text": prompt.text,
                "samples": len(pcm),
                "duration_s": round(seconds, 3),
                "espeak_voice": AGENT_VOICE,
                "espeak_rate_wpm": wpm,
            }
        )

    turns = [
        utterance(
            t.text,
            CALLER_VOICE,
            CALLER_RATE_WPM,
            CALLER_RATE_HZ,
            CALLER_MAX_PAUSE_S,
            CALLER_PEAK_DBFS,
        )
        for t in CALLER_TURNS
    ]
    for turn, pcm in zip(CALLER_TURNS, turns, strict=True):
        pause = longest_pause_s(pcm, CALLER_RATE_HZ)
        print(
            f"  caller turn {len(pcm) / CALLER_RATE_HZ:5.2f} s, longest internal pause "
            f"{pause * 1000:.0f} ms: {turn.text}"
        )
        if pause >= MAX_CALLER_PAUSE_S:
            raise SystemExit(f"pause of {pause:.2f} s inside a caller turn: {turn.text}")

    segments, rows, total = layout(turns, durations)
    print_table(rows, total)
    caller = np.zeros(round(total * CALLER_RATE_HZ), dtype=np.int16)
    caller_segments = []
    for turn, pcm, (start, end) in zip(CALLER_TURNS, turns, segments, strict=True):
        at = round(start * CALLER_RATE_HZ)
        caller[at : at + len(pcm)] = pcm
        caller_segments.append(
            {
                "start_s": round(start, 3),
                "end_s": round(end, 3),
                "text": turn.text,
                "barge_in": turn.barge_in,
            }
        )
    outputs.append((data / "caller.wav", caller, CALLER_RATE_HZ))

    if args.dry_run:
        return 0
    for path, pcm, rate in outputs:
        write_wav(path, pcm, rate)
    prompts_json = {
        "sample_rate": AGENT_RATE_HZ,
        "generator": "scripts/make_audio.py (espeak-ng)",
        "prompts": manifest,
        "answer_cycle": ANSWER_CYCLE,
    }
    (data / "prompts.json").write_text(json.dumps(prompts_json, indent=2) + "\n")
    (data / "caller.json").write_text(json.dumps(caller_segments, indent=2) + "\n")
    print(f"\nwrote {len(outputs)} WAVs, prompts.json and caller.json under {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
