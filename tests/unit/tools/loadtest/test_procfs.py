"""What /proc says: descriptors labelled by the process at the other end, and the one
memory reader the load test and the soak checks share."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from voicebridge.tools.loadtest import procfs


def test_describe_fds_labels_sockets_by_the_process_at_the_other_end(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        log = (tmp_path / "x.jsonl").open("w")
        try:
            fds = procfs.describe_fds(os.getpid(), port, {"me": os.getpid()}, tmp_path)
        finally:
            log.close()
            client.close()
            accepted.close()
    assert fds["tcp"]["listening"] >= 1
    assert fds["tcp"]["from me"] == 1 and fds["tcp"]["to me"] == 1
    assert fds["kinds"]["call log"] == 1 and fds["close_wait"] == 0
    assert fds["total"] >= sum(fds["kinds"].values()) - 1


def test_memory_threads_and_cpu_of_this_process() -> None:
    pid = os.getpid()
    memory = procfs.memory_mb(pid)
    assert 0 < memory["rss"] <= memory["hwm"]  # peak RSS is at least RSS now
    assert procfs.status(pid)["VmRSS"].endswith(" kB")
    assert procfs.threads(pid) >= 1
    assert procfs.cpu_seconds(pid) > 0
    assert procfs.runqueue_wait_s(pid) >= 0
    times = procfs.cpu_times()
    assert times["tasks"] > 0 and times["irq"] >= 0 and times["steal"] >= 0
    assert procfs.cpu_model()
