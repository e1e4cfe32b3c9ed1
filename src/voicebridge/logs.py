"""Logging set-up for the service and the tools (the core never configures logging)."""

from __future__ import annotations

import logging

# Loggers that would print audio payloads or full HTTP traffic below WARNING/INFO.
_QUIET = {
    # logs every received frame, base64 audio included, at DEBUG
    "azure.ai.voicelive": logging.INFO,
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
    "azure.identity": logging.WARNING,
    "websockets": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "uvicorn.access": logging.WARNING,
}


def setup(level: str = "INFO") -> None:
    """Plain one-line logs at ``level``; noisy libraries held back."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    hold_back_libraries()


def hold_back_libraries() -> None:
    """Keep the libraries in ``_QUIET`` at or above their floor, whatever the root level."""
    root_level = logging.getLogger().level
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, root_level))
