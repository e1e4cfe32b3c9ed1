"""``voicebridge serve``: the bridge on uvicorn."""

from __future__ import annotations

import argparse
import sys

from voicebridge.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000)")


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
        proxy_headers=True,  # Container Apps terminates TLS in front of us
        forwarded_allow_ips="*",
        ws_per_message_deflate=False,  # audio does not compress; deflate only costs CPU
        log_config=None,
    )
    return 0
