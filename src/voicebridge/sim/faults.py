"""Fault injection for the simulators: the registry of fault names and their parsing.

A fault is named on the command line as ``NAME`` or ``NAME=ARG`` (``voicebridge simulate
--fault voicelive-drop=10``, repeatable). :func:`parse_faults` turns a list of such specs into
:class:`Faults`, one mapping per simulator, which is what
:class:`~voicebridge.sim.emulator.VoiceLiveEmulator` and :class:`~voicebridge.sim.fake_acs.FakeAcs`
take as ``faults=``. The simulators validate their mapping again with :func:`check_faults`, so a
hand-written mapping in a test gets the same errors.

Argument kinds: ``T`` is seconds of *media time* (the emulated clock, which runs ``speed``
times faster than the wall clock), ``MS`` milliseconds of media time, ``CODE`` an error code
(letters, digits, ``_ . -``). Values in a :class:`Faults` mapping are ``float`` for ``T``/``MS``,
``str`` for ``CODE`` and ``None`` for faults without an argument.

What each fault does exactly is documented where it is implemented (the emulator and fake ACS
package docstrings); :data:`FAULTS` holds the one-line summaries shown in ``--help``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "FAULTS",
    "FAULT_HELP",
    "FaultInfo",
    "FaultValue",
    "Faults",
    "check_faults",
    "parse_fault",
    "parse_faults",
]

#: The value of one fault in a :class:`Faults` mapping (see the module docstring).
FaultValue = float | str | None

_CODE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class FaultInfo:
    """One registered fault: which simulator implements it, its argument and a summary."""

    name: str
    target: str  # "voicelive" | "acs"
    arg: str | None  # None (no argument), "T" (seconds), "MS" (milliseconds) or "CODE"
    help: str

    @property
    def usage(self) -> str:
        """``name`` or ``name=ARG`` as typed on the command line."""
        return self.name if self.arg is None else f"{self.name}={self.arg}"


_REGISTRY = (
    FaultInfo(
        "voicelive-drop",
        "voicelive",
        "T",
        "first Voice Live session: drop the TCP connection (no close frame) T s in",
    ),
    FaultInfo(
        "voicelive-close",
        "voicelive",
        "T",
        "first Voice Live session: close it with 1011 'server error' T s in",
    ),
    FaultInfo(
        "voicelive-stall-handshake",
        "voicelive",
        None,
        "never complete any Voice Live WebSocket handshake",
    ),
    FaultInfo(
        "voicelive-stall-reconnect",
        "voicelive",
        None,
        "the first Voice Live connection works, every later handshake stalls",
    ),
    FaultInfo(
        "voicelive-stall-response",
        "voicelive",
        "T",
        "first response with audio: after ~0.5 s of audio send nothing for T s",
    ),
    FaultInfo(
        "voicelive-malformed",
        "voicelive",
        None,
        "first session: interleave junk frames (non-JSON, array, no type, unknown type, "
        "bad base64 delta)",
    ),
    FaultInfo(
        "voicelive-error",
        "voicelive",
        "CODE",
        "after the first session.updated send an error event with CODE "
        "(message_creation_failed: stall, then close 1011)",
    ),
    FaultInfo(
        "voicelive-delay",
        "voicelive",
        "MS",
        "delay every Voice Live server event by MS ms (order kept)",
    ),
    FaultInfo(
        "voicelive-expire",
        "voicelive",
        "T",
        "every session: expires_at = start + T s, then close 1001 at that time",
    ),
    FaultInfo(
        "voicelive-no-session-updated",
        "voicelive",
        None,
        "first session: never answer session.update",
    ),
    FaultInfo(
        "voicelive-no-response",
        "voicelive",
        None,
        "first session: no server response for the first committed user turn",
    ),
    FaultInfo(
        "acs-drop",
        "acs",
        "T",
        "at call time T abort the media socket, stop streaming, post no callbacks",
    ),
    FaultInfo(
        "acs-reconnect",
        "acs",
        "T",
        "at call time T abort the media socket and open a new one 0.5 s later",
    ),
    FaultInfo(
        "acs-hold",
        "acs",
        "T",
        "at call time T send no media frames for 10 s (caller on hold; the call stays up)",
    ),
    FaultInfo(
        "acs-duplicate-callbacks",
        "acs",
        None,
        "POST every callback twice (same event id)",
    ),
    FaultInfo(
        "acs-reorder-callbacks",
        "acs",
        None,
        "ParticipantsUpdated first, CallConnected after MediaStreamingStarted",
    ),
    FaultInfo(
        "acs-disconnect-first",
        "acs",
        None,
        "caller hang-up: CallDisconnected, 1 s later the media socket closes",
    ),
    FaultInfo(
        "acs-close-first",
        "acs",
        None,
        "caller hang-up: the media socket closes, 1 s later CallDisconnected",
    ),
    FaultInfo(
        "acs-redial-on-drop",
        "acs",
        None,
        "media socket dropped by the bridge (1006): re-dial transportUrl 0.5 s later (3 tries)",
    ),
    FaultInfo(
        "acs-silent-on-drop",
        "acs",
        None,
        "media socket dropped by the bridge (1006): no callback, no re-dial, call stays up",
    ),
    FaultInfo(
        "acs-disconnect-before-media",
        "acs",
        None,
        "caller hangs up at the answer: CallConnected, CallDisconnected, then the media dial",
    ),
    FaultInfo(
        "acs-transfer-fail",
        "acs",
        None,
        "every transferToParticipant ends in CallTransferFailed (480/560480); the call goes on",
    ),
    FaultInfo(
        "acs-transfer-slow",
        "acs",
        "T",
        "the outcome of every transfer (accepted or failed) comes T s after the request",
    ),
    FaultInfo(
        "acs-callee-no-answer",
        "acs",
        None,
        "outbound calls ring 30 s unanswered, then CreateCallFailed (480/560480)",
    ),
    FaultInfo(
        "acs-callee-busy",
        "acs",
        None,
        "outbound calls: the callee is busy, CreateCallFailed (486/560486) 0.5 s in",
    ),
    FaultInfo(
        "acs-create-fail",
        "acs",
        None,
        "createCall is refused with HTTP 403 (7504); nothing is dialled",
    ),
)

#: Every fault by name, in help order.
FAULTS: dict[str, FaultInfo] = {info.name: info for info in _REGISTRY}

#: Pairs that cannot be combined (they describe contradictory behaviours).
_EXCLUSIVE = (
    ("acs-disconnect-first", "acs-close-first"),
    ("acs-redial-on-drop", "acs-silent-on-drop"),
    ("acs-callee-no-answer", "acs-callee-busy"),
    ("acs-create-fail", "acs-callee-no-answer"),
    ("acs-create-fail", "acs-callee-busy"),
)


def _help_text() -> str:
    width = max(len(info.usage) for info in _REGISTRY)
    lines = [
        "inject a fault (repeatable); T = seconds, MS = milliseconds, both of media time:",
        *(f"  {info.usage.ljust(width)}  {info.help}" for info in _REGISTRY),
    ]
    return "\n".join(lines)


#: The ``--fault`` help: one line per fault (use with ``argparse.RawTextHelpFormatter``).
FAULT_HELP: str = _help_text()


@dataclass
class Faults:
    """Parsed faults, split by the simulator that implements them.

    ``voicelive`` goes to ``VoiceLiveEmulator(faults=...)``, ``acs`` to ``FakeAcs(faults=...)``.
    Both are empty when no fault is asked for (the simulators then behave exactly as without
    fault injection).
    """

    voicelive: dict[str, FaultValue] = field(default_factory=dict)
    acs: dict[str, FaultValue] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.voicelive or self.acs)

    @property
    def names(self) -> list[str]:
        """Every fault asked for, Voice Live ones first."""
        return [*self.voicelive, *self.acs]


def _unknown(name: str) -> ValueError:
    known = ", ".join(FAULTS)
    return ValueError(f"unknown fault {name!r}; known faults: {known}")


def _value(info: FaultInfo, raw: object) -> FaultValue:
    """Validate one argument (a string from the command line or an already typed value)."""
    if info.arg is None:
        if raw is not None:
            raise ValueError(f"fault {info.name!r} takes no argument (got {raw!r})")
        return None
    if raw is None or raw == "":
        raise ValueError(f"fault {info.name!r} needs an argument: {info.usage}")
    if info.arg == "CODE":
        if not isinstance(raw, str) or not _CODE_RE.match(raw):
            raise ValueError(
                f"fault {info.name!r}: CODE must be letters, digits, '_', '.' or '-' (got {raw!r})"
            )
        return raw
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"fault {info.name!r}: {info.arg} must be a number (got {raw!r})")
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(
            f"fault {info.name!r}: {info.arg} must be a number (got {raw!r})"
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"fault {info.name!r}: {info.arg} must be finite and >= 0 (got {raw!r})")
    return number


def parse_fault(spec: str) -> tuple[FaultInfo, FaultValue]:
    """Parse one ``NAME`` / ``NAME=ARG`` spec; raises ``ValueError`` with a readable message.

    The name is matched case-insensitively, surrounding blanks are ignored.
    """
    name, sep, arg = spec.strip().partition("=")
    name = name.strip().lower()
    info = FAULTS.get(name)
    if info is None:
        raise _unknown(name or spec)
    if info.arg is None and sep:
        raise ValueError(f"fault {name!r} takes no argument (got {spec!r})")
    return info, _value(info, arg.strip() if sep else None)


def parse_faults(specs: Iterable[str]) -> Faults:
    """Parse ``--fault`` specs into :class:`Faults`.

    Raises ``ValueError`` for an unknown name, a missing, superfluous or invalid argument, the
    same fault given twice, or two faults that contradict each other.
    """
    faults = Faults()
    for spec in specs:
        info, value = parse_fault(spec)
        target = faults.voicelive if info.target == "voicelive" else faults.acs
        if info.name in target:
            raise ValueError(f"fault {info.name!r} given more than once")
        target[info.name] = value
    _check_exclusive([*faults.voicelive, *faults.acs])
    return faults


def _check_exclusive(names: Iterable[str]) -> None:
    given = set(names)
    for a, b in _EXCLUSIVE:
        if a in given and b in given:
            raise ValueError(f"faults {a!r} and {b!r} cannot be combined")


def check_faults(faults: Mapping[str, object] | None, target: str) -> dict[str, FaultValue]:
    """Validate a ``faults=`` mapping for one simulator (``"voicelive"`` or ``"acs"``).

    Values may be typed (``{"voicelive-drop": 10.0}``) or strings as on the command line
    (``{"voicelive-drop": "10"}``); a fault without argument takes ``None``. Returns a new dict
    with normalised values; raises ``ValueError`` for unknown names, names of the other
    simulator, bad values and contradictory combinations.
    """
    checked: dict[str, FaultValue] = {}
    for name, raw in (faults or {}).items():
        info = FAULTS.get(name)
        if info is None:
            raise _unknown(name)
        if info.target != target:
            raise ValueError(f"fault {name!r} is implemented by the {info.target} simulator")
        checked[name] = _value(info, raw)
    _check_exclusive(checked)
    return checked
