"""``voicebridge phone`` as a developer runs it on a fresh clone: no .env, no Azure."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_voicebridge_phone_prints_its_url_serves_the_page_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOICELIVE_", "AZURE_VOICELIVE_", "ACS_", "AGENT_", "PHONE_"))
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicebridge", "phone", "--no-open", "--port", "0"],
        cwd=tmp_path,  # no .env here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(
                r"voicebridge phone: (http://127\.0\.0\.1:\d+/phone#token=(\S+))", line
            )
            url = found.group(1) if found else None
        assert url is not None, "".join(lines)
        base, token = url.split("/phone#token=")
        assert httpx.get(f"{base}/phone").status_code == 200
        r = httpx.post(f"{base}/phone/calls", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 201 and r.json()["socket"].startswith("/phone/ws/")
        assert httpx.post(f"{base}/phone/calls").status_code == 401
        status = httpx.get(f"{base}/api/status").json()
        assert status["voicelive_endpoint_host"].startswith("127.0.0.1:")  # the emulator
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    output = "".join(lines) + rest
    assert "Voice Live: the local emulator" in output
    assert "signing keys not fetched" not in output  # the ACS placeholders stay quiet
    assert "Traceback" not in output
