"""The one free-port helper, for servers whose URL must be known before they run."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: The kernel's ephemeral port range (outgoing connections take their local port there).
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: The lowest port :func:`free_port` picks.
_LOWEST = 10000


def free_socket(*, listen: bool = True) -> socket.socket:
    """A TCP socket bound to a loopback port the kernel picked. With ``listen`` (the
    default) it is listening and non-blocking, ready to hand to a server in this process
    (``uvicorn.Server.serve(sockets=[...])``): no other process can take the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        if listen:
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port free now, for a server in another process that binds it itself,
    maybe minutes later (a cluster's spare node). Picked at random below the kernel's
    ephemeral range: a port the kernel handed out would be free for any outgoing connection
    to take as its local port meanwhile (a node then failed to start with "address already
    in use" while other tests ran). Use :func:`free_socket` where the server can take a
    socket."""
    top = _ephemeral_start()
    if top - _LOWEST >= 1000:
        pick = random.SystemRandom()
        for _ in range(100):
            port = pick.randrange(_LOWEST, top)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue  # someone has it
            return port
    with free_socket(listen=False) as sock:
        port = sock.getsockname()[1]
        return int(port)
