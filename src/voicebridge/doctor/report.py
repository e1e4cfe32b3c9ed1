"""What ``voicebridge doctor`` reports: one :class:`Check` per line, as text or JSON.

A check is ``pass``, ``fail`` or ``skip``; a failed one says what was seen and the likely
cause (``detail``) and what to do (``fix``). Nothing secret is printed: :func:`redact`
replaces every known secret value (keys, tokens, connection strings) before output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

Status = Literal["pass", "fail", "skip"]

#: Secrets shorter than this are not searched for (they would match ordinary words).
MIN_SECRET_LEN = 6
SYMBOLS = {"pass": "✓", "fail": "✗", "skip": "-"}
ASCII_SYMBOLS = {"pass": "OK  ", "fail": "FAIL", "skip": "SKIP"}


@dataclass(frozen=True)
class Check:
    """One line of the report. ``fix`` is None when there is nothing to do."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def passed(name: str, detail: str) -> Check:
    return Check(name, "pass", detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def skipped(name: str, why: str, fix: str | None = None) -> Check:
    return Check(name, "skip", why, fix)


def with_cause(observed: str, cause: str) -> str:
    """A failure's ``detail``: what was observed, then the likely cause."""
    return f"{observed.rstrip('.')}. Likely cause: {cause}"


def exit_status(checks: Iterable[Check]) -> int:
    """0 when no check failed (skips do not fail the run), else 1."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def redact(checks: Sequence[Check], secrets: Iterable[str]) -> list[Check]:
    """``checks`` with every occurrence of a secret value replaced by ``***``."""
    values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)

    def clean(text: str | None) -> str | None:
        if text is None:
            return None
        for value in values:
            text = text.replace(value, "***")
        return text

    return [replace(c, detail=clean(c.detail) or "", fix=clean(c.fix)) for c in checks]


def to_json(checks: Sequence[Check]) -> str:
    """``{"checks": [{"name", "status", "detail", "fix"}, ...]}``."""
    return json.dumps({"checks": [asdict(c) for c in checks]}, indent=2, ensure_ascii=False)


def _symbols(encoding: str | None) -> dict[str, str]:
    try:
        "".join(SYMBOLS.values()).encode(encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return ASCII_SYMBOLS
    return SYMBOLS


def render_text(checks: Sequence[Check], *, encoding: str | None = None) -> str:
    """One line per check (``✓``/``✗``/``-``); a failed check adds its ``fix`` below."""
    symbols = _symbols(encoding if encoding is not None else sys.stdout.encoding)
    lines: list[str] = []
    for c in checks:
        if c.status == "skip":
            lines.append(f"{symbols['skip']} {c.name}: skipped: {c.detail}")
        else:
            lines.append(f"{symbols[c.status]} {c.name}: {c.detail}")
        if c.fix and c.status != "pass":
            lines.append(f"    fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "fail", "skip")}
    lines.append(f"checks: {counts['pass']} ok, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)
