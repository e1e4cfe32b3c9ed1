"""An outbound call's ``context`` (data for the agent: the customer's name, the reason for
the call) as the text Voice Live gets: never a raw object (design.md §3, the guard).

The request route has already checked it is a flat mapping of short plain strings
(:mod:`voicebridge.outbound`); here it becomes ``key: value`` lines inside a clearly
delimited block, with line breaks inside values flattened so a value cannot fake the
end of the block or a new key. Model mode appends the block to the session's
``instructions``; agent mode sends it as the first ``system`` message item
(:class:`~voicebridge.core.session.VoiceLiveSession`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["BEGIN", "END", "context_text", "with_context"]

BEGIN = "--- Call context (data about this call from the system that placed it) ---"
END = "--- End of call context ---"
_BREAKS = re.compile(r"[\r\n\u2028\u2029\x00-\x08\x0b-\x1f\x7f]+")


def _flat(text: str) -> str:
    return _BREAKS.sub(" ", text).strip()


def context_text(context: Mapping[str, str]) -> str:
    """The delimited ``key: value`` block; ``""`` for no context."""
    if not context:
        return ""
    lines = [f"{_flat(str(key))}: {_flat(str(value))}" for key, value in context.items()]
    return "\n".join([BEGIN, *lines, END])


def with_context(instructions: str, context: Mapping[str, str]) -> str:
    """``instructions`` with the context block appended (model mode)."""
    block = context_text(context)
    if not block:
        return instructions
    return f"{instructions.rstrip()}\n\n{block}"
