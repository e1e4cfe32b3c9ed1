"""Logging set-up for the service and the tools (the core never configures logging).

One line per event, on stderr, in one of two formats (``LOG_FORMAT``):

* ``json`` (the service's default) — ``{"ts", "level", "logger", "message",
  "call_connection_id", "correlation_id", "profile", ["trace_id", "span_id"],
  ["exception"]}``, for Container Apps / Log Analytics;
* ``text`` — ``<time> <LEVEL> <logger>: <message> [call=<id> correlation=<id>
  profile=<name>]``.

**Call ids on every line of a call.** The routes bind the current :class:`~voicebridge.calls.Call`
to a context variable where a call's work starts (the answer task, each callback,
the media socket); asyncio tasks copy the context when they are created, so the
relay's pumps and everything they call inherit it. A log-record factory copies the
call's ids onto every record at creation — *live*: a call connection id learned after
the work started (answer returns it) shows up from then on — so every handler sees
them (the Azure Monitor log exporter included), not only ours.

**Never audio or secrets.** Libraries that log payloads are held at a floor
(:data:`_QUIET`); the formatters also blank per-call URL keys and ``secret=`` query
values, which uvicorn's own lines would otherwise carry (``"WebSocket
/ws/media/<key>" [accepted]`` at INFO).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

# Loggers that would print audio payloads or full HTTP traffic below WARNING/INFO.
_QUIET = {
    # logs every received frame, base64 audio included, at DEBUG
    "azure.ai.voicelive": logging.INFO,
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
    "azure.identity": logging.WARNING,
    "websockets": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    # one line per request, with the per-call URL key in the path (redacted anyway)
    "uvicorn.access": logging.WARNING,
    # the Azure Monitor exporter's own chatter (each export, live-metrics pings)
    "azure.monitor.opentelemetry": logging.WARNING,
}

#: uvicorn's loggers: their own handlers (uvicorn's default log config) are removed so
#: their records reach the root handler and its format like everyone else's.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

LogFormat = Literal["json", "text"]


class HasCallIds(Protocol):
    """What the log context needs from a call (``Call`` or :class:`CallIds`)."""

    @property
    def call_connection_id(self) -> str | None: ...

    @property
    def correlation_id(self) -> str: ...


@dataclass
class CallIds:
    """Ids of a call that has no :class:`~voicebridge.calls.Call` (yet, or any more)."""

    correlation_id: str
    call_connection_id: str | None = None
    profile: str | None = None  # the call's profile (voicebridge.profiles)


# The context holds a *weak* reference to a Call: asyncio timers copy the context and a
# cancelled timer keeps it until its due time (aiohttp's 300 s connect timeout, say),
# which would keep a finished call's whole state alive for minutes. CallIds are tiny
# and often have no other owner, so they are held strongly.
_CallRef = Callable[[], HasCallIds | None]
_current_call: ContextVar[_CallRef | None] = ContextVar("voicebridge_call", default=None)


def _ref(call: HasCallIds | None) -> _CallRef | None:
    if call is None:
        return None
    if isinstance(call, CallIds):
        return lambda: call
    return weakref.ref(call)


@contextlib.contextmanager
def call_context(call: HasCallIds | None) -> Iterator[None]:
    """``call`` is the current call inside the ``with`` block."""
    token = _current_call.set(_ref(call))
    try:
        yield
    finally:
        _current_call.reset(token)


def current_call() -> HasCallIds | None:
    ref = _current_call.get()
    return None if ref is None else ref()


def install_record_factory() -> None:
    """Stamp ``call_connection_id`` / ``correlation_id`` / ``profile`` on every new log
    record (None outside a call). Idempotent; process-wide."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_voicebridge", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        call = current_call()
        if call is None:
            record.call_connection_id = record.correlation_id = record.profile = None
        else:
            record.call_connection_id = call.call_connection_id or None
            record.correlation_id = call.correlation_id or None
            record.profile = getattr(call, "profile", None) or None
        return record

    factory._voicebridge = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# ---------------------------------------------------------------- redaction

# /api/callbacks/<token>, /ws/media/<token> and /phone/ws/<token>: a token
# "1.<kid>.<payload>.<mac>" keeps its version and key id (rotation diagnostics); any other
# "<a>.<b...>" keeps "<a>".
_URL_KEY = re.compile(
    r"(/(?:api/callbacks|ws/media|phone/ws)/(?:1\.[A-Za-z0-9_-]{1,8}\.|[^/.\s\"'?]*\.))[^/\s\"'?&]+"
)
_QUERY_SECRET = re.compile(r"([?&](?:secret|sig|code|access_token|api-key)=)[^&\s\"']+", re.I)


def redact(text: str) -> str:
    """``text`` with per-call URL keys and secret query values blanked."""
    if "/" not in text and "=" not in text:
        return text
    return _QUERY_SECRET.sub(r"\1<redacted>", _URL_KEY.sub(r"\1<redacted>", text))


# ---------------------------------------------------------------- formatters

#: Set by :mod:`voicebridge.telemetry` while tracing is on: ``() -> (trace_id, span_id)``
#: of the current span as hex, or None.
trace_ids: Callable[[], tuple[str, str] | None] | None = None
#: Many nodes: this process's node id, on every JSON line (set by the app when REDIS_URL is).
node: str | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if node is not None:
            line["node"] = node
        call_connection_id = getattr(record, "call_connection_id", None)
        if call_connection_id:
            line["call_connection_id"] = call_connection_id
        correlation_id = getattr(record, "correlation_id", None)
        if correlation_id:
            line["correlation_id"] = correlation_id
        profile = getattr(record, "profile", None)
        if profile:
            line["profile"] = profile
        if trace_ids is not None:
            ids = trace_ids()
            if ids is not None:
                line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> [call=... correlation=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = []
        call_connection_id = getattr(record, "call_connection_id", None)
        if call_connection_id:
            ids.append(f"call={call_connection_id}")
        correlation_id = getattr(record, "correlation_id", None)
        if correlation_id:
            ids.append(f"correlation={correlation_id}")
        profile = getattr(record, "profile", None)
        if profile:
            ids.append(f"profile={profile}")
        if ids:
            head, nl, rest = text.partition("\n")  # ids on the message line, not the traceback
            text = f"{head} [{' '.join(ids)}]{nl}{rest}"
        return redact(text)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def make_handler(fmt: LogFormat = "json", stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``fmt`` lines."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    return handler


def setup(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Root logging at ``level`` in format ``fmt``; uvicorn's loggers routed through the
    same handler; noisy libraries held back; call ids stamped on every record."""
    install_record_factory()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper())
    route_uvicorn_loggers()
    hold_back_libraries()


def route_uvicorn_loggers() -> None:
    """Drop the handlers uvicorn's default log config gave its loggers, and let their
    records propagate to the root handler (same format, same redaction)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def hold_back_libraries() -> None:
    """Keep the libraries in ``_QUIET`` at or above their floor, whatever the root level."""
    root_level = logging.getLogger().level
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, root_level))
