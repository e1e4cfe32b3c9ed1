"""Call control in the core: keypad digits, the silent-caller watchdog, tool calls.

Pure state machines with injected times (media seconds), like the rest of the core.

* :class:`DtmfCollector` gathers keypad tones into one entry: ``#`` submits, ``*``
  clears, an inter-digit timeout or the maximum length submits too. A key listed in
  ``actions`` pressed on an empty entry acts at once (e.g. ``0`` → transfer), without
  the model. Digits never leave this class except in the submitted entry, which goes to
  Voice Live only: events carry counts, never digits (callers type card numbers).
* :class:`NoInput` decides when a silent caller is re-prompted and when the call is
  given up: the silence is counted from the end of the agent's last audio (when ACS
  will have played it) or the caller's last sound or key, whichever is later, and only
  while nothing else is going on (no response, no tool running, no transfer pending).
* :class:`ToolCalls` tracks function calls the model made until their results are
  sent, so the one ``response.create`` that follows a tool result waits until no
  response is active.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DtmfCollector",
    "DtmfConfig",
    "DtmfResult",
    "KeypadSecrets",
    "NoInput",
    "NoInputConfig",
    "ToolCalls",
    "parse_arguments",
]

#: Keys a phone keypad sends (ACS ``DtmfData.data``; A-D exist on some keypads).
DTMF_KEYS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class DtmfConfig:
    inter_digit_timeout_s: float = 3.0
    max_digits: int = 20
    submit_key: str = "#"
    clear_key: str = "*"
    #: A key → an action name, taken at once when pressed on an empty entry.
    actions: Mapping[str, str] = field(default_factory=dict)
    #: Keys per second taken at most (a phone sends a few; a flood is dropped, counted).
    max_keys_per_s: float = 10.0


@dataclass(frozen=True, slots=True)
class DtmfResult:
    """What one key (or the timeout) did: ``kind`` is ``collecting``, ``cleared``,
    ``submitted`` (``digits``), ``action`` (``action``) or ``ignored``."""

    kind: str
    digits: str = ""
    action: str = ""
    length: int = 0  # of the entry after the key (never the digits themselves)


class DtmfCollector:
    """One call's keypad entry (see the module docstring)."""

    __slots__ = ("_allowance", "_config", "_digits", "_last_at")

    def __init__(self, config: DtmfConfig | None = None) -> None:
        self._config = config or DtmfConfig()
        self._digits = ""
        self._last_at = 0.0
        self._allowance = self._config.max_keys_per_s  # a token bucket of one second

    def press(self, key: str, now: float) -> DtmfResult:
        c = self._config
        key = key.strip().upper()[:1]
        rate = c.max_keys_per_s
        self._allowance = min(rate, self._allowance + (now - self._last_at) * rate)
        if key not in DTMF_KEYS or self._allowance < 1.0:
            return DtmfResult("ignored", length=len(self._digits))
        self._allowance -= 1.0
        self._last_at = now
        if not self._digits and key in c.actions:
            return DtmfResult("action", action=c.actions[key])
        if key == c.clear_key:
            self._digits = ""
            return DtmfResult("cleared")
        if key == c.submit_key:
            return self._submit()
        self._digits += key
        if len(self._digits) >= c.max_digits:
            return self._submit()
        return DtmfResult("collecting", length=len(self._digits))

    def poll(self, now: float) -> DtmfResult | None:
        """The entry, submitted, once no key came for the inter-digit timeout."""
        if self._digits and now - self._last_at >= self._config.inter_digit_timeout_s:
            return self._submit()
        return None

    @property
    def pending(self) -> int:
        """Digits entered and not submitted."""
        return len(self._digits)

    def _submit(self) -> DtmfResult:
        digits, self._digits = self._digits, ""
        if not digits:
            return DtmfResult("ignored")
        return DtmfResult("submitted", digits=digits, length=len(digits))


@dataclass(frozen=True, slots=True)
class NoInputConfig:
    reprompt_s: float = 8.0  # 0: off
    max_reprompts: int = 2


class NoInput:
    """The silent-caller watchdog (see the module docstring). :meth:`poll` returns
    ``"reprompt"`` (the n-th time, n ≤ ``max_reprompts``) or ``"give_up"`` once."""

    __slots__ = ("_config", "_given_up", "_since", "reprompts")

    def __init__(self, config: NoInputConfig | None = None) -> None:
        self._config = config or NoInputConfig()
        self._since = 0.0
        self.reprompts = 0
        self._given_up = False

    def caller_active(self, now: float) -> None:
        """The caller spoke or pressed a key: the silence (and the re-prompt count) restarts."""
        self._since = max(self._since, now)
        self.reprompts = 0

    def busy_until(self, when: float) -> None:
        """Something else kept the line busy until ``when`` (agent audio, a tool, a
        transfer): the silence counts from then."""
        self._since = max(self._since, when)

    def poll(self, now: float, *, idle: bool) -> str | None:
        c = self._config
        if not idle:
            self.busy_until(now)
            return None
        if c.reprompt_s <= 0 or self._given_up or now - self._since < c.reprompt_s:
            return None
        self._since = now
        if self.reprompts < c.max_reprompts:
            self.reprompts += 1
            return "reprompt"
        self._given_up = True
        return "give_up"


class KeypadSecrets:
    """Keypad entries typed on this call, to blank them out of transcripts before they
    are logged (the model may read a card number back): an entry's digits in a row,
    or separated by spaces, dots or dashes, become ``[keypad]``."""

    __slots__ = ("_patterns",)

    def __init__(self) -> None:
        self._patterns: list[re.Pattern[str]] = []

    def add(self, digits: str) -> None:
        digits = "".join(d for d in digits if d.isdigit())
        if len(digits) >= 3:
            self._patterns.append(re.compile(r"[\s.-]?".join(map(re.escape, digits))))

    def redact(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub("[keypad]", text)
        return text


def parse_arguments(arguments: str) -> dict[str, Any] | str:
    """A function call's arguments as a JSON object, or why not (a plain-text error the
    model gets back as the tool's result)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return "error: the arguments are not valid JSON"
    if not isinstance(value, dict):
        return "error: the arguments must be a JSON object"
    return value


class ToolCalls:
    """Function calls in flight, and results waiting for their ``response.create``."""

    __slots__ = ("_respond", "running")

    def __init__(self) -> None:
        self.running: dict[str, str] = {}  # call_id -> tool name
        self._respond = False

    def started(self, call_id: str, name: str) -> None:
        self.running[call_id] = name

    def finished(self, call_id: str, *, respond: bool) -> bool:
        """The result of ``call_id`` is sent; True if it was in flight."""
        known = self.running.pop(call_id, None) is not None
        self._respond = self._respond or respond
        return known

    def take_response(self) -> bool:
        """True once per batch of results that asked for a response (the caller sends
        one ``response.create`` when no response is active)."""
        if self._respond and not self.running:
            self._respond = False
            return True
        return False

    @property
    def busy(self) -> bool:
        return bool(self.running) or self._respond
