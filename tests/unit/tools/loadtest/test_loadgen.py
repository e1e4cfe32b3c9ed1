"""The callers' audio: the shipped recording looped from each call's phase."""

from __future__ import annotations

import numpy as np

from voicebridge.tools.loadtest import loadgen


def test_call_audio_loops_from_its_phase_on_frame_boundaries() -> None:
    track = np.arange(1000, dtype="<i2")
    pcm = np.frombuffer(loadgen.call_audio(track, 0.15, 16000, 0.5), dtype="<i2")
    assert len(pcm) == 2400  # 0.15 s at 16 kHz: longer than the track, so it loops
    assert pcm[0] == 320  # half way is sample 500, rounded down to a 320-sample frame
    assert pcm[679] == 999 and pcm[680] == 0  # end of the track, then round again
