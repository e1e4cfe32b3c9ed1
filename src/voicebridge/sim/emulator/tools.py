"""The emulator's "model" for function tools: a rule table deciding what a response says
and which declared tool it calls (package docstring, "Function tools").

A table is a JSON object ``{"rules": [rule, ...]}`` (or the bare list); the shipped one is
``sim/data/tool_rules.json``. A rule::

    {"name": "farewell",                         # optional, for records and logs
     "when": {"said": "regex"},                  # what it answers (see below)
     "say": "a line",                            # optional: spoken first
     "prompt": "goodbye",                        # optional: a shipped prompt (its audio
                                                 #   and, without "say", its text)
     "call": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
     "wait_ms": 0}                               # optional: pause before the call

``when`` keys, all given ones must match (``re.search``, case-insensitive):

* input rules answer the newest caller input since the previous response: ``said`` (the
  transcript of a finished caller turn), ``text`` (the text of a user ``message`` item
  the client created, e.g. keyed digits), ``input`` (either);
* output rules answer ``function_call_output`` items received since the previous
  response: ``output`` (the output text) and ``tool`` (the name of the function called).
  Output rules win over input rules; ``{"output": ""}`` matches any output.

Rules are tried in order; the first that matches decides. A rule's call is made only if
the response may call that tool (declared in the session's or the response's ``tools``,
allowed by ``tool_choice``); otherwise only its line is said, and a rule with neither a
line nor a usable call is passed over. A rule with no ``say``, ``prompt`` or ``call`` at
all answers with an empty response (``response.done`` with no output). Nothing matched:
the usual answers (greeting, then the answer cycle).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

INPUT_KEYS = ("said", "text", "input")
OUTPUT_KEYS = ("output", "tool")
RULE_KEYS = {"name", "when", "say", "prompt", "call", "wait_ms"}


@dataclass(frozen=True)
class ToolRule:
    """One rule of the table (see the module docstring)."""

    name: str
    when: tuple[tuple[str, re.Pattern[str]], ...]
    say: str | None = None
    prompt: str | None = None
    call: str | None = None  # the function's name
    arguments: str = "{}"  # JSON text, as the service streams it
    wait_ms: int = 0

    @property
    def on_output(self) -> bool:
        return any(key in OUTPUT_KEYS for key, _ in self.when)

    def matches(self, values: Mapping[str, str]) -> bool:
        """True when every condition's field is in ``values`` and matches."""
        return all(key in values and pat.search(values[key]) for key, pat in self.when)


@dataclass(frozen=True)
class CallerInput:
    """Something the caller said (``said``) or that the client wrote as the user (``text``)."""

    kind: str
    text: str


@dataclass(frozen=True)
class ToolOutput:
    """A ``function_call_output`` received: its call's function name and the output."""

    name: str
    output: str


@dataclass(frozen=True)
class Decision:
    """What a response does by a rule: the line (and prompt) spoken, the call made."""

    rule: str
    say: str | None
    prompt: str | None
    call: str | None
    arguments: str
    wait_ms: int


def parse_rules(data: Any, where: str = "tool rules") -> tuple[ToolRule, ...]:
    """Validated rules from a table (``{"rules": [...]}`` or a list); ``ValueError``."""
    if isinstance(data, Mapping):
        if set(data) - {"rules", "description"}:
            raise ValueError(
                f"{where}: unknown keys {sorted(set(data) - {'rules', 'description'})}"
            )
        data = data.get("rules")
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        raise ValueError(f"{where}: expected a list of rules")
    return tuple(_parse_rule(rule, f"{where}[{i}]") for i, rule in enumerate(data))


def _parse_rule(rule: Any, where: str) -> ToolRule:
    if not isinstance(rule, Mapping):
        raise ValueError(f"{where}: expected an object")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    when = rule.get("when")
    if not isinstance(when, Mapping) or not when:
        raise ValueError(f"{where}: 'when' must be a non-empty object")
    kinds = {key in OUTPUT_KEYS for key in when}
    if set(when) - {*INPUT_KEYS, *OUTPUT_KEYS} or len(kinds) > 1:
        raise ValueError(
            f"{where}: 'when' takes {'/'.join(INPUT_KEYS)} or {'/'.join(OUTPUT_KEYS)}, not both"
        )
    conditions = []
    for key, pattern in when.items():
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: when.{key} must be a regex string")
        try:
            conditions.append((key, re.compile(pattern, re.IGNORECASE)))
        except re.error as exc:
            raise ValueError(f"{where}: when.{key}: {exc}") from None
    say, prompt, wait_ms = rule.get("say"), rule.get("prompt"), rule.get("wait_ms", 0)
    if say is not None and not isinstance(say, str):
        raise ValueError(f"{where}: 'say' must be a string")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a prompt name")
    if not isinstance(wait_ms, int) or isinstance(wait_ms, bool) or wait_ms < 0:
        raise ValueError(f"{where}: 'wait_ms' must be a non-negative integer")
    name, arguments = _parse_call(rule.get("call"), where)
    label = rule.get("name")
    return ToolRule(
        name=label if isinstance(label, str) else where,
        when=tuple(conditions),
        say=say,
        prompt=prompt,
        call=name,
        arguments=arguments,
        wait_ms=wait_ms,
    )


def _parse_call(call: Any, where: str) -> tuple[str | None, str]:
    """``(function name, arguments as compact JSON text)`` of a rule's ``call``."""
    if call is None:
        return None, "{}"
    if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
        raise ValueError(f"{where}: 'call' must be an object with a 'name'")
    arguments = call.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where}: call.arguments must be an object")
    return call["name"], json.dumps(dict(arguments), separators=(",", ":"))


def load_rules(source: str | Path | Sequence[Any] | Mapping[str, Any]) -> tuple[ToolRule, ...]:
    """Rules from a JSON file path, or from the table itself (a list or a mapping)."""
    if isinstance(source, str | Path):
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{source}: not JSON ({exc})") from None
        return parse_rules(data, str(source))
    return parse_rules(source)


@functools.cache
def default_rules() -> tuple[ToolRule, ...]:
    """The shipped table, ``sim/data/tool_rules.json``."""
    text = (resources.files("voicebridge.sim") / "data" / "tool_rules.json").read_text()
    return parse_rules(json.loads(text), "sim/data/tool_rules.json")


# --- deciding ------------------------------------------------------------------------------
def callable_tools(tools: Any, tool_choice: Any) -> set[str]:
    """Names of the function tools a response may call: those declared (type ``function``),
    none with ``tool_choice`` ``"none"``, only the named one with a function selection
    (``{"type": "function", "name": ...}``). ``"required"`` is treated as ``"auto"``."""
    declared = {
        t["name"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, Mapping) and t.get("type") == "function" and isinstance(t.get("name"), str)
    }
    if tool_choice == "none":
        return set()
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        return declared & {tool_choice.get("name")}
    return declared


def decide(
    rules: Sequence[ToolRule],
    inputs: Sequence[CallerInput],
    outputs: Sequence[ToolOutput],
    callable_names: set[str],
) -> Decision | None:
    """The decision for a response (see the module docstring), None for the usual answer.

    Outputs are answered first (newest first), then inputs (newest first)."""
    for out in reversed(outputs):
        found = _first(rules, {"output": out.output, "tool": out.name}, callable_names, True)
        if found is not None:
            return found
    for given in reversed(inputs):
        values = {given.kind: given.text, "input": given.text}
        found = _first(rules, values, callable_names, False)
        if found is not None:
            return found
    return None


def _first(
    rules: Sequence[ToolRule], values: Mapping[str, str], names: set[str], on_output: bool
) -> Decision | None:
    for rule in rules:
        if rule.on_output != on_output or not rule.matches(values):
            continue
        call = rule.call if rule.call in names else None
        speaks = rule.say is not None or rule.prompt is not None
        if rule.call is not None and call is None and not speaks:
            continue  # its tool is not available and it has nothing to say
        return Decision(rule.name, rule.say, rule.prompt, call, rule.arguments, rule.wait_ms)
    return None
