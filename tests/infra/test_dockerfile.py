"""Structural checks of the Dockerfile, and its CMD run for real (no Docker engine here).

The CMD test runs the image's command line locally — the image's ``uvicorn`` replaced
by this virtualenv's ``python -m uvicorn``, bound to 127.0.0.1 on a free port — waits
for ``GET /healthz``, then sends SIGTERM and expects a clean, prompt exit.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
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
from voicebridge.sim.ports import free_port

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


# ---------------------------------------------------------------- the service only

#: What the image must leave out of the package, and what it must keep.
LEFT_OUT = {"src/voicebridge/sim", "src/voicebridge/tools"}
KEPT = ("src/voicebridge/doctor", "src/voicebridge/assets")


def package_install() -> str:
    """The build stage's RUN that installs the package itself."""
    runs = [i.args for i in instructions() if i.stage == 0 and i.keyword == "RUN"]
    found = [r for r in runs if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert len(found) == 1, runs
    return found[0]


def removed_from_src() -> list[str]:
    """The paths that RUN deletes before ``pip install``."""
    run = package_install()
    m = re.match(r"rm -rf ((?:src/[\w/]+\s*)+)&& pip install --no-deps \.", run)
    assert m, f"the package install must start by removing what the image leaves out: {run}"
    return m[1].split()


def test_the_image_leaves_out_the_simulator_and_the_tools() -> None:
    """``voicebridge/sim`` (with its WAVs) and ``voicebridge/tools`` are deleted from the
    copied sources before the package is installed, and the build checks the result."""
    build = [(i.keyword, i.args) for i in instructions() if i.stage == 0]
    copy_src = next(n for n, (k, a) in enumerate(build) if k == "COPY" and "src" in a.split())
    assert build.index(("RUN", package_install())) > copy_src
    removed = removed_from_src()
    assert set(removed) == LEFT_OUT, removed
    assert not any(p.startswith(KEPT) or k.startswith(p) for p in removed for k in KEPT)
    run = package_install()
    checks = run.split("pip install --no-deps .", 1)[1]
    assert "find_spec" in checks and all(
        m in checks for m in ("voicebridge.sim", "voicebridge.tools")
    )
    for command in ("voicebridge --help", "voicebridge serve --help", "voicebridge doctor --help"):
        assert command in checks, command
    # The runtime stage copies the virtualenv only (test_multi_stage_slim_python_311),
    # so nothing of src/ - sim and tools included - reaches it any other way.


#: Run in a child Python whose ``voicebridge`` is the copy in argv[1] (the developer's
#: editable install hidden): with no more arguments, imports every module of the package;
#: else runs the CLI with them.
_IMAGE_PYTHON = """
import importlib, pkgutil, sys
site, src, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [site] + [p for p in sys.path if p not in (site, src)]
import voicebridge
assert voicebridge.__file__.startswith(site), voicebridge.__file__
if not argv:
    walk = pkgutil.walk_packages(voicebridge.__path__, "voicebridge.")
    names = [m.name for m in walk if not m.name.endswith(".__main__")]  # that one runs
    for name in names:
        importlib.import_module(name)
    print(len(names))
else:
    from voicebridge.cli import main
    sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as the image installs it: ``src/voicebridge`` less what the
    Dockerfile removes (package data included, as pyproject.toml lists it)."""
    site = tmp_path_factory.mktemp("image-site")
    shutil.copytree(
        ROOT / "src" / "voicebridge",
        site / "voicebridge",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for path in removed_from_src():
        shutil.rmtree(site / Path(path).relative_to("src"))
    return site


def _image_python(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _IMAGE_PYTHON, str(site), str(ROOT / "src"), *argv],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_service_module_imports_without_the_simulator_and_the_tools(
    image_site: Path,
) -> None:
    assert not (image_site / "voicebridge" / "sim").exists()
    assert (image_site / "voicebridge" / "assets" / "goodbye.wav").is_file()  # relay prompts
    result = _image_python(image_site)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) >= 30  # the service's modules, doctor included


def test_the_image_cli_serves_and_doctors_and_names_what_is_missing(image_site: Path) -> None:
    for argv in (["--help"], ["serve", "--help"], ["doctor", "--help"]):
        result = _image_python(image_site, *argv)
        assert result.returncode == 0, (argv, result.stderr[-2000:])
    listing = _image_python(image_site, "--help").stdout
    assert "simulate" in listing and "(not installed here)" in listing
    for command in ("simulate", "emulator", "fake-acs", "resample", "bench", "loadtest"):
        result = _image_python(image_site, command, "--help")
        assert result.returncode == 2, (command, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"'{command}' is not installed here" in lines[0], lines
        assert "pip install -e '.[dev]'" in lines[0]


# ---------------------------------------------------------------- the CMD, run for real

needs_factory = pytest.mark.skipif(
    not hasattr(app_module, "create_app_from_env"),
    reason="voicebridge.app.create_app_from_env is not there yet (the CMD's app factory)",
)


def _local_command(port: int) -> str:
    """The CMD with this venv's interpreter, on loopback and a free port."""
    argv = shlex.split(cmd_script())
    assert argv[0] == "voicebridge"
    argv = [sys.executable, "-m", "voicebridge", *argv[1:]]
    argv[argv.index("0.0.0.0")] = "127.0.0.1"
    argv[argv.index("8000")] = str(port)
    return "exec " + shlex.join(argv)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    closed = free_port()  # nothing listens: the JWKS prefetch fails fast, offline
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


def _shared_state(workers: str) -> dict[str, str]:
    """More than one worker needs REDIS_URL; nothing listens there (Redis down: each
    worker starts as one node alone, which is all this test needs)."""
    if workers == "1":
        return {}
    keys = "k1:" + base64.b64encode(b"d" * 32).decode()
    return {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "CALL_URL_KEYS": keys}


@needs_factory
@pytest.mark.parametrize("workers", ["1", "2"])
def test_cmd_serves_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path, workers: str) -> None:
    """WORKERS=2: PID 1 is the supervisor; SIGTERM drains both workers, nothing is left."""
    port = free_port()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", _local_command(port)],
        cwd=tmp_path,  # no stray .env
        env=_env(tmp_path, WORKERS=workers, **_shared_state(workers)),
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
        proc.send_signal(signal.SIGTERM)  # `exec` made the server (or supervisor) this process
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
        ["/bin/sh", "-c", _local_command(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=20,
    )
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.decode().splitlines() if "PUBLIC_BASE_URL" in ln]
    assert len(lines) == 1 and "Traceback" not in result.stderr.decode(), result.stderr
