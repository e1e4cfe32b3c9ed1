"""Structural checks of the Dockerfile, and its CMD run for real (no Docker engine here).

The CMD test runs the image's command line locally — the image's ``uvicorn`` replaced
by this virtualenv's ``python -m uvicorn``, bound to 127.0.0.1 on a free port — waits
for ``GET /healthz``, then sends SIGTERM and expects a clean, prompt exit.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra.bicep_text import ROOT
from voicebridge import app as app_module
from voicebridge.config import Settings

DOCKERFILE = ROOT / "Dockerfile"
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CONNECTION_STRING|CREDENTIAL", re.I)


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    result: list[Instruction] = []
    stage = -1
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, args.strip(), stage))
    return result


def final_stage() -> list[Instruction]:
    found = instructions()
    last = max(i.stage for i in found)
    return [i for i in found if i.stage == last]


def cmd_script() -> str:
    """The CMD as the shell script the image runs (``sh -c``)."""
    cmds = [i for i in final_stage() if i.keyword == "CMD"]
    assert len(cmds) == 1, "exactly one CMD in the final stage"
    args = cmds[0].args
    if args.startswith("["):
        argv = json.loads(args)
        if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
            return str(argv[2])
        return shlex.join(argv)
    return args  # shell form: Docker runs it with /bin/sh -c


# ---------------------------------------------------------------- structure


def test_multi_stage_slim_python_311() -> None:
    found = instructions()
    froms = [i for i in found if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in found if i.keyword == "ARG"}
    base = froms[-1].args.split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), base)
    assert base == "python:3.11-slim"
    copies = [i.args for i in final_stage() if i.keyword == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "runtime copies from the build stage"
    assert not [c for c in copies if not c.startswith("--from=")], (
        "the runtime stage copies nothing from the build context"
    )


def test_dependencies_are_installed_in_their_own_layer() -> None:
    build = [i for i in instructions() if i.stage == 0]
    order = [(i.keyword, i.args) for i in build if i.keyword in ("COPY", "RUN")]
    first_src = next(n for n, (k, a) in enumerate(order) if k == "COPY" and "src" in a.split())
    before = order[:first_src]
    assert any(k == "COPY" and a.split()[0] == "pyproject.toml" for k, a in before)
    assert any(k == "RUN" and "pip install" in a for k, a in before), (
        "dependencies are installed before the sources are copied"
    )


def test_runs_as_non_root_without_build_tools() -> None:
    final = final_stage()
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert not re.search(r"apt-get|apk add|gcc|build-essential|pip install", runs), runs


def test_no_secrets_in_the_image() -> None:
    secret_env = {
        str(getattr(f.validation_alias, "choices", [n.upper()])[0])
        for n, f in Settings.model_fields.items()
        if "SecretStr" in str(f.annotation)
    }
    for inst in instructions():
        if inst.keyword in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", inst.args) or [inst.args.split()[0]]
            for name in names:
                assert name not in secret_env and not SECRETISH.search(name), f"{inst}"
        if inst.keyword in ("COPY", "ADD"):
            assert ".env" not in inst.args.split(), inst
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", ".dockerignore is an allow-list"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src"}, allowed


def test_healthcheck_uses_python_on_healthz() -> None:
    checks = [i.args for i in final_stage() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and '"python"' in checks[0] and "curl" not in checks[0]


def test_cmd_is_voicebridge_serve() -> None:
    """The image runs `voicebridge serve`: uvicorn with `uvicorn_options` and the draining
    server (plain `uvicorn` would cut live calls on SIGTERM)."""
    assert shlex.split(cmd_script()) == [
        "voicebridge",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    server = pytest.importorskip("voicebridge.server")
    assert hasattr(server, "DrainingServer") and hasattr(server, "uvicorn_options")
    options = server.uvicorn_options(Settings.model_construct())
    assert options["ws_per_message_deflate"] is False and options["proxy_headers"] is True


# ---------------------------------------------------------------- the CMD, run for real

needs_factory = pytest.mark.skipif(
    not hasattr(app_module, "create_app_from_env"),
    reason="voicebridge.app.create_app_from_env is not there yet (the CMD's app factory)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_command(port: int) -> str:
    """The CMD with this venv's interpreter, on loopback and a free port."""
    argv = shlex.split(cmd_script())
    assert argv[0] == "voicebridge"
    argv = [sys.executable, "-m", "voicebridge", *argv[1:]]
    argv[argv.index("0.0.0.0")] = "127.0.0.1"
    argv[argv.index("8000")] = str(port)
    return "exec " + shlex.join(argv)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    closed = _free_port()  # nothing listens: the JWKS prefetch fails fast, offline
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VOICELIVE_ENDPOINT": "https://res.services.ai.azure.com/",
        "VOICELIVE_MODEL": "gpt-realtime",
        "VOICELIVE_API_KEY": "test-key",
        "ACS_CONNECTION_STRING": "endpoint=https://acs.communication.azure.com/;accesskey=dGVzdA==",
        "ACS_RESOURCE_ID": "00000000-0000-0000-0000-000000000000",
        "ACS_JWKS_URL": f"http://127.0.0.1:{closed}/keys",
        "PUBLIC_BASE_URL": "https://bridge.example.com",
        "LOG_DIR": str(tmp_path / "logs"),
        "DRAIN_GRACE_S": "1.5",  # a float, as Settings allows: the CMD must cope
    }
    env.update(extra)
    return env


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@needs_factory
def test_cmd_serves_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", _local_command(port)],
        cwd=tmp_path,  # no stray .env
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while _get(f"http://127.0.0.1:{port}/healthz") != 200:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"exited {proc.returncode}: {err.decode()[-2000:]}")
            assert time.monotonic() < deadline, "no /healthz 200 within 20 s"
            time.sleep(0.1)
        assert _get(f"http://127.0.0.1:{port}/readyz") == 200
        proc.send_signal(signal.SIGTERM)  # `exec` made the server this very process
        _, err = proc.communicate(timeout=10)
        code = proc.returncode
        stderr = err.decode()
        # No calls to drain: readiness false, then uvicorn's shutdown. Depending on the
        # path uvicorn may re-raise SIGTERM (-15); as PID 1 that is ignored (exit 0).
        assert code in (0, -signal.SIGTERM), stderr[-2000:]
        assert _get(f"http://127.0.0.1:{port}/healthz") is None
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing left behind in the process group
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@needs_factory
def test_cmd_exits_with_one_line_on_bad_configuration(tmp_path: Path) -> None:
    env = _env(tmp_path)
    del env["PUBLIC_BASE_URL"]
    result = subprocess.run(
        ["/bin/sh", "-c", _local_command(_free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=20,
    )
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.decode().splitlines() if "PUBLIC_BASE_URL" in ln]
    assert len(lines) == 1 and "Traceback" not in result.stderr.decode(), result.stderr
