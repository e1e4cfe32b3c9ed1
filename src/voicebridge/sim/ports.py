"""The one free-port helper, for servers whose URL must be known before they run."""

from __future__ import annotations

import socket


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


def free_port() -> int:
    """A loopback TCP port free now, for a server in another process that binds it itself
    (another process could take it first: use :func:`free_socket` where possible)."""
    with free_socket(listen=False) as sock:
        port: int = sock.getsockname()[1]
        return port
