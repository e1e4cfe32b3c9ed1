"""The harness itself: redis-server, haproxy and bridge processes start, answer, stop, and
leave nothing behind — also when start-up fails. Independent of the cluster engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from tests.cluster.conftest import SPEED
from voicebridge.sim.cluster import (
    INSTALL_HINT,
    Cluster,
    ClusterOptions,
    HAProxy,
    MissingBinaries,
    RedisServer,
    ServerSlot,
    binaries,
)
from voicebridge.sim.cluster.procs import pid_alive
from voicebridge.sim.wav import write_wav


def processes_using(path: Path) -> list[int]:
    """Pids whose command line or working directory is under ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (str(path) in cmdline or cwd.startswith(str(path))) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_missing_programs_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(binaries, "_EXTRA_DIRS", ())
    message = binaries.missing_message()
    assert message is not None
    assert "redis-server" in message and "haproxy" in message and INSTALL_HINT in message
    with pytest.raises(MissingBinaries, match="apt-get install -y redis-server haproxy"):
        binaries.binary("haproxy")


async def test_redis_server_restarts_empty_on_the_same_port(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    await server.start()
    try:
        config = server.config_path.read_text()
        assert "bind 127.0.0.1" in config and 'save ""' in config and "appendonly no" in config
        port, pid = server.port, server.proc.pid if server.proc else 0
        client = server.client()
        await client.set("vb:test", "1")
        subscriber = client.pubsub()
        await subscriber.subscribe("vb:call:x")
        assert (await server.numsub(["vb:call:x"]))["vb:call:x"] == 1
        assert await server.kill_pubsub(pids=[os.getpid()]) == 1  # only this process's
        assert (await server.numsub(["vb:call:x"]))["vb:call:x"] == 0
        await subscriber.aclose()
        await server.restart()
        assert server.port == port and server.proc is not None and server.proc.pid != pid
        assert not pid_alive(pid)
        assert await server.client().get("vb:test") is None  # nothing persisted
    finally:
        await server.stop()
    assert server.proc is not None and not pid_alive(server.proc.pid)


async def _stub(name: str, ready: dict[str, bool], port: int = 0) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        status = 200 if request.path != "/readyz" or ready[name] else 503
        return web.json_response({"node": name}, status=status, headers={"x-node": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_haproxy_balances_per_request_follows_readiness_and_enables_spares(
    tmp_path: Path,
) -> None:
    from voicebridge.sim.ports import free_port

    ready = {"r1": True, "r2": True, "r3": True}
    stubs = [await _stub(n, ready) for n in ("r1", "r2")]
    spare_port = free_port()
    slots = [ServerSlot(f"r{i + 1}", s.addresses[0][1]) for i, s in enumerate(stubs)]
    slots.append(ServerSlot("r3", spare_port, disabled=True))
    proxy = HAProxy(tmp_path / "haproxy", slots)
    try:
        await proxy.start()
        assert "timeout tunnel 1h" in proxy.config_text()
        async with aiohttp.ClientSession() as session:

            async def hits(n: int) -> list[str]:
                out = []
                for _ in range(n):
                    async with session.post(f"{proxy.url}/api/x") as resp:
                        out.append(resp.headers["x-node"])
                return out

            assert sorted(await hits(4)) == ["r1", "r1", "r2", "r2"]  # one keep-alive connection
            stat = await proxy.show_stat()
            assert stat["r1"]["stot"] == 2 and stat["r3"]["status"] == "MAINT"
            ready["r2"] = False  # /readyz 503: DOWN after two checks
            await proxy.wait_status("r2", ("DOWN",), 10)
            assert set(await hits(3)) == {"r1"}
            stubs.append(await _stub("r3", ready, spare_port))
            await proxy.enable("r3")
            await proxy.wait_status("r3", ("UP",), 10)
            assert set(await hits(4)) == {"r1", "r3"}
            await proxy.set_server_state("r1", "maint")
            assert (await proxy.show_stat())["r1"]["status"] == "MAINT"
    finally:
        await proxy.stop()
        for stub in stubs:
            await stub.cleanup()
    assert proxy.proc is not None and not pid_alive(proxy.proc.pid)


async def test_cluster_starts_nodes_behind_the_balancer_and_leaves_no_process(
    short_pcm: np.ndarray,
) -> None:
    cluster = Cluster(ClusterOptions(replicas=2, speed=SPEED))
    async with cluster:
        pids = cluster.child_pids()
        assert len(pids) == 4  # redis, haproxy, r1, r2
        for node in cluster.nodes.values():
            status, body, _ = await node.get("/readyz")
            assert status == 200, body
            env = node.full_env()
            assert env["PUBLIC_BASE_URL"] == cluster.url and env["NODE_ID"] == node.name
            assert env["REDIS_URL"] == cluster.redis.url and env["CALL_URL_KEYS"].startswith("k1:")
        stat = await cluster.haproxy.show_stat()
        assert {stat["r1"]["status"], stat["r2"]["status"]} == {"UP"}
        r1, r2 = cluster.nodes["r1"], cluster.nodes["r2"]
        r1.signal(signal.SIGTERM)  # no call: a drain with nothing to wait for
        assert await r1.wait(30) == 0
        r2.kill()
        assert await r2.wait(10) == -signal.SIGKILL
        await cluster.haproxy.wait_status("r2", ("DOWN",), 10)
        workdir = cluster.workdir
    assert not [p for p in pids if pid_alive(p)]
    assert not workdir.exists() and not processes_using(workdir)


async def test_a_failed_start_stops_everything_already_started() -> None:
    cluster = Cluster(ClusterOptions(replicas=2, speed=SPEED, node_env={"r2": {"PORT": "x"}}))
    with pytest.raises(RuntimeError, match="node r2 exited at start"):
        async with cluster:
            pass
    assert not cluster.child_pids()
    assert cluster.redis.proc is not None and not pid_alive(cluster.redis.proc.pid)
    assert not cluster.workdir.exists() and not processes_using(cluster.workdir)


def test_simulate_replicas_writes_a_cluster_report(tmp_path: Path, short_pcm: np.ndarray) -> None:
    """``voicebridge simulate --replicas 1``: the whole command, with one node (which works
    without the cluster engine), and nothing left running after it."""
    audio = tmp_path / "caller.wav"
    write_wav(audio, short_pcm[: 6 * 16000], 16000)
    out = tmp_path / "out"
    args = ["--replicas", "1", "--calls", "2", "--speed", str(SPEED)]
    args += ["--caller-audio", str(audio), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "voicebridge", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cluster-report.json" in done.stdout and "node r1" in done.stdout
    report = json.loads((out / "cluster-report.json").read_text())
    assert report["answer_requests"] == 2 and report["calls_placed"] == 2
    for call in report["calls"]:
        assert call["outcome"] == "caller_hung_up"
        assert call["conserved"] and call["audio"]["countable"], call["audio"]
        for key in ("answered_by", "media_by", "callbacks_by"):
            assert key in call
    assert [n["node"] for n in report["nodes"]] == ["r1"]
    assert (out / "cluster" / "r1" / "node.log").exists()
    assert not processes_using(out)


async def test_simulate_rejects_cluster_options_without_replicas(tmp_path: Path) -> None:
    from voicebridge.cli import main

    code = await asyncio.to_thread(main, ["simulate", "--calls", "2", "--out", str(tmp_path)])
    assert code == 2
