"""Free loopback ports for the servers the simulators start."""

from __future__ import annotations

import socket

import pytest

from voicebridge.sim import ports
from voicebridge.sim.ports import free_port, free_socket


def test_free_socket_listens_and_free_port_can_be_bound() -> None:
    with free_socket() as sock:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0 and not sock.getblocking()
        with socket.create_connection((host, port), timeout=2):
            pass  # it is listening: a connection is queued
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))  # nobody holds it


def test_free_port_stays_out_of_the_ephemeral_range() -> None:
    """An outgoing connection takes its local port from the ephemeral range, so a port
    picked there could be gone before the server binds it."""
    start = ports._ephemeral_start()
    if start - ports._LOWEST < 1000:
        pytest.skip(f"ephemeral range starts at {start}: free_port lets the kernel pick")
    picked = {free_port() for _ in range(20)}
    assert all(ports._LOWEST <= p < start for p in picked), sorted(picked)
