"""``voicebridge serve`` helpers that need no socket, and which process runs what
(``--workers``). The processes themselves: tests/e2e/test_workers.py."""

from __future__ import annotations

import argparse
import base64
import gc
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebridge import logs, server, workers
from voicebridge.clock import RealClock


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_start_up_objects_and_enlarges_the_young_generation() -> None:
    _, gen1, gen2 = gc.get_threshold()
    survivor = [object()]  # a container start-up left behind
    gc.collect()
    server.tune_gc()
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())  # out of the collector's sight
    assert gc.get_threshold() == (server.GC_GEN0_THRESHOLD, gen1, gen2)


# ---------------------------------------------------------------- --workers


def test_workers_count_is_a_number_from_1_to_64_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert workers.parse_count("1") == 1 and workers.parse_count(" 8 ") == 8
    monkeypatch.setattr(workers, "available_cpus", lambda: 3)
    assert workers.parse_count("auto") == 3 and workers.parse_count("AUTO") == 3
    monkeypatch.setattr(workers, "available_cpus", lambda: 200)
    assert workers.parse_count("auto") == workers.MAX_WORKERS
    for bad in ("0", "-1", "65", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            workers.parse_count(bad)


def test_serve_parses_workers_and_hides_the_worker_flag() -> None:
    parser = argparse.ArgumentParser()
    server.configure(parser)
    args = parser.parse_args(["--workers", "2", "--worker-of", "7"])
    assert args.workers == 2 and args.worker_of == 7
    assert parser.parse_args([]).workers is None  # then WORKERS decides
    assert "--worker-of" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])


def cgroup(tmp_path: Path, membership: str, quotas: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for folder, quota in quotas.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(quota + "\n")
    (tmp_path / "self").write_text(membership)
    return root, tmp_path / "self"


def test_the_cgroup_v2_cpu_quota_is_rounded_up_and_the_tightest_ancestor_wins(
    tmp_path: Path,
) -> None:
    root, self_ = cgroup(tmp_path, "0::/\n", {".": "150000 100000"})
    assert workers.cgroup_cpu_limit(root, self_) == 2  # a container's own namespace
    root, self_ = cgroup(tmp_path, "0::/\n", {".": "50000 100000"})
    assert workers.cgroup_cpu_limit(root, self_) == 1  # half a CPU: still one worker
    quotas = {".": "max 100000", "kubepods": "300000 100000", "kubepods/pod": "max 100000"}
    root, self_ = cgroup(tmp_path, "0::/kubepods/pod\n", quotas)
    assert workers.cgroup_cpu_limit(root, self_) == 3


def test_no_cgroup_v2_quota_means_no_limit(tmp_path: Path) -> None:
    root, self_ = cgroup(tmp_path, "0::/\n", {".": "max 100000"})
    assert workers.cgroup_cpu_limit(root, self_) is None
    root, self_ = cgroup(tmp_path, "4:memory:/x\n1:cpu:/\n", {})  # cgroup v1 only
    assert workers.cgroup_cpu_limit(root, self_) is None
    assert workers.cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_available_cpus_is_the_affinity_capped_by_the_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: None)
    assert workers.available_cpus() == affinity
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: 1)
    assert workers.available_cpus() == 1
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: affinity + 4)
    assert workers.available_cpus() == affinity


def test_restart_back_off_doubles_to_ten_seconds_and_resets_after_a_long_run() -> None:
    delays: list[float] = []
    last = None
    for _ in range(8):
        last = workers.restart_delay(last, uptime_s=1.0)
        delays.append(last)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert workers.restart_delay(10.0, uptime_s=workers.BACKOFF_RESET_S) == 0.5


def test_exit_status_names_the_signal() -> None:
    assert workers.exit_status(0) == "exit status 0"
    assert workers.exit_status(3) == "exit status 3"
    assert workers.exit_status(-signal.SIGKILL) == "killed by SIGKILL"


# ---------------------------------------------------------------- which process runs


@pytest.fixture
def dispatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, Any]]:
    """Settings from a minimal environment; ``serve`` and ``supervise`` recorded, not run."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("WORKERS", "HOST", "PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(logs, "setup", lambda *a: None)  # pytest's logging stays as it is
    calls: list[tuple[str, Any]] = []

    def serve(settings: Any, host: str, port: int, **kw: Any) -> int:
        calls.append(("serve", (host, port, kw)))
        return 0

    def supervise(count: int, host: str, port: int, **kw: Any) -> int:
        calls.append(("supervise", (count, host, port)))
        calls.extend(
            ("program", p) for p in [kw.get("program")] if p != ("-m", "voicebridge", "serve")
        )
        return 0

    monkeypatch.setattr(server, "serve", serve)
    monkeypatch.setattr(workers, "supervise", supervise)
    return calls


ENV = {
    "VOICELIVE_ENDPOINT": "https://res.services.ai.azure.com/",
    "VOICELIVE_MODEL": "gpt-realtime",
    "VOICELIVE_API_KEY": "k",
    "ACS_CONNECTION_STRING": "endpoint=https://acs.communication.azure.com/;accesskey=eA==",
    "PUBLIC_BASE_URL": "https://bridge.example.com",
    "ACS_JWT_VALIDATION": "false",
}


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server.configure(parser)
    return parser.parse_args(list(argv))


def test_one_worker_serves_in_this_process(dispatch: list[tuple[str, Any]]) -> None:
    assert server.run(serve_args("--port", "9000")) == 0
    assert dispatch == [("serve", ("0.0.0.0", 9000, {"clock": None, "worker_of": None}))]


def test_more_workers_start_the_supervisor(
    dispatch: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared(monkeypatch)
    server.run(serve_args("--workers", "3", "--host", "127.0.0.1"))
    monkeypatch.setenv("WORKERS", "2")
    server.run(serve_args())
    assert dispatch == [("supervise", (3, "127.0.0.1", 8000)), ("supervise", (2, "0.0.0.0", 8000))]


def test_more_workers_without_redis_are_refused(
    dispatch: list[tuple[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Calls are per node until they are shared through Redis: N workers alone would fail
    every call whose media socket lands on another worker."""
    assert server.run(serve_args("--workers", "3")) == 2
    monkeypatch.setenv("WORKERS", "2")
    assert server.run(serve_args()) == 2
    assert dispatch == []
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err] == ["configuration error"] * 2
    assert "3 workers need REDIS_URL" in err[0] and "2 workers need REDIS_URL" in err[1]


def shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Call state in Redis (nothing connects to it here)."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("CALL_URL_KEYS", "k1:" + base64.b64encode(b"u" * 32).decode())


def test_a_worker_serves_in_its_own_process_and_the_simulator_has_workers_too(
    dispatch: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERS", "4")
    shared(monkeypatch)
    server.run(serve_args("--worker-of", "7"))
    clock = RealClock()
    server.run(serve_args("--workers", "1"), clock=clock)
    sim = ("-m", "voicebridge.sim.serve", "--speed", "4.0")
    server.run(serve_args(), clock=clock, worker_program=sim)  # its workers keep its clock
    assert [name for name, _ in dispatch] == ["serve", "serve", "supervise", "program"]
    assert dispatch[0][1][2]["worker_of"] == 7 and dispatch[1][1][2]["clock"] is clock
    assert dispatch[3][1] == sim


def test_a_configuration_error_is_reported_once_before_any_worker(
    dispatch: list[tuple[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("PUBLIC_BASE_URL")
    assert server.run(serve_args("--workers", "2")) == 2
    assert dispatch == []
    err = capsys.readouterr().err.splitlines()
    assert err == ["voicebridge: configuration error: PUBLIC_BASE_URL: required but not set"]
