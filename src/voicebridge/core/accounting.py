"""Accounting: what a call counts, its report, and the sample-conservation verdict.

So a call can prove nothing was lost:

* inbound: ``caller_samples_in`` (ACS rate, silent frames included), converted to the
  Voice Live input rate, must equal what was appended, plus what waits in the
  caller buffer, plus what the buffer dropped on purpose (a counted loss);
* outbound: each response's audio, converted to the ACS rate
  (``agent_samples_expected``), is either sent (``agent_samples_sent``), dropped on
  purpose by barge-in (``samples_dropped_by_barge_in``) or still queued; a call
  that ends with audio queued is not conserved. Zero padding of a response's last
  frame is counted apart (``padding_samples_sent``).

The parts (:mod:`~voicebridge.core.uplink`, :mod:`~voicebridge.core.playout`,
:mod:`~voicebridge.core.session` and the facade) count into one :class:`Counters`;
only :meth:`Accounting.report` shows them to the outside.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from voicebridge.core.stats import Histogram

__all__ = ["Accounting", "Counters", "out_samples"]


def out_samples(n_in: int, in_hz: int, out_hz: int) -> int:
    """Samples a whole stream of ``n_in`` input samples resamples to (ceil)."""
    return -(-n_in * out_hz // in_hz)


@dataclass
class Counters:
    """Everything the bridge counts. Plain ints so a report is a dict away."""

    acs_messages_in: int = 0
    acs_frames_in: int = 0
    acs_silent_frames: int = 0
    acs_malformed: int = 0
    acs_unknown_kinds: int = 0
    dtmf_tones: int = 0
    caller_samples_in: int = 0
    caller_samples_buffered_dropped: int = 0
    voicelive_samples_appended: int = 0
    voicelive_events_in: int = 0
    voicelive_malformed: int = 0
    voicelive_errors: Counter[str] = field(default_factory=Counter)
    voicelive_other_types: Counter[str] = field(default_factory=Counter)
    agent_samples_in: int = 0
    agent_samples_expected: int = 0
    agent_samples_sent: int = 0
    padding_samples_sent: int = 0
    prompt_samples_sent: int = 0
    samples_dropped_by_barge_in: int = 0
    late_deltas_dropped: int = 0
    acs_frames_out: int = 0
    stop_audio_sent: int = 0
    barge_ins: int = 0
    responses_created: int = 0
    responses_done: Counter[str] = field(default_factory=Counter)
    turn_anomalies: int = 0
    guard_rejections: int = 0
    # Call control
    tool_calls: int = 0
    tool_errors: int = 0  # bad arguments, unknown tool, failure or timeout
    dtmf_submitted: int = 0
    dtmf_actions: int = 0
    no_input_reprompts: int = 0
    # Token usage, summed over every response.done (response.usage)
    tokens_input_text: int = 0
    tokens_input_audio: int = 0
    tokens_input_cached: int = 0
    tokens_output_text: int = 0
    tokens_output_audio: int = 0


class Accounting:
    """The counters of one call, per-session sample totals and the outbound latency."""

    __slots__ = ("agent_in_per_session", "appended_per_session", "counters", "outbound_latency_ms")

    def __init__(self) -> None:
        self.counters = Counters()
        self.outbound_latency_ms = Histogram()  # per ACS frame: how late it was sent
        # Per Voice Live session: caller samples appended and agent samples received,
        # so what a dropped socket swallowed can be told apart from a bridge bug.
        self.appended_per_session: list[int] = []
        self.agent_in_per_session: list[int] = []

    def new_session(self) -> None:
        """A Voice Live session opened: its per-session totals start at zero."""
        self.appended_per_session.append(0)
        self.agent_in_per_session.append(0)

    def report(
        self,
        *,
        acs_hz: int,
        voicelive_in_hz: int,
        voicelive_out_hz: int,
        buffered_samples: int,
        queued_samples: int,
        guard: dict[str, Any],
        unsent_at_hangup: int = 0,
    ) -> dict[str, Any]:
        """Counters and the conservation verdict (meaningful once the call finished).

        ``buffered_samples``: caller audio still held for the next session (Voice Live
        input rate); ``queued_samples``: agent audio queued but never sent (ACS rate), a
        loss; ``unsent_at_hangup``: agent audio still queued when the other party hung up
        (or was transferred), which had nobody left to reach: counted, not a loss.
        """
        c = self.counters
        inbound_expected = out_samples(c.caller_samples_in, acs_hz, voicelive_in_hz)
        # Caller audio dropped while waiting for the session is a counted loss.
        inbound_accounted = (
            c.voicelive_samples_appended + buffered_samples + c.caller_samples_buffered_dropped
        )
        outbound_accounted = (
            c.agent_samples_sent + c.samples_dropped_by_barge_in + queued_samples + unsent_at_hangup
        )
        return {
            "acs_hz": acs_hz,
            "sessions": {
                "count": len(self.appended_per_session),
                "appended": list(self.appended_per_session),
                "agent_in": list(self.agent_in_per_session),
            },
            "voicelive_in_hz": voicelive_in_hz,
            "voicelive_out_hz": voicelive_out_hz,
            "inbound": {
                "caller_samples_in": c.caller_samples_in,
                "voicelive_samples_appended": c.voicelive_samples_appended,
                "expected_appended": inbound_expected,
                "buffered_dropped": c.caller_samples_buffered_dropped,
                "conserved": inbound_expected == inbound_accounted,
            },
            "outbound": {
                "agent_samples_in": c.agent_samples_in,
                "agent_samples_expected": c.agent_samples_expected,
                "agent_samples_sent": c.agent_samples_sent,
                "samples_dropped_by_barge_in": c.samples_dropped_by_barge_in,
                "queued_unsent": queued_samples,
                "unsent_at_hangup": unsent_at_hangup,
                "padding_samples_sent": c.padding_samples_sent,
                "conserved": c.agent_samples_expected == outbound_accounted and queued_samples == 0,
            },
            "counters": {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(c).items()},
            "guard": guard,
            "outbound_latency_ms": self.outbound_latency_ms.summary(),
        }
