"""``voicebridge serve --workers N``: the supervisor and its workers as real processes.

Two kinds of worker: a stand-in (a few lines of Python that note the signals they get,
in a file per pid), to pin the supervisor's signal handling exactly; and the real
``voicebridge serve --workers 2`` on a free loopback port, with ``EXPOSE_NODE_ID=true`` so
each response names the worker process that served it.

Every process is started in its own session and its whole group is SIGKILLed at the end
of the test, whatever happened. Deadlines are generous and only catch a hang.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebridge.sim.cluster import missing_message
from voicebridge.sim.cluster.binaries import binary
from voicebridge.sim.ports import free_port

pytestmark = pytest.mark.e2e

#: Liveness only: nothing here is expected to take more than a few seconds.
DEADLINE_S = 60.0
#: CALL_URL_KEYS of the workers that share a redis-server.
URL_KEYS = "k1:" + base64.b64encode(b"w" * 32).decode()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process group whose stdout+stderr go to ``tmp_path/<name>.log``; every
    group started is SIGKILLed (what is left of it) at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str], name: str = "out") -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=tmp_path,  # no stray .env
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes]) -> Any:
    """Poll ``check`` until it returns something true; fail if ``proc`` exits first."""
    deadline = time.monotonic() + DEADLINE_S
    while not (found := check()):
        assert proc.poll() is None, f"exited {proc.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S:.0f} s"
        time.sleep(0.05)
    return found


def assert_group_gone(proc: subprocess.Popen[bytes]) -> None:
    """Nothing of ``proc``'s process group is left: no worker outlived the supervisor."""
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LOG_FORMAT": "json",
    }


# ---------------------------------------------------------------- stand-in workers

#: A worker that writes "up", then each signal's name, to ``<folder>/<pid>.log``; it exits
#: on SIGTERM, unless ``<folder>/slow-drain`` exists (then only on SIGINT).
STAND_IN = r"""
import os, signal, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
me = folder / f"{os.getpid()}.log"
def note(sig, frame):
    with me.open("a") as f:
        f.write(signal.Signals(sig).name + "\n")
    if sig == signal.SIGINT or not (folder / "slow-drain").exists():
        raise SystemExit(0)
signal.signal(signal.SIGTERM, note)
signal.signal(signal.SIGINT, note)
me.write_text("up\n")
while True:
    time.sleep(0.5)
"""

SUPERVISOR = """
import sys
from voicebridge import logs
from voicebridge.workers import Supervisor
logs.setup("INFO", "json")
sys.exit(Supervisor([sys.executable, "-c", sys.argv[1], sys.argv[2]], 2).run())
"""


class StandIns:
    """The supervisor over two stand-in workers, and what the workers noted."""

    def __init__(self, spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
        self.folder = tmp_path / "workers"
        self.folder.mkdir()
        self.log = tmp_path / "supervisor.log"
        argv = [sys.executable, "-c", SUPERVISOR, STAND_IN, str(self.folder)]
        self.proc = spawn(argv, base_env(tmp_path), name="supervisor")

    def noted(self) -> dict[int, list[str]]:
        """pid -> what that worker noted so far."""
        found = {}
        for path in self.folder.glob("*.log"):
            found[int(path.stem)] = path.read_text().split()
        return found

    def live(self, n: int, known: Collection[int] = ()) -> list[int]:
        """Wait until ``n`` workers besides ``known`` are up, with no signal noted; their pids."""

        def up() -> list[int]:
            noted = self.noted().items()
            pids = [pid for pid, lines in noted if lines == ["up"] and pid not in known]
            return pids if len(pids) == n else []

        return list(wait_for(f"{n} new worker(s) up", up, self.proc))

    def all_noted(self, name: str, pids: Collection[int]) -> None:
        """Wait until workers ``pids`` have all noted signal ``name``."""
        wait_for(
            f"{name} at workers {pids}",
            lambda: all(name in self.noted()[pid] for pid in pids),
            self.proc,
        )

    def exit_status(self) -> int:
        code = self.proc.wait(timeout=DEADLINE_S)
        assert_group_gone(self.proc)
        return code


def test_sigterm_drains_every_worker_then_the_supervisor_exits_0(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    stand_ins = StandIns(spawn, tmp_path)
    pids = stand_ins.live(2)
    stand_ins.proc.send_signal(signal.SIGTERM)
    assert stand_ins.exit_status() == 0
    assert stand_ins.noted() == {pid: ["up", "SIGTERM"] for pid in pids}
    assert "all workers have exited" in stand_ins.log.read_text()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_while_draining_forwards_sigint(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path, second: signal.Signals
) -> None:
    stand_ins = StandIns(spawn, tmp_path)
    (stand_ins.folder / "slow-drain").touch()
    pids = stand_ins.live(2)
    stand_ins.proc.send_signal(signal.SIGTERM)
    stand_ins.all_noted("SIGTERM", pids)
    stand_ins.proc.send_signal(second)
    assert stand_ins.exit_status() == 0
    assert stand_ins.noted() == {pid: ["up", "SIGTERM", "SIGINT"] for pid in pids}


def test_sigint_forwards_sigint_at_once(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    stand_ins = StandIns(spawn, tmp_path)
    pids = stand_ins.live(2)
    stand_ins.proc.send_signal(signal.SIGINT)
    assert stand_ins.exit_status() == 0
    assert stand_ins.noted() == {pid: ["up", "SIGINT"] for pid in pids}


def test_a_dead_worker_is_restarted_but_not_while_draining(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    stand_ins = StandIns(spawn, tmp_path)
    first, second = stand_ins.live(2)
    os.kill(first, signal.SIGKILL)
    (replacement,) = stand_ins.live(1, known={first, second})
    assert f"(pid {first}) exited unexpectedly (killed by SIGKILL)" in stand_ins.log.read_text()

    (stand_ins.folder / "slow-drain").touch()
    stand_ins.proc.send_signal(signal.SIGTERM)
    stand_ins.all_noted("SIGTERM", [second, replacement])
    os.kill(replacement, signal.SIGKILL)  # dies while draining: not replaced
    wait_for(
        "the supervisor seeing it",
        lambda: f"(pid {replacement}) exited (killed by SIGKILL)" in stand_ins.log.read_text(),
        stand_ins.proc,
    )
    stand_ins.proc.send_signal(signal.SIGINT)
    assert stand_ins.exit_status() == 0
    assert sorted(stand_ins.noted()) == sorted([first, second, replacement])  # no 4th


# ---------------------------------------------------------------- voicebridge serve


def bridge_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A valid configuration that contacts nothing at start-up."""
    return {
        **base_env(tmp_path),
        "VOICELIVE_ENDPOINT": "https://res.services.ai.azure.com/",
        "VOICELIVE_MODEL": "gpt-realtime",
        "VOICELIVE_API_KEY": "test-key",
        "ACS_CONNECTION_STRING": "endpoint=https://acs.communication.azure.com/;accesskey=dGVzdA==",
        "PUBLIC_BASE_URL": "https://bridge.example.com",
        "ACS_JWT_VALIDATION": "false",
        "LOG_DIR": str(tmp_path / "logs"),
        "DRAIN_GRACE_S": "1",
        "EXPOSE_NODE_ID": "true",
        **extra,
    }


def serve_argv(port: int, workers: str = "2") -> list[str]:
    argv = [sys.executable, "-m", "voicebridge", "serve", "--workers", workers]
    return [*argv, "--host", "127.0.0.1", "--port", str(port)]


def node_of(port: int) -> str | None:
    """The node that answered ``GET /healthz`` on a new connection (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.headers.get("x-voicebridge-node") if resp.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def pid_of(node: str) -> int:
    return int(node.rsplit("/", 1)[1])  # "<hostname>/<pid>"


def redis_server(spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> str:
    """A private redis-server on a free loopback port (stopped with the test's groups);
    its ``REDIS_URL`` once it accepts connections."""
    port = free_port()
    argv = [binary("redis-server"), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = spawn(argv, base_env(tmp_path), name="redis")

    def answers() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    wait_for("redis-server", answers, proc)
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.skipif(missing_message() is not None, reason=str(missing_message()))
def test_workers_share_the_port_restart_and_drain(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    shared = {"REDIS_URL": redis_server(spawn, tmp_path), "CALL_URL_KEYS": URL_KEYS}
    proc = spawn(serve_argv(port), bridge_env(tmp_path, **shared))
    seen: set[str] = set()

    def nodes(n: int) -> bool:
        node = node_of(port)
        if node is not None:
            seen.add(node)
        return len(seen) >= n

    wait_for("answers from 2 workers", lambda: nodes(2), proc)
    workers = {pid_of(node) for node in seen}
    assert len(workers) == 2 and all(os.getpgid(pid) == proc.pid for pid in workers)

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for("an answer from a restarted worker", lambda: nodes(3), proc)
    (replacement,) = {pid_of(node) for node in seen} - workers
    assert os.getpgid(replacement) == proc.pid
    log = (tmp_path / "out.log").read_text()
    assert f"(pid {victim}) exited unexpectedly (killed by SIGKILL)" in log

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE_S) == 0
    assert_group_gone(proc)
    assert node_of(port) is None
    log = (tmp_path / "out.log").read_text()
    assert log.count('"message": "drained"') == 2  # each worker drained
    assert "Traceback" not in log


def test_a_configuration_error_is_one_line_and_starts_no_worker(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = bridge_env(tmp_path)
    del env["PUBLIC_BASE_URL"]
    proc = spawn(serve_argv(free_port()), env)
    assert proc.wait(timeout=DEADLINE_S) == 2
    lines = (tmp_path / "out.log").read_text().splitlines()
    assert lines == ["voicebridge: configuration error: PUBLIC_BASE_URL: required but not set"]


def test_workers_without_shared_state_are_refused(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Without REDIS_URL a call whose media socket lands on another worker would fail:
    more than one worker is a configuration error, before any worker starts."""
    proc = spawn(serve_argv(free_port(), "3"), bridge_env(tmp_path))
    assert proc.wait(timeout=DEADLINE_S) == 2
    (line,) = (tmp_path / "out.log").read_text().splitlines()
    assert line.startswith("voicebridge: configuration error: 3 workers need REDIS_URL")


def test_a_taken_port_is_refused_before_any_worker(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        shared = {"REDIS_URL": "redis://127.0.0.1:9/0", "CALL_URL_KEYS": URL_KEYS}
        proc = spawn(serve_argv(taken.getsockname()[1]), bridge_env(tmp_path, **shared))
        assert proc.wait(timeout=DEADLINE_S) == 3
    log = (tmp_path / "out.log").read_text()
    assert "cannot listen on 127.0.0.1" in log and "worker 0 started" not in log
