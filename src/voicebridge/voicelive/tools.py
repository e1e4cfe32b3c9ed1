"""The call-control tools as declared to the model (``session.update`` ``tools``).

What each does is :mod:`voicebridge.relay.control`'s; here only how the model sees them.
Agent mode declares nothing: a Foundry agent owns its tools (a function call named like
one of these is still honoured).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voicebridge.core import voicelive as vl

END_CALL = "end_call"
TRANSFER = "transfer_to_human"


def declarations(names: Iterable[str], reasons: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Function tools for ``names``; ``reasons``: the transfer targets' reasons."""
    out = []
    for name in names:
        if name == END_CALL:
            out.append(
                vl.function_tool(
                    END_CALL,
                    "End the phone call. Say goodbye first, in the same turn; the call is "
                    "hung up once your goodbye has been heard.",
                    {"type": "object", "properties": {}, "additionalProperties": False},
                )
            )
        elif name == TRANSFER:
            known = sorted(r for r in reasons if r != "default")
            reason: dict[str, Any] = {
                "type": "string",
                "description": "Why the caller needs a person"
                + (f"; one of: {', '.join(known)}" if known else ""),
            }
            out.append(
                vl.function_tool(
                    TRANSFER,
                    "Transfer the caller to a human agent when they ask for a person, or "
                    "when you cannot help. The caller hears that they are being connected.",
                    {
                        "type": "object",
                        "properties": {"reason": reason},
                        "required": ["reason"],
                        "additionalProperties": False,
                    },
                )
            )
    return out
