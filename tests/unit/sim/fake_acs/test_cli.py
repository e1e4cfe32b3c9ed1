"""``voicebridge fake-acs``: one call placed from the command line."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from tests.unit.sim.fake_acs.bridgelet import (
    FRAME,
    RATE,
    Bridgelet,
    tone_frame,
)
from voicebridge.sim import fake_acs
from voicebridge.sim.ports import free_port


async def test_cli_places_one_call_and_writes_heard_wav(harness: Any, tmp_path: Path) -> None:
    import argparse
    import wave

    wav_path = tmp_path / "caller.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(tone_frame(300) * 10)
    port = free_port()  # for the CLI's fake, known to the bridge before it runs
    key = base64.b64encode(b"cli-key" * 8).decode()
    bridge = Bridgelet(endpoint=f"http://127.0.0.1:{port}", access_key=key)
    await bridge.start()
    try:
        parser = argparse.ArgumentParser()
        fake_acs.configure(parser)
        args = parser.parse_args(
            [
                "--webhook",
                bridge.webhook,
                "--caller-audio",
                str(wav_path),
                "--port",
                str(port),
                "--speed",
                "20",
                "--access-key",
                key,
                "--hangup-after",
                "0.1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        assert await asyncio.to_thread(fake_acs.run, args) == 0
    finally:
        await bridge.stop()
    with wave.open(str(tmp_path / "out" / "heard.wav"), "rb") as heard:
        assert heard.getframerate() == RATE and heard.getnframes() == 15 * FRAME
