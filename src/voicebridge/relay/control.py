"""Call control in the relay: run the tools the model calls, keypad actions, transfers.

The core says *that* the model called a tool (``ToolRequested``) or that a key acts
(``Dtmf(kind="action")``); this module does the I/O and answers the core with
:meth:`CallBridge.tool_result <voicebridge.core.bridge.CallBridge.tool_result>`, which
queues the function-call output and exactly one guarded ``response.create``.

* ``end_call``: nothing to do now; the supervisor hangs up once the agent's goodbye has
  played (:attr:`CallControl.ending`), outcome ``agent_hung_up``.
* ``transfer_to_human``: the target for the reason (``TRANSFER_TARGETS``), the
  announcement spoken and heard, then Call Automation ``transfer_call_to_participant``
  with the called number as caller id; ``CallTransferAccepted`` lets the call go
  (outcome ``transferred``), ``CallTransferFailed`` goes back to the model as the
  tool's result so it tells the caller, and the conversation carries on.
* Anything else (an unknown tool, bad arguments, a failure, a timeout) is a plain-text
  error result: the model hears about it, the call goes on, ``tool_errors`` counts it.

While a tool runs the silent-caller watchdog pauses; if it runs longer than
``TOOL_FILLER_AFTER_S`` and nothing is being said, the caller hears ``TOOL_FILLER_TEXT``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from voicebridge.calls import CallOutcome
from voicebridge.core.events import ToolRequested
from voicebridge.voicelive.tools import END_CALL, TRANSFER

if TYPE_CHECKING:
    from voicebridge.relay import MediaRelay

log = logging.getLogger("voicebridge.relay")

#: How long the transfer announcement may take to be heard before the transfer starts.
ANNOUNCE_DEADLINE_S = 10.0


class ToolFailed(Exception):
    """A tool could not do its job; the message is what the model is told."""


class CallControl:
    """One call's tools and keypad actions (see the module docstring)."""

    def __init__(self, relay: MediaRelay) -> None:
        self.relay = relay
        self.settings = relay.settings
        #: The agent asked to end the call: hang up once its goodbye has played.
        self.ending = False
        self.ending_since = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ tools

    def requested(self, event: ToolRequested) -> None:
        self._spawn(self._run(event), name=f"tool-{event.tool}-{self.relay.call.label}")

    async def _run(self, event: ToolRequested) -> None:
        relay, bridge, s = self.relay, self.relay.bridge, self.settings
        call = relay.call
        ok, respond = False, True
        if event.error is not None:
            output = event.error
        elif event.tool == END_CALL:
            output, ok, respond = "The call will end after your goodbye.", True, False
            self.end()
        elif event.tool == TRANSFER and s.transfer_targets:
            bridge.set_busy(True)
            filler = asyncio.create_task(self._filler())
            try:
                async with asyncio.timeout(s.tool_timeout_s):
                    reason = str((event.arguments or {}).get("reason") or "default")
                    output, ok, respond = await self.transfer(reason)
            except TimeoutError:
                output = "error: the transfer took too long and was abandoned"
            except ToolFailed as exc:
                output = f"error: {exc}"
            finally:
                filler.cancel()
                bridge.set_busy(False)
        else:
            output = f"error: there is no tool named {event.tool!r}"
        log.info("call %s: tool %s: %s", call.label, event.tool, "ok" if ok else output)
        call.log.write("tool_result", tool=event.tool, ok=ok)
        bridge.tool_result(event.call_id, output, ok=ok, respond=respond)
        await relay.send_voicelive()
        relay.drain_events()

    async def _filler(self) -> None:
        """Once, while the tool runs: when the line has been silent (nothing playing, no
        response) for TOOL_FILLER_AFTER_S, say the filler — no dead air."""
        relay, s = self.relay, self.settings
        bridge, clock = relay.bridge, relay.clock
        silent_since: float | None = None
        while True:
            await asyncio.sleep(clock.real_seconds(0.1))
            now = clock.media_now()
            if not (bridge.responses.is_idle and bridge.played_out(now)):
                silent_since = None
                continue
            silent_since = now if silent_since is None else silent_since
            if now - silent_since >= s.tool_filler_after_s and bridge.say(s.tool_filler_text):
                relay.call.log.write("tool_filler")
                await relay.send_voicelive()
                return

    def end(self) -> None:
        """Hang up once what the agent is saying has been heard."""
        if not self.ending:
            self.ending = True
            self.ending_since = self.relay.clock.real_now()
            self.relay.call.log.write("agent_ending")

    # ------------------------------------------------------------------ keypad

    def action(self, name: str) -> None:
        """A keypad action (DTMF_ACTIONS), without the model."""
        log.info("call %s: keypad action %s", self.relay.call.label, name)
        if name == "end":
            self.end()
        elif name == "transfer":
            self._spawn(self._keyed_transfer(), name=f"keyed-transfer-{self.relay.call.label}")

    async def _keyed_transfer(self) -> None:
        bridge = self.relay.bridge
        bridge.set_busy(True)
        try:
            async with asyncio.timeout(self.settings.tool_timeout_s):
                output, ok, _ = await self.transfer("default")
        except (TimeoutError, ToolFailed) as exc:
            output, ok = f"error: {exc or 'timeout'}", False
        finally:
            bridge.set_busy(False)
        if not ok:  # tell the model, so it tells the caller
            bridge.inform(f"The caller pressed the key for a person, but {output}")
            await self.relay.send_voicelive()

    # ------------------------------------------------------------------ transfer

    async def transfer(self, reason: str) -> tuple[str, bool, bool]:
        """Transfer the call; ``(result for the model, ok, respond)``."""
        relay, s = self.relay, self.settings
        call, services = relay.call, relay.services
        targets = s.transfer_target_map
        target = targets.get(reason.lower()) or targets.get("default")
        if target is None:
            raise ToolFailed(
                f"no transfer target for reason {reason!r}; known reasons: {', '.join(targets)}"
            )
        await self._announce()
        call.transfer = asyncio.get_running_loop().create_future()
        call.log.write("transfer_started", reason=reason)
        log.info("call %s: transferring (%s)", call.label, reason)
        try:
            await services.transfer(call, target)
        except Exception as exc:
            call.transfer = None
            raise ToolFailed(f"the transfer could not start ({type(exc).__name__})") from None
        event = await call.transfer
        call.transfer = None
        if event.type == "CallTransferAccepted":
            call.outcome = call.outcome or CallOutcome.TRANSFERRED
            call.log.write("transferred")
            return "The caller was transferred.", True, False
        message = event.message or f"code {event.result_code}/{event.sub_code}"
        call.log.write("transfer_failed", code=event.result_code, sub_code=event.sub_code)
        return (
            f"The transfer failed ({message}). Tell the caller nobody could be reached "
            "right now and offer to help otherwise.",
            False,
            True,
        )

    async def _announce(self) -> None:
        """Say the transfer announcement once nothing else is being said, and wait until
        the caller has heard it (bounded)."""
        relay, bridge, clock = self.relay, self.relay.bridge, self.relay.clock
        deadline = clock.real_now() + ANNOUNCE_DEADLINE_S
        said = False
        while clock.real_now() < deadline:
            if not said and bridge.responses.is_idle:
                said = bridge.say(self.settings.transfer_announcement)
                if said:
                    await relay.send_voicelive()
            elif said and bridge.responses.is_idle and bridge.played_out(clock.media_now()):
                return
            await asyncio.sleep(0.05)
        log.info("call %s: transfer announcement not heard in time", relay.call.label)
