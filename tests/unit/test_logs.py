"""Structured logs: JSON/text lines, call ids from the context, redaction, uvicorn routing."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from voicebridge import logs
from voicebridge.logs import CallIds
from voicebridge.security import CallUrlSigner

CORR = "0b9a4f0e-6a55-4b8e-9a1f-2f3c4d5e6f70"
CONN = "4d1e0c2a-7b3f-4e51-8c6d-9e0f1a2b3c4d"


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """A JSON handler on a private logger (the root and its handlers are left alone)."""
    logs.install_record_factory()
    stream = io.StringIO()
    logger = logging.getLogger("voicebridge.test_logs")
    handler = logs.make_handler("json", stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield stream, logger
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_call_ids_only_inside_a_call(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = capture
    log.info("before")
    with logs.call_context(CallIds(CORR, CONN)):
        log.warning("inside %s", "the call")
    log.info("after")
    before, inside, after = lines(stream)
    assert set(before) == {"ts", "level", "logger", "message"}
    assert inside == {
        "ts": inside["ts"],
        "level": "WARNING",
        "logger": "voicebridge.test_logs",
        "message": "inside the call",
        "call_connection_id": CONN,
        "correlation_id": CORR,
    }
    assert str(inside["ts"]).endswith("+00:00")
    assert "correlation_id" not in after


def test_the_call_profile_is_on_its_lines(capture: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = capture
    with logs.call_context(CallIds(CORR, CONN, profile="ventas")):
        log.info("hola")
    assert lines(stream)[0]["profile"] == "ventas"
    text = logs.TextFormatter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.profile = "ventas"
    assert text.format(record).endswith("[profile=ventas]")


def test_one_line_per_event_even_with_newlines_and_tracebacks(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = capture
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("two\nlines")
    raw = stream.getvalue().splitlines()
    assert len(raw) == 1
    record = json.loads(raw[0])
    assert record["message"] == "two\nlines"
    assert "ValueError: bad" in str(record["exception"])


def test_ids_are_live_and_follow_asyncio_tasks(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    """The answer task learns the call connection id after it started; tasks created
    inside the call's context inherit it, others do not."""
    stream, log = capture
    call = CallIds(CORR)

    async def pump() -> None:
        log.info("pump")

    async def main() -> None:
        with logs.call_context(call):
            log.info("ringing")
            call.call_connection_id = CONN  # answer_call returned it
            inside = asyncio.create_task(pump())
        outside = asyncio.create_task(pump())
        await asyncio.gather(inside, outside)

    asyncio.run(main())
    ringing, in_task, out_task = lines(stream)
    assert ringing["correlation_id"] == CORR
    assert in_task["call_connection_id"] == CONN and in_task["correlation_id"] == CORR
    assert "correlation_id" not in out_task


def test_text_format_names_the_call() -> None:
    logs.install_record_factory()
    stream = io.StringIO()
    logger = logging.getLogger("voicebridge.test_logs.text")
    handler = logs.make_handler("text", stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.call_context(CallIds(CORR, CONN)):
            logger.warning("hello")
        logger.warning("no call")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"voicebridge.test_logs.text: hello [call={CONN} correlation={CORR}]")
    assert second.endswith("WARNING voicebridge.test_logs.text: no call")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            '127.0.0.1:5 - "WebSocket /ws/media/AbC_d-12.Zm9vYmFyYmF6cXV4" [accepted]',
            '127.0.0.1:5 - "WebSocket /ws/media/AbC_d-12.<redacted>" [accepted]',
        ),
        (
            "POST /api/callbacks/AbCd.s3cr3t-MAC_x?x=1 HTTP/1.1",
            "POST /api/callbacks/AbCd.<redacted>?x=1 HTTP/1.1",
        ),
        (
            "POST /api/incoming-call?secret=eg-shared-secret&x=1",
            "POST /api/incoming-call?secret=<redacted>&x=1",
        ),
        (  # a signed per-call token: version and key id stay, payload and MAC go
            '10.0.0.1:4 - "WebSocket /ws/media/1.k2.AAECAwQFBgcICQoLaWvrgG0.q83vEjRWeJCrze8SNF"',
            '10.0.0.1:4 - "WebSocket /ws/media/1.k2.<redacted>"',
        ),
        (
            "POST /api/callbacks/1.s0.AAECAwQFBgcICQoLaWvrgGM.q83vEjRWeJCrze8SNFZ4kA HTTP/1.1",
            "POST /api/callbacks/1.s0.<redacted> HTTP/1.1",
        ),
        ("nothing to hide here", "nothing to hide here"),
        ("/ws/media/no-dot-key", "/ws/media/no-dot-key"),
    ],
)
def test_redaction(raw: str, clean: str) -> None:
    assert logs.redact(raw) == clean


def test_redaction_blanks_the_tokens_the_signer_issues() -> None:
    _, callback, media = CallUrlSigner([("k1", b"k" * 32)]).new_call()
    for path, token in (("/api/callbacks/", callback), ("/ws/media/", media)):
        line = logs.redact(f'1.2.3.4:5 - "POST {path}{token} HTTP/1.1" 204')
        assert line == f'1.2.3.4:5 - "POST {path}1.k1.<redacted> HTTP/1.1" 204'
        assert token.split(".")[2] not in line and token.split(".")[3] not in line


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in (*logs.UVICORN_LOGGERS, *logs._QUIET)
        for lg in [logging.getLogger(name)]
    }
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_root[0]:
            root.addHandler(h)
        root.setLevel(saved_root[1])
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
def test_setup_routes_uvicorn_through_the_same_handler() -> None:
    """uvicorn's default log config gives its loggers their own handlers and no
    propagation; after setup their lines are ours: JSON, redacted, levels by config."""
    import uvicorn.config

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # what `uvicorn` does first
    assert logging.getLogger("uvicorn").handlers and logging.getLogger("uvicorn.access").handlers
    logs.setup("INFO", "json")
    stream = io.StringIO()
    root = logging.getLogger()
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.JsonFormatter)
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        assert lg.handlers == [] and lg.propagate, name
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "10.0.0.1:4242", "/ws/media/Id123.SecretMac456"
    )
    logging.getLogger("uvicorn.access").info("GET /metrics 200")  # held back (floor WARNING)
    logging.getLogger("azure.ai.voicelive").debug("raw frame with audio")  # floor INFO
    (line,) = lines(stream)
    assert line["logger"] == "uvicorn.error"
    assert line["message"] == '10.0.0.1:4242 - "WebSocket /ws/media/Id123.<redacted>" [accepted]'


@pytest.mark.usefixtures("restore_logging")
def test_setup_level_keeps_library_floors_at_debug() -> None:
    logs.setup("DEBUG", "text")
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("azure.ai.voicelive").level == logging.INFO
    assert logging.getLogger("uvicorn.access").level == logging.WARNING
    assert isinstance(logging.getLogger().handlers[0].formatter, logs.TextFormatter)
