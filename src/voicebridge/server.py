"""``voicebridge serve``: the bridge on uvicorn."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from voicebridge.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000)")


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn settings the bridge relies on, shared by ``serve`` and the simulator."""
    return {
        "proxy_headers": True,  # Container Apps terminates TLS in front of us
        "forwarded_allow_ips": "*",
        "ws_per_message_deflate": False,  # audio does not compress; deflate only costs CPU
        # A media frame above the limit closes the socket (1009) before it is buffered.
        "ws_max_size": settings.max_media_message_bytes,
        "h11_max_incomplete_event_size": 64 * 1024,
        "timeout_graceful_shutdown": int(settings.drain_grace_s) + 5,
        "log_config": None,
    }


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from voicebridge import logs
    from voicebridge.app import create_app
    from voicebridge.config import load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"voicebridge: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        **uvicorn_options(settings),
    )
    return 0
