"""On an open Voice Live connection: the first ``session.update`` and what the service
answers (:func:`run_session`, judged by the pure :func:`evaluate_session`), and the
optional one-turn text round trip (:func:`talk`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from azure.ai.voicelive.aio import ConnectionClosed
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError

from voicebridge.config import Settings
from voicebridge.doctor import hints
from voicebridge.doctor.report import Check, failed, passed, skipped, with_cause

AGENT, AGENT_CONFIG = "voicelive.agent", "voicelive.agent_config"
UPDATE, TRANSCRIPTION, TALK = (
    "voicelive.session_update",
    "voicelive.transcription",
    "voicelive.talk",
)
TALK_PROMPT = "This is a connection test from voicebridge doctor. Reply with the one word: OK."


@dataclass
class SessionOutcome:
    """What came back for the session.update (errors: those before session.updated)."""

    created: dict[str, Any] | None = None
    updated: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    timed_out: bool = False
    update_ms: float | None = None


async def _next_event(conn: Any, deadline: float) -> dict[str, Any]:
    """The next JSON object from the server (raises ``TimeoutError``, ``ConnectionClosed``)."""
    loop = asyncio.get_running_loop()
    while True:
        raw = await asyncio.wait_for(conn.recv_bytes(), max(0.0, deadline - loop.time()))
        try:
            event = json.loads(raw) if raw else None
        except ValueError:
            continue
        if isinstance(event, dict):
            return event


def _error_of(event: dict[str, Any]) -> dict[str, Any]:
    err = event.get("error")
    return err if isinstance(err, dict) else {"message": str(err)}


async def run_session(conn: Any, config: dict[str, Any], timeout_s: float) -> SessionOutcome:
    """Wait for ``session.created``, send ``session.update`` with ``config``, and wait for
    ``session.updated``, all within ``timeout_s``."""
    out = SessionOutcome()
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while out.created is None:
            event = await _next_event(conn, deadline)
            if event.get("type") == "session.created":
                out.created = event.get("session") or {}
            elif event.get("type") == "error":
                out.errors.append(_error_of(event))
        started = time.perf_counter()
        # a failed send: the server is closing, and what it sent first is still to be read
        with contextlib.suppress(VoiceLiveConnectionError):
            await conn.send({"type": "session.update", "session": config})
        while out.updated is None:
            event = await _next_event(conn, deadline)
            if event.get("type") == "session.updated":
                out.updated = event.get("session") or {}
                out.update_ms = (time.perf_counter() - started) * 1000.0
            elif event.get("type") == "error":
                out.errors.append(_error_of(event))
    except TimeoutError:
        out.timed_out = True
    except ConnectionClosed as exc:
        out.close_code = exc.code
    except VoiceLiveConnectionError:
        out.close_code = 1006
    return out


def _codes(outcome: SessionOutcome) -> dict[str, dict[str, Any]]:
    return {str(e.get("code")): e for e in outcome.errors}


def _ended(outcome: SessionOutcome, timeout_s: float) -> str:
    if outcome.timed_out:
        what = "session.updated" if outcome.created is not None else "session.created"
        return f"no {what} within {timeout_s:g} s (VOICELIVE_CONNECT_TIMEOUT_S)"
    return f"the service closed the session (code {outcome.close_code}) before session.updated"


def _agent_checks(outcome: SessionOutcome, settings: Settings, sent: dict[str, Any]) -> list[Check]:
    if settings.mode == "model":
        why = f"model mode (VOICELIVE_MODEL={settings.voicelive_model}): no agent"
        return [skipped(AGENT, why), skipped(AGENT_CONFIG, why)]
    codes = _codes(outcome)
    who = f"agent {settings.agent_name!r} in project {settings.project_name!r}"
    if "agent_not_found" in codes:
        err = codes["agent_not_found"]
        hint = hints.agent_not_found_hint(settings.agent_name, settings.project_name)
        seen = f"the service answered agent_not_found: {err.get('message', '')}"
        return [
            failed(AGENT, with_cause(seen, hint.cause), hint.fix),
            skipped(AGENT_CONFIG, "not reached: the agent was not found"),
        ]
    conflict = codes.get("max_config_attempts_exceeded")
    if conflict is None and outcome.updated is None:
        why = "could not tell: " + _ended(outcome, settings.voicelive_connect_timeout_s)
        return [skipped(AGENT, why + " (see voicelive.session_update)"), skipped(AGENT_CONFIG, why)]
    found = passed(AGENT, f"{who} answered")
    if conflict is None:
        fields = ", ".join(sorted(sent)) or "nothing"
        return [found, passed(AGENT_CONFIG, f"the agent accepted voicebridge's fields: {fields}")]
    message = str(conflict.get("message", ""))
    names = hints.conflict_fields(message, conflict.get("param"), sent)
    hint = hints.agent_config_hint(names)
    seen = f"max_config_attempts_exceeded: {message}"
    return [found, failed(AGENT_CONFIG, with_cause(seen, hint.cause), hint.fix)]


def _update_check(outcome: SessionOutcome, settings: Settings) -> Check:
    codes = _codes(outcome)
    if "agent_not_found" in codes or "max_config_attempts_exceeded" in codes:
        return skipped(UPDATE, "not reached: see voicelive.agent / voicelive.agent_config")
    own = {"unsupported_transcription_model"}
    others = [e for e in outcome.errors if str(e.get("code")) not in own]
    listed = "; ".join(
        f"{e.get('code')} ({e.get('param') or 'no param'}): {e.get('message', '')}" for e in others
    )
    fix = (
        "compare the settings named by the error with the Voice Live API reference for "
        f"VOICELIVE_API_VERSION={settings.voicelive_api_version}; retry once (a transient "
        "service problem looks the same)"
    )
    if outcome.updated is None:
        seen = _ended(outcome, settings.voicelive_connect_timeout_s)
        cause = (
            f"the service refused the configuration: {listed}"
            if listed
            else "the service accepted the connection but never confirmed the configuration "
            "(model not deployed, agent still provisioning, or a service problem)"
        )
        return failed(UPDATE, with_cause(seen, cause), fix)
    if others:
        seen = "session.updated came, but after errors about the session.update"
        return failed(UPDATE, with_cause(seen, listed), fix)
    return passed(
        UPDATE,
        f"session.created, then session.updated {outcome.update_ms or 0:.0f} ms after "
        f"session.update (limit {settings.voicelive_connect_timeout_s:g} s)",
    )


def _transcription_check(
    outcome: SessionOutcome, settings: Settings, sent: dict[str, Any]
) -> Check:
    asked = sent.get("input_audio_transcription")
    chosen = asked.get("model") if isinstance(asked, dict) else None
    err = _codes(outcome).get("unsupported_transcription_model")
    if err is not None:
        hint = hints.transcription_hint(chosen, settings.voicelive_model)
        seen = f"unsupported_transcription_model: {err.get('message', '')}"
        return failed(TRANSCRIPTION, with_cause(seen, hint.cause), hint.fix)
    if outcome.updated is None:
        return skipped(TRANSCRIPTION, "not reached: no session.updated")
    echoed = outcome.updated.get("input_audio_transcription", "absent")
    if chosen is None:
        if isinstance(echoed, dict) and echoed.get("model"):
            return passed(TRANSCRIPTION, f"the agent's own transcription: {echoed['model']}")
        why = (
            "TRANSCRIPTION_MODEL=none: no caller transcripts"
            if settings.mode == "model"
            else "voicebridge leaves transcription to the agent, which reports none: no "
            "caller transcripts"
        )
        return skipped(TRANSCRIPTION, why)
    against = settings.voicelive_model if settings.mode == "model" else "the agent"
    if echoed == "absent":
        return passed(TRANSCRIPTION, f"{chosen} with {against}: accepted (not echoed back)")
    if isinstance(echoed, dict) and echoed.get("model") == chosen:
        return passed(TRANSCRIPTION, f"{chosen} with {against}: accepted")
    hint = hints.transcription_hint(chosen, settings.voicelive_model)
    seen = f"session.updated has input_audio_transcription {echoed!r}, not {chosen}"
    return failed(TRANSCRIPTION, with_cause(seen, "the service dropped it silently"), hint.fix)


def evaluate_session(
    outcome: SessionOutcome, settings: Settings, sent: dict[str, Any]
) -> list[Check]:
    """The agent, agent_config, session_update and transcription checks for ``outcome``
    of sending ``sent`` (the ``session`` object) with ``settings``."""
    return [
        *_agent_checks(outcome, settings, sent),
        _update_check(outcome, settings),
        _transcription_check(outcome, settings, sent),
    ]


async def talk(conn: Any, timeout_s: float) -> Check:
    """One user text turn and a text-only response; passes on ``response.done`` completed."""
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + timeout_s
    text: list[str] = []
    fix = (
        "check the model deployment and its quota (agent mode: that the agent answers in the "
        "Foundry playground); the error above names the problem"
    )
    try:
        await conn.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": TALK_PROMPT}],
                },
            }
        )
        await conn.send({"type": "response.create", "response": {"modalities": ["text"]}})
        while True:
            event = await _next_event(conn, deadline)
            kind = event.get("type")
            if kind in ("response.text.delta", "response.audio_transcript.delta"):
                text.append(str(event.get("delta", "")))
            elif kind == "error":
                err = _error_of(event)
                seen = f"error {err.get('code')}: {err.get('message', '')}"
                return failed(TALK, with_cause(seen, "the service refused the turn"), fix)
            elif kind == "response.done":
                break
    except TimeoutError:
        seen = f"no response.done within {timeout_s:g} s"
        return failed(TALK, with_cause(seen, "the model is slow or not answering"), fix)
    except (ConnectionClosed, VoiceLiveConnectionError) as exc:
        seen = f"the connection closed during the response ({exc})"
        return failed(TALK, with_cause(seen, "the service ended the session"), fix)
    response = event.get("response") or {}
    status = response.get("status")
    ms = (time.perf_counter() - started) * 1000.0
    said = " ".join("".join(text).split())
    said = said[:60] + ("..." if len(said) > 60 else "")
    if status != "completed":
        seen = f"response.done with status {status!r} ({response.get('status_details')})"
        return failed(TALK, with_cause(seen, "the model did not finish the answer"), fix)
    return passed(TALK, f"text round trip in {ms:.0f} ms: {said!r}")
