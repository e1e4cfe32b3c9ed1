"""``voicebridge bench``: per-frame CPU cost and added latency of the core's two paths.

* **inbound** — one ACS ``AudioData`` text (20 ms at 16 kHz) through the production
  :class:`~voicebridge.core.bridge.CallBridge` to the wire text of the Voice Live
  append (24 kHz);
* **outbound** — 24 kHz Voice Live audio (one 20 ms ``response.audio.delta`` frame, as
  the socket delivers it) through the bridge to ACS 20 ms ``AudioData`` texts (16 kHz).

Side by side, in the same run and on the same signal, the same paths built on
(a) ``soxr.ResampleStream`` (HQ) and (b) the standard library only (JSON, base64,
linear interpolation). CPU cost is the median over batches of frames
(``time.perf_counter_ns``); *added latency* is the audio a path holds back: after each
frame, input time in minus output time out — its mean and max over the stream — plus
the delay the path puts into the signal itself (cross-correlation against a zero-phase
``soxr`` VHQ reference). A burst-free path adds a constant amount; a bursty one varies
from frame to frame.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import statistics
import time
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np

from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.audio import Framer
from voicebridge.core.bridge import CallBridge, Rates
from voicebridge.core.guard import OutboundGuard
from voicebridge.core.responses import ResponseState

ACS_HZ = 16000
VL_HZ = 24000


def speechlike(seconds: float, rate: int, seed: int = 7) -> np.ndarray:
    """Deterministic, speech-shaped test audio: harmonics with a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    noise = rng.normal(0, 0.05, len(t))
    x = (voice * envelope + noise) / 3.0
    return np.clip(x * 20000, -32768, 32767).astype("<i2")


# --------------------------------------------------------------------------- resampler stand-ins


class _SoxrStream:
    """``soxr.ResampleStream`` HQ behind the feed/flush interface."""

    def __init__(self, in_hz: int, out_hz: int) -> None:
        import soxr

        self._rs = soxr.ResampleStream(in_hz, out_hz, 1, dtype="int16", quality="HQ")

    def feed(self, pcm: bytes) -> bytes:
        out: bytes = self._rs.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes()
        return out


class _StdlibLinear:
    """Linear interpolation with ``array`` only (the no-dependency baseline)."""

    def __init__(self, in_hz: int, out_hz: int) -> None:
        self.step = in_hz / out_hz
        self.pos = 0.0  # position of the next output, in input samples since the last one kept
        self.prev = 0

    def feed(self, pcm: bytes) -> bytes:
        x = array("h")
        x.frombytes(pcm)
        out = array("h")
        prev, pos, step, n = self.prev, self.pos, self.step, len(x)
        # output at fractional input index pos-1 .. between prev (index -1) and x[0]
        while pos < n:
            i = int(pos)
            frac = pos - i
            a = prev if i == 0 else x[i - 1]
            b = x[i]
            out.append(int(a + (b - a) * frac))
            pos += step
        self.pos = pos - n
        self.prev = x[-1] if n else prev
        return out.tobytes()


# --------------------------------------------------------------------------- paths


def _bridge(acs_hz: int = ACS_HZ, vl_hz: int = VL_HZ) -> CallBridge:
    cfg = vl.build_session_config(input_hz=vl_hz, output_hz=vl_hz, voice="alloy")
    bridge = CallBridge(
        session_config=cfg,
        rates=Rates(acs_hz=acs_hz, voicelive_in_hz=vl_hz, voicelive_out_hz=vl_hz),
    )
    bridge.receive_voicelive(b'{"type": "session.created", "session": {"id": "bench"}}')
    bridge.receive_voicelive(b'{"type": "session.updated", "session": {"id": "bench"}}')
    bridge.voicelive_to_send()
    bridge.receive_voicelive(b'{"type": "response.created", "response": {"id": "r"}}')
    return bridge


Paths = tuple[Callable[[str], list[str]], Callable[[bytes], list[str]]]


def production_paths() -> Paths:
    """The real CallBridge: ACS text -> append texts, and delta frame -> ACS texts."""
    up, down = _bridge(), _bridge()
    clock = [0.0]

    def inbound(text: str) -> list[str]:
        up.receive_acs(text)
        return up.voicelive_to_send()

    def outbound(frame: bytes) -> list[str]:
        clock[0] += 0.02
        down.receive_voicelive(frame, clock[0])
        return down.acs_to_send(clock[0] + 3600.0)  # drain: pacing is not CPU

    return inbound, outbound


def baseline_paths(make: Callable[[int, int], Any], *, stdlib: bool = False) -> Paths:
    """The same two paths with another resampler (and, for ``stdlib``, json/base64)."""
    up, down = make(ACS_HZ, VL_HZ), make(VL_HZ, ACS_HZ)
    guard = OutboundGuard(ResponseState())
    guard.check(vl.session_update({}))
    framer = Framer(frame_bytes=ACS_HZ // 50 * 2)

    def inbound(text: str) -> list[str]:
        if stdlib:
            msg = json.loads(text)
            pcm = base64.b64decode(msg["audioData"]["data"])
        else:
            event = acs.parse(text)
            assert isinstance(event, acs.AudioData)
            pcm = event.pcm
        out = up.feed(pcm)
        return guard.append(base64.b64encode(out).decode()) if out else []

    def outbound(frame: bytes) -> list[str]:
        event = json.loads(frame) if stdlib else vl.loads(frame)
        pcm = base64.b64decode(event["delta"])
        out = down.feed(pcm)
        return [
            acs.audio_data(binascii.b2a_base64(f, newline=False).decode()) for f in framer.push(out)
        ]

    return inbound, outbound


# --------------------------------------------------------------------------- measuring


def _frames(seconds: float) -> tuple[list[str], list[bytes], np.ndarray, np.ndarray]:
    caller = speechlike(seconds, ACS_HZ)
    agent = speechlike(seconds, VL_HZ, seed=11)
    acs_texts = [
        acs.audio_data_message(base64.b64encode(caller[i : i + 320].tobytes()).decode())
        for i in range(0, len(caller) - 319, 320)
    ]
    deltas = [
        json.dumps(
            {
                "type": "response.audio.delta",
                "response_id": "r",
                "item_id": "i",
                "delta": base64.b64encode(agent[i : i + 480].tobytes()).decode(),
            }
        ).encode()
        for i in range(0, len(agent) - 479, 480)
    ]
    return acs_texts, deltas, caller, agent


def _cost_us(fn: Callable[[Any], Any], items: list[Any], batch: int = 25) -> float:
    """Median microseconds per item over batches (after a warm-up pass)."""
    for item in items[: batch * 4]:
        fn(item)
    per_item = []
    perf = time.perf_counter_ns
    for start in range(0, len(items) - batch + 1, batch):
        chunk = items[start : start + batch]
        t0 = perf()
        for item in chunk:
            fn(item)
        per_item.append((perf() - t0) / batch / 1000.0)
    return statistics.median(per_item)


def _pcm_of(out: list[Any], key: str) -> bytes:
    if key == "inbound":
        return b"".join(base64.b64decode(vl.append_audio(m) or "") for m in out)
    return b"".join(acs.parse_outbound(t).pcm for t in out)  # type: ignore[union-attr]


def _signal_delay_ms(out: np.ndarray, ref: np.ndarray, out_hz: int, max_lag: int = 200) -> float:
    """Delay of ``out`` against the zero-phase reference ``ref``, by cross-correlation."""
    n = min(len(out), len(ref), out_hz * 2) - 2 * max_lag
    a = out[max_lag : max_lag + n].astype(np.float64)
    scores = [
        float(np.dot(a, ref[max_lag - lag : max_lag - lag + n]))
        for lag in range(-max_lag, max_lag + 1)
    ]
    return 1000.0 * (int(np.argmax(scores)) - max_lag) / out_hz


def _latency_ms(
    fn: Callable[[Any], list[Any]],
    items: list[Any],
    key: str,
    in_hz: int,
    out_hz: int,
    signal: np.ndarray,
) -> tuple[float, float]:
    """(mean, max) added latency in ms: audio held inside the path after each 20 ms
    frame, plus the delay the path puts into the signal itself."""
    import soxr

    held = []
    chunks = []
    t_in = t_out = 0.0
    for item in items:
        pcm = _pcm_of(fn(item), key)
        chunks.append(pcm)
        t_in += 0.020
        t_out += len(pcm) / 2 / out_hz
        held.append((t_in - t_out) * 1000.0)
    steady = held[1:]  # the first frame primes the filter
    out = np.frombuffer(b"".join(chunks), dtype="<i2")
    ref = soxr.resample(signal.astype(np.float64), in_hz, out_hz, "VHQ")
    delay = _signal_delay_ms(out, ref, out_hz)
    return statistics.fmean(steady) + delay, max(steady) + delay


def measure(seconds: float = 20.0) -> dict[str, Any]:
    acs_texts, deltas, caller, agent = _frames(seconds)
    result: dict[str, Any] = {"frames": len(acs_texts), "baselines": {}}
    candidates: dict[str, Callable[[], tuple[Any, Any]]] = {
        "voicebridge": production_paths,
        "soxr_stream_hq": lambda: baseline_paths(_SoxrStream),
        "stdlib_linear": lambda: baseline_paths(_StdlibLinear, stdlib=True),
    }
    for name, make in candidates.items():
        entry: dict[str, Any] = {}
        for key, items, in_hz, out_hz, signal in (
            ("inbound", acs_texts, ACS_HZ, VL_HZ, caller),
            ("outbound", deltas, VL_HZ, ACS_HZ, agent),
        ):
            inbound, outbound = make()
            fn = inbound if key == "inbound" else outbound
            mean_ms, max_ms = _latency_ms(fn, items, key, in_hz, out_hz, signal)
            inbound, outbound = make()
            fn = inbound if key == "inbound" else outbound
            entry[key] = {
                "us_per_frame": round(_cost_us(fn, items), 2),
                "added_latency_ms": round(mean_ms, 3),
                "added_latency_max_ms": round(max_ms, 3),
            }
        if name == "voicebridge":
            result |= entry
        else:
            result["baselines"][name] = entry
    return result


def table(result: dict[str, Any]) -> str:
    rows = [("voicebridge (CallBridge)", result)] + [
        (name, entry) for name, entry in result["baselines"].items()
    ]
    lines = [
        f"{'path':26} {'inbound µs':>11} {'in lat ms':>10} {'in max':>7} "
        f"{'outbound µs':>12} {'out lat ms':>11} {'out max':>8}",
    ]
    for name, e in rows:
        i, o = e["inbound"], e["outbound"]
        lines.append(
            f"{name:26} {i['us_per_frame']:>11.1f} {i['added_latency_ms']:>10.2f} "
            f"{i['added_latency_max_ms']:>7.2f} {o['us_per_frame']:>12.1f} "
            f"{o['added_latency_ms']:>11.2f} {o['added_latency_max_ms']:>8.2f}"
        )
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per path (default 20)")


def run(args: argparse.Namespace) -> int:
    result = measure(args.seconds)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['frames']} frames of 20 ms per path; median CPU per frame, audio held back")
        print(table(result))
    return 0
