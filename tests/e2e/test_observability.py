"""Observability of whole simulated calls: /metrics, JSON logs with call ids, traces.

* ``/metrics`` during and after a call (fake ACS -> bridge -> emulator, in-process);
* every log line of the bridge's call-handling loggers during the call carries the
  call's ids; every line is JSON; no secret or audio reaches the logs;
* telemetry off: nothing of the OpenTelemetry SDK or Azure Monitor is even imported;
* telemetry on (a connection string to a closed loopback port): the app starts, each
  call is one trace (answer, connect, responses), the metrics are exported — run in
  subprocesses, since ``configure_azure_monitor`` installs process-wide providers.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SPEED
from tests.infra.bicep_text import ROOT
from tests.unit.test_metrics import parse
from voicebridge import logs
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.ports import free_port
from voicebridge.sim.simulate import (
    EMULATOR_KEY,
    SimOptions,
    fake_acs_settings,
    load_caller,
    running_bridge,
)

pytestmark = pytest.mark.e2e

#: The bridge's call-handling loggers: during a call, every line of theirs is the call's.
CALL_LOGGERS = (
    "voicebridge.relay",
    "voicebridge.routes.",
    "voicebridge.calls",
    "voicebridge.acs.",
    "voicebridge.voicelive.",
)
JWT = re.compile(r"eyJ[\w-]{10,}\.[\w-]{10,}\.")
AUDIO = re.compile(r"[A-Za-z0-9+/]{200,}")  # base64 runs: a 20 ms frame is ~850 chars


def is_call_logger(name: str) -> bool:
    return any(name == p or name.startswith(p) for p in CALL_LOGGERS)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Everything logged in this process, as the service writes it (JSON, DEBUG, with
    the library floors of LOG_LEVEL=DEBUG)."""
    logs.install_record_factory()
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logs.hold_back_libraries()
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
        logs.hold_back_libraries()


def value(fams: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    family = fams.get(name) or fams[re.sub(r"_(bucket|sum|count)$", "", name)]
    found = [v for n, lb, v in family["samples"] if n == name and lb == labels]
    assert len(found) == 1, (name, labels, family["samples"])
    return float(found[0])


async def test_metrics_and_json_logs_of_a_simulated_call(
    tmp_path: Path, json_logs: io.StringIO
) -> None:
    url_secret = "call-url-hmac-secret-for-observability"
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=SPEED)
    acs = FakeAcs(speed=SPEED)
    await emulator.start()
    await acs.start()
    caller_pcm, _ = load_caller(SimOptions())
    overrides = {
        "voicelive_endpoint": emulator.endpoint,
        "voicelive_api_key": EMULATOR_KEY,
        "voicelive_model": "gpt-realtime",
        "log_dir": str(tmp_path),
        "call_url_secret": url_secret,
        **fake_acs_settings(acs),
    }
    try:
        async with (
            running_bridge(overrides, speed=SPEED) as (app, base),
            httpx.AsyncClient() as http,
        ):
            before = parse((await http.get(f"{base}/metrics")).text)
            assert value(before, "voicebridge_active_calls") == 0
            call = await acs.place_call(
                webhook_url=f"{base}/api/incoming-call", caller_pcm=caller_pcm.tobytes()
            )
            # live: the call shows up while it is in progress
            active = 0.0
            for _ in range(100):
                active = value(
                    parse((await http.get(f"{base}/metrics")).text), "voicebridge_active_calls"
                )
                if active == 1:
                    break
                await asyncio.sleep(0.05)
            assert active == 1
            await call.wait_ended(60)
            for _ in range(100):  # the relay finishes a moment after ACS hangs up
                if not app.state.ctx.registry.active:
                    break
                await asyncio.sleep(0.025)
            response = await http.get(f"{base}/metrics")
    finally:
        await acs.stop()
        await emulator.stop()

    # ---- /metrics after the call
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = parse(response.text)
    assert value(fams, "voicebridge_active_calls") == 0
    assert value(fams, "voicebridge_calls_total", outcome="agent_hung_up") == 1
    assert value(fams, "voicebridge_calls_not_conserved_total") == 0
    frames_in = value(fams, "voicebridge_media_frames_total", direction="inbound")
    frames_out = value(fams, "voicebridge_media_frames_total", direction="outbound")
    assert frames_in > 1000 and frames_out > 100  # ~30 s of caller, the agent's answers
    assert value(fams, "voicebridge_barge_ins_total") >= 1
    assert value(fams, "voicebridge_stop_audio_sent_total") >= 1
    assert value(fams, "voicebridge_responses_total") >= 3
    assert value(fams, "voicebridge_voicelive_reconnects_total") == 0
    h = "voicebridge_relay_latency_seconds"
    for direction in ("inbound", "outbound"):
        count = value(fams, h + "_count", direction=direction)
        assert count > 100
        assert value(fams, h + "_bucket", direction=direction, le="+Inf") == count
        assert value(fams, h + "_bucket", direction=direction, le="0.025") > 0
        assert 0 < value(fams, h + "_sum", direction=direction) < count * 0.1
    # inbound: every ACS frame sent on to Voice Live was timed, except those that came
    # while the session was still connecting (held, then sent together with the first
    # timed one): up to a second of frames on a loaded machine
    assert value(fams, h + "_count", direction="inbound") >= frames_in - 50
    assert value(fams, "voicebridge_event_loop_lag_seconds_count") > 0

    # ---- the logs
    raw = json_logs.getvalue().splitlines()
    records = [json.loads(line) for line in raw]  # every line is one JSON object
    bridge = [r for r in records if is_call_logger(r["logger"])]
    assert len(bridge) >= 6, [r["message"] for r in bridge]
    assert {"voicebridge.relay", "voicebridge.routes.calls", "voicebridge.routes.media"} <= {
        r["logger"] for r in bridge
    }
    for r in bridge:
        assert r.get("correlation_id") == call.correlation_id, r
        assert r.get("call_connection_id") == call.call_connection_id, r
    # no secret, token or audio
    text = "\n".join(raw)
    url_key = call.answer_request["callbackUri"].rsplit("/", 1)[1]  # type: ignore[index]
    for secret in (EMULATOR_KEY, acs.access_key, url_secret, *url_key.split(".")[2:]):
        assert secret not in text
    assert not JWT.search(text), "a JWT was logged"
    assert not AUDIO.search(text), "base64 audio was logged"


# ---------------------------------------------------------------- telemetry off / on


def fake_connection_string() -> str:
    endpoint = f"http://127.0.0.1:{free_port()}/"
    return (
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        f"IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"
    )


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a child process: the repo importable, Azure Monitor kept offline."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),  # the exporters' retry storage, if any
        "PYTHONPATH": str(ROOT),
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",  # SDK self-telemetry
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",  # no Azure VM metadata probe
    }
    env.update(extra)
    return env


def test_telemetry_off_imports_nothing_and_spans_are_no_ops(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from starlette.testclient import TestClient
        from voicebridge import telemetry
        from voicebridge.app import create_app
        from voicebridge.config import Settings

        settings = Settings(
            _env_file=None,
            voicelive_endpoint="https://res.services.ai.azure.com",
            voicelive_model="gpt-realtime",
            voicelive_api_key="k",
            acs_connection_string="endpoint=https://acs.communication.azure.com/;accesskey=eA==",
            public_base_url="https://bridge.example.com",
            acs_jwt_validation=False,
        )
        app = create_app(settings)
        with TestClient(app) as client:
            status = client.get("/metrics").status_code
        ctx = app.state.ctx
        from opentelemetry import trace
        print(json.dumps({
            "status": status,
            "disabled": ctx.telemetry is telemetry.DISABLED,
            "span": ctx.telemetry.start("call") is telemetry.NO_SPAN,
            "provider": type(trace.get_tracer_provider()).__name__,
            "loaded": sorted(m for m in sys.modules if m.startswith(
                ("azure.monitor", "opentelemetry.sdk", "opentelemetry.instrumentation")
            )),
        }))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {
        "status": 200,
        "disabled": True,
        "span": True,
        "provider": "ProxyTracerProvider",  # nothing configured: the API's no-op
        "loaded": [],
    }


def test_telemetry_on_makes_one_trace_per_call_and_exports_the_metrics(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.e2e.otel_call", str(tmp_path / "sim")],
        cwd=ROOT,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["outcome"] == "agent_hung_up"  # the shipped caller says goodbye
    spans: list[dict[str, Any]] = result["spans"]
    assert all(s["ended"] for s in spans)

    # ---- one trace per call: call -> answer, voicelive.connect, voicelive.response...
    (call,) = [s for s in spans if s["name"] == "call"]
    trace = [s for s in spans if s["trace_id"] == call["trace_id"]]
    children = {s["name"] for s in trace if s["parent_id"] == call["span_id"]}
    assert {"answer", "voicelive.connect", "voicelive.response"} <= children
    assert call["attributes"]["voicebridge.correlation_id"] == result["correlation_id"]
    assert call["attributes"]["voicebridge.call_connection_id"] == result["call_connection_id"]
    assert call["attributes"]["voicebridge.outcome"] == "agent_hung_up"
    assert call["status"] == "UNSET"
    (answer,) = [s for s in trace if s["name"] == "answer"]
    # the Call Automation SDK's own request span nests under our answer span
    assert any(s["parent_id"] == answer["span_id"] for s in trace)
    responses = [s for s in trace if s["name"] == "voicelive.response"]
    assert len(responses) >= 3
    statuses = [r["attributes"].get("voicebridge.response.status") for r in responses]
    assert statuses.count("completed") >= 2 and "cancelled" in statuses
    assert any("barge_in" in r["events"] for r in responses)
    # the webhook request that rang the call roots the trace
    roots = [s for s in trace if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["POST /api/incoming-call"]

    # ---- nothing per frame (the call had > 1500 media frames), no secret in any span
    assert len(spans) < 60, sorted({s["name"] for s in spans})
    payload, mac = result["callback_uri"].rsplit("/", 1)[1].split(".")[2:]  # 1.<kid>.<p>.<m>
    attributes = json.dumps([s["attributes"] for s in spans])
    assert payload not in attributes and mac not in attributes
    assert EMULATOR_KEY not in attributes
    assert "<redacted>" in attributes  # FastAPI's url.path of the callbacks, blanked

    # ---- the same metrics, as observable instruments
    m = result["metrics"]

    def point(name: str, **attrs: str) -> float:
        found = [p["value"] for p in m[name] if p["attributes"] == attrs]
        assert len(found) == 1, (name, attrs, m.get(name))
        return float(found[0])

    assert point("voicebridge_calls", outcome="agent_hung_up") == 1
    assert point("voicebridge_active_calls") == 0
    assert point("voicebridge_media_frames", direction="inbound") > 1000
    assert point("voicebridge_barge_ins") >= 1
    assert point("voicebridge_relay_latency_seconds_count", direction="inbound") > 1000
    p50 = point("voicebridge_relay_latency_seconds", direction="inbound", statistic="p50")
    assert 0 < p50 < 0.05
    assert {"voicebridge_guard_coerced", "voicebridge_voicelive_reconnects"} <= set(m)

    # ---- the call's log lines carry its ids and its trace id
    lines = [json.loads(line) for line in result["log_lines"]]
    of_call = [r for r in lines if is_call_logger(r["logger"])]
    assert len(of_call) >= 5
    for r in of_call:
        assert r["correlation_id"] == result["correlation_id"], r
        if "callback for an ended call" in r["message"]:
            continue  # the echo of the bridge's hang-up: its own request trace, the call's over
        assert r["trace_id"] == call["trace_id"], r


def _get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status), resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.mark.parametrize("entry", ["serve", "uvicorn"])
def test_the_service_starts_with_telemetry_and_logs_json_lines(tmp_path: Path, entry: str) -> None:
    """`voicebridge serve` (the image's CMD) with App Insights configured at a closed port,
    and plain `uvicorn --factory` (whose own log config must be overridden): the app
    starts, serves /metrics, and every line on stderr — uvicorn's included — is JSON."""
    port = free_port()
    if entry == "serve":
        argv = [
            sys.executable,
            "-m",
            "voicebridge",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    else:
        argv = [
            sys.executable, "-m", "uvicorn", "--factory", "voicebridge.app:create_app_from_env",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    env = offline_env(
        tmp_path,
        VOICELIVE_ENDPOINT="https://res.services.ai.azure.com/",
        VOICELIVE_MODEL="gpt-realtime",
        VOICELIVE_API_KEY="test-key-not-logged",
        ACS_CONNECTION_STRING="endpoint=https://acs.communication.azure.com/;accesskey=dGVzdA==",
        ACS_RESOURCE_ID="00000000-0000-0000-0000-000000000000",
        ACS_JWKS_URL=f"http://127.0.0.1:{free_port()}/keys",
        PUBLIC_BASE_URL="https://bridge.example.com",
        LOG_DIR=str(tmp_path / "logs"),
        DRAIN_GRACE_S="1",
        LOG_LEVEL="INFO",
    )
    if entry == "serve":
        env["APPLICATIONINSIGHTS_CONNECTION_STRING"] = fake_connection_string()
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while _get(f"http://127.0.0.1:{port}/healthz") is None:
            if proc.poll() is not None:
                pytest.fail(f"exited {proc.returncode}: {proc.communicate()[1].decode()[-3000:]}")
            assert time.monotonic() < deadline, "no /healthz within 30 s"
            time.sleep(0.1)
        got = _get(f"http://127.0.0.1:{port}/metrics")
        assert got is not None and got[0] == 200
        assert "voicebridge_active_calls 0" in got[1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.decode().splitlines()
    records = [json.loads(line) for line in lines]  # no plain-text line, not one
    loggers = {r["logger"] for r in records}
    assert "uvicorn.error" in loggers and "voicebridge.app" in loggers
    assert any("Application startup complete" in r["message"] for r in records)
    assert ("voicebridge.telemetry" in loggers) is (entry == "serve")
    assert "test-key-not-logged" not in err.decode() and "dGVzdA==" not in err.decode()
