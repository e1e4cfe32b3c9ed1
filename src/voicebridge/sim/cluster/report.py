"""What happened to each call across the nodes: the calls of ``cluster-report.json``.

Sources, each read as it is:

* every node's conversation logs (``LOG_DIR``, one JSONL file per call and node, named by
  correlation id): a node that held the call's media wrote a ``counters`` line (its
  *segment* of the call) and ends with ``call_ended``; ``outcome`` ``moved`` means the call
  left that node for another and is not an end;
* the call's Redis record (``vb:call:{cid}``, matched by ``corr``), for the outcome when
  no node could write one (a node killed with SIGKILL writes nothing);
* the fake ACS's view of the call (samples sent, heard, flushed; which node answered it,
  took each media socket and each callback);
* the emulator's sessions of the call (its ``x-ms-client-request-id``).

**Conservation across nodes** (:func:`conservation`) sums the segments the nodes logged
and compares them with the fake and the emulator hop by hop, as the single-node
``voicebridge simulate`` does per Voice Live session. A segment held by a node that was
killed is not logged: the hops that would need its counts are reported as ``None`` (not
countable) and named in ``uncounted``; ``conserved`` is then the verdict over the hops
that can be counted, and ``countable`` says whether that was all of them. Audio in flight
on a media socket that was replaced (a re-dial, a migration) is counted as lost in
transit, not as a failure.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from voicebridge.core.accounting import out_samples

__all__ = [
    "call_report",
    "conservation",
    "final_outcome",
    "metric_sums",
    "node_summary",
    "read_segments",
]

#: Outcomes that do not end a call (the call went on elsewhere).
NOT_AN_END = frozenset({"moved"})


def read_segments(node: str, log_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """One node's conversation logs, by correlation id: per file ``node``, ``file``,
    ``outcome`` and ``ended_ts`` (of its ``call_ended`` line, else None), ``counters``,
    ``inbound``, ``outbound`` (of its ``counters`` line, else None: the node never held
    the call's media), ``callbacks`` (``callback`` lines), ``events`` (count per event)."""
    out: dict[str, list[dict[str, Any]]] = {}
    files = sorted(log_dir.glob("*.jsonl")) if log_dir.is_dir() else []
    for path in files:
        corr = path.stem.split("-", 1)[1] if "-" in path.stem else path.stem
        segment: dict[str, Any] = {
            "node": node,
            "file": str(path),
            "outcome": None,
            "ended_ts": None,
            "counters": None,
            "inbound": None,
            "outbound": None,
            "callbacks": 0,
            "events": Counter(),
        }
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                event = str(record.get("event"))
                segment["events"][event] += 1
                if event == "counters":
                    for key in ("counters", "inbound", "outbound"):
                        segment[key] = record.get(key)
                elif event == "callback":
                    segment["callbacks"] += 1
                elif event == "call_ended":
                    segment["outcome"] = record.get("outcome")
                    segment["ended_ts"] = record.get("ts")
        out.setdefault(corr, []).append(segment)
    return out


def final_outcome(
    segments: list[dict[str, Any]], record: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """``(outcome, source)``: the last (by time) ``call_ended`` outcome in the nodes'
    logs that is not ``moved``; else the Redis record's ``outcome``; else None."""
    ended = [s for s in segments if s["outcome"] is not None and s["outcome"] not in NOT_AN_END]
    if ended:
        last = max(ended, key=lambda s: str(s["ended_ts"] or ""))
        return str(last["outcome"]), f"log:{last['node']}"
    if record and record.get("outcome") and record["outcome"] not in NOT_AN_END:
        return str(record["outcome"]), "redis"
    return None, None


def _sum(segments: Iterable[dict[str, Any]], part: str, key: str) -> int:
    return sum(int((s.get(part) or {}).get(key, 0) or 0) for s in segments)


def _session_counts(sessions: list[Any]) -> tuple[int, int, bool]:
    """``(input samples, output samples, every session closed cleanly)``."""
    clean = all(getattr(s, "close_code", None) in (1000, 1001, None) for s in sessions)
    return (
        sum(int(s.input_samples) for s in sessions),
        sum(int(s.output_samples) for s in sessions),
        clean,
    )


def conservation(
    call: Any,
    segments: list[dict[str, Any]],
    sessions: list[Any],
    *,
    voicelive_rate: int,
    unlogged_nodes: list[str],
) -> dict[str, Any]:
    """Every sample of the call counted at each hop, summed over the nodes' segments
    (see the module docstring). ``unlogged_nodes``: nodes that held the call's media and
    left no ``counters`` line (killed)."""
    logged = [s for s in segments if s["counters"] is not None]
    counts = _counts(call, logged, sessions, voicelive_rate)
    checks = _checks(call, logged, sessions, counts, unlogged_nodes)
    uncounted = [k for k, v in checks.items() if v is None]
    return counts | {
        "unlogged_nodes": list(unlogged_nodes),
        "checks": checks,
        "uncounted": uncounted,
        "countable": not uncounted,
        "conserved": all(v for v in checks.values() if v is not None),
    }


def _counts(
    call: Any, logged: list[dict[str, Any]], sessions: list[Any], voicelive_rate: int
) -> dict[str, Any]:
    """The call's sample counts at each hop: the fake's, the logged segments' summed,
    the emulator's sessions' summed."""
    sent = int(call.frame_samples * call.frames_sent)
    caller_in = _sum(logged, "counters", "caller_samples_in")
    vl_in, vl_out, _ = _session_counts(sessions)
    return {
        "caller_samples_sent": sent,
        "caller_samples_lost_in_acs_gaps": int(call.caller_samples_lost_in_gap),
        "caller_samples_into_bridges": caller_in,
        "lost_in_transit_to_bridges": sent - caller_in if logged else None,
        "voicelive_samples_appended": _sum(logged, "counters", "voicelive_samples_appended"),
        "voicelive_samples_received": vl_in,
        "voicelive_samples_expected": sum(
            out_samples(
                int((s["counters"] or {}).get("caller_samples_in", 0)),
                int(call.acs_rate),
                voicelive_rate,
            )
            for s in logged
        ),
        "agent_samples_from_voicelive": vl_out,
        "agent_samples_into_bridges": _sum(logged, "counters", "agent_samples_in"),
        "agent_samples_to_acs": sum(
            int((s["outbound"] or {}).get("agent_samples_sent", 0))
            + int((s["outbound"] or {}).get("padding_samples_sent", 0))
            + int((s["counters"] or {}).get("prompt_samples_sent", 0))
            for s in logged
        ),
        "agent_samples_received_by_acs": int(call.received_samples),
        "caller_samples_heard": int(call.samples_heard),
        "samples_flushed_by_stop_audio": sum(n for _, n in call.stop_audio),
        "samples_flushed_by_socket_drop": int(call.samples_flushed_by_drop),
        "samples_dropped_by_barge_in": _sum(logged, "outbound", "samples_dropped_by_barge_in"),
    }


def _checks(
    call: Any,
    logged: list[dict[str, Any]],
    sessions: list[Any],
    n: dict[str, Any],
    unlogged_nodes: list[str],
) -> dict[str, bool | None]:
    """Each hop's verdict from :func:`_counts`; None where a killed node's segment would
    be needed. Audio in flight on a replaced socket may be lost (``<=``), never made up."""
    sent, caller_in = n["caller_samples_sent"], n["caller_samples_into_bridges"]
    appended, vl_in = n["voicelive_samples_appended"], n["voicelive_samples_received"]
    agent_in, vl_out = n["agent_samples_into_bridges"], n["agent_samples_from_voicelive"]
    to_acs, received = n["agent_samples_to_acs"], n["agent_samples_received_by_acs"]
    vl_clean = _session_counts(sessions)[2]
    moved = int(call.media_sockets) > 1 or bool(unlogged_nodes) or len(logged) > 1
    whole = not unlogged_nodes and bool(logged)
    return {
        # A killed node's segment cannot be counted; no segment at all while the fake
        # sent audio means nobody accounted for it.
        "segments_logged": None if unlogged_nodes else bool(logged) or sent == 0,
        "bridge_accounting": all(
            bool((s["inbound"] or {}).get("conserved"))
            and bool((s["outbound"] or {}).get("conserved"))
            for s in logged
        )
        if logged
        else None,
        "caller_to_bridge": (caller_in == sent or (moved and caller_in <= sent))
        if logged
        else None,
        "bridge_to_voicelive": (vl_in == appended if vl_clean else vl_in <= appended)
        if whole
        else None,
        "voicelive_to_bridge": (agent_in == vl_out if vl_clean else agent_in <= vl_out)
        if whole
        else None,
        "bridge_to_acs": (to_acs == received or (moved and to_acs >= received)) if whole else None,
        "acs_played_or_flushed": call.samples_heard
        + n["samples_flushed_by_stop_audio"]
        + call.samples_flushed_by_drop
        + call.queued_samples
        == received,
    }


def _attr_list(call: Any, name: str) -> list[Any] | None:
    value = getattr(call, name, None)
    return list(value) if value is not None else None


def call_report(
    call: Any,
    segments: list[dict[str, Any]],
    record: dict[str, Any] | None,
    sessions: list[Any],
    *,
    voicelive_rate: int,
    killed: set[str],
) -> dict[str, Any]:
    """One call's entry in ``calls[]`` (fields named in the module docstring of
    :mod:`voicebridge.sim.cluster.simulate`)."""
    outcome, source = final_outcome(segments, record)
    media_by = _attr_list(call, "media_by")
    unlogged = unlogged_nodes(call, segments, killed)
    conv = conservation(
        call, segments, sessions, voicelive_rate=voicelive_rate, unlogged_nodes=unlogged
    )
    return {
        "correlation_id": call.correlation_id,
        "call_connection_id": call.call_connection_id,
        "outcome": outcome,
        "outcome_source": source,
        "outcomes_by_node": [
            {"node": s["node"], "outcome": s["outcome"], "ts": s["ended_ts"]}
            for s in sorted(segments, key=lambda s: str(s["ended_ts"] or ""))
            if s["outcome"] is not None
        ],
        "fake_acs_end_reason": call.end_reason,
        "incoming_call_status": call.incoming_call_status,
        "answered_by": getattr(call, "answered_by", None),
        "media_by": media_by,
        "callbacks_by": _attr_list(call, "callbacks_by"),
        "media_sockets": int(call.media_sockets),
        "media_refused_status": getattr(call, "media_refused_status", None),
        "played_files": _attr_list(call, "played_files"),
        "voicelive_sessions": len(sessions),
        "conversation_ids": sorted({str(s.conversation_id) for s in sessions}),
        "conversation_kept": conversation_kept(sessions),
        "redis": {k: v for k, v in (record or {}).items() if k in _RECORD_FIELDS} or None,
        "conserved": conv["conserved"],
        "audio": conv,
        "media_gaps_s": media_gaps_s(call),
        "timeline": [[round(float(t), 3), what, detail] for t, what, detail in call.timeline],
    }


def unlogged_nodes(call: Any, segments: list[dict[str, Any]], killed: set[str]) -> list[str]:
    """Killed nodes that held the call's media and so logged no segment of it: from the
    fake's ``media_by`` when the nodes name themselves; otherwise inferred, when the call
    had more media sockets than logged segments (a killed node took the others)."""
    logged = [s for s in segments if s["counters"] is not None]
    logged_nodes = {s["node"] for s in logged}
    media_by = [str(n) for n in (getattr(call, "media_by", None) or []) if n is not None]
    if media_by:
        return sorted({n for n in media_by if n in killed and n not in logged_nodes})
    if killed and int(call.media_sockets) > len(logged):
        return sorted(killed - logged_nodes)
    return []


_RECORD_FIELDS = ("state", "owner", "gen", "outcome", "answered_by", "we_hung_up")


def conversation_kept(sessions: list[Any]) -> bool | None:
    """Whether every Voice Live session after the call's first one continued its
    conversation: the same conversation id (agent mode), or message items replayed
    before its first response (model mode). None with one session or none."""
    if len(sessions) < 2:
        return None
    first = sessions[0].conversation_id
    for s in sessions[1:]:
        if s.conversation_id == first or getattr(s, "resumed", False):
            continue
        replayed = False
        for message in s.received:
            kind = message.get("type")
            if kind == "response.create":
                break
            if kind == "conversation.item.create":
                replayed = True
                break
        if not replayed:
            return False
    return True


#: Fake ACS timeline entries that end a media socket.
_SOCKET_ENDS = ("media_dropped", "media_closed", "media_closed_by_bridge")


def media_gaps_s(call: Any) -> list[float]:
    """Per media socket after the first: call seconds between the end of the previous
    socket (dropped, closed) and this one's connection, from the fake's timeline: how
    long the caller had no media path during a re-dial or a migration."""
    gaps: list[float] = []
    last_end: float | None = None
    for t, what, detail in call.timeline:
        if what in _SOCKET_ENDS:
            last_end = float(t)
        elif what == "media_connected" and int(detail.get("socket", 1)) > 1:
            if last_end is not None:
                gaps.append(round(float(t) - last_end, 3))
            last_end = None
    return gaps


def node_summary(
    name: str,
    segments: dict[str, list[dict[str, Any]]],
    calls: list[Any],
    *,
    returncode: int | None,
    balancer: dict[str, Any] | None,
    log_path: Path,
) -> dict[str, Any]:
    """One node's line in ``nodes``: what it answered, owned and ended, what the fake
    saw it take, the balancer's counts, and the error lines of its own log."""
    mine = [s for segs in segments.values() for s in segs]
    return {
        "node": name,
        "exit_status": returncode,
        "answered": sum(1 for c in calls if getattr(c, "answered_by", None) == name),
        "media_sockets": sum(
            1 for c in calls for n in (getattr(c, "media_by", None) or []) if n == name
        ),
        "callbacks": sum(
            1
            for c in calls
            for cb in (getattr(c, "callbacks_by", None) or [])
            if isinstance(cb, dict) and cb.get("node") == name
        ),
        "segments_owned": sum(1 for s in mine if s["counters"] is not None),
        "outcomes": dict(Counter(str(s["outcome"]) for s in mine if s["outcome"] is not None)),
        "callback_lines": sum(int(s["callbacks"]) for s in mine),
        "balancer": balancer,
        "log": scan_node_log(log_path),
    }


def scan_node_log(path: Path) -> dict[str, Any]:
    """Counts of ERROR lines and unhandled exceptions in a node's output, with the first
    few of each."""
    errors: list[str] = []
    unhandled: list[str] = []
    n_errors = n_unhandled = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if "Traceback (most recent call last)" in line or '"exception"' in line:
            n_unhandled += 1
            if len(unhandled) < 5:
                unhandled.append(line[:300])
        if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line:
            n_errors += 1
            if len(errors) < 5:
                errors.append(line[:300])
    return {"lines": len(lines), "errors": n_errors, "unhandled": n_unhandled} | {
        "first_errors": errors,
        "first_unhandled": unhandled,
    }


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})?\s+(?P<value>\S+)")


def metric_sums(texts: Iterable[str], prefix: str = "voicebridge_") -> dict[str, float]:
    """Prometheus text from several nodes, each sample summed across them by name and
    labels (``name{labels}``): counters and histogram buckets add up across nodes."""
    sums: dict[str, float] = {}
    for text in texts:
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match is None or not match["name"].startswith(prefix):
                continue
            try:
                value = float(match["value"])
            except ValueError:
                continue
            key = match["name"] + (match["labels"] or "")
            sums[key] = sums.get(key, 0.0) + value
    return sums


def histogram_quantile(sums: dict[str, float], name: str, q: float, **labels: str) -> float | None:
    """The ``q`` quantile (upper bucket bound) of histogram ``name`` in ``sums``, over
    the series with these ``labels`` (the others merged); None without observations."""
    buckets: dict[float, float] = {}
    pattern = re.compile(re.escape(name) + r'_bucket\{(?:[^}]*,)?le="(?P<le>[^"]+)"')
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in sums.items():
        match = pattern.match(key)
        if match is not None and all(w in key for w in wanted):
            le = float("inf") if match["le"] == "+Inf" else float(match["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    if not buckets:
        return None
    total = buckets.get(float("inf"), max(buckets.values()))
    if total <= 0:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return None
