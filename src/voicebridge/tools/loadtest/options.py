"""What one load test is: :class:`LoadOptions`, the pass marks, and the plan of its calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voicebridge.tools.loadtest import soak

#: Pass mark for relay latency p99, per direction (issue 5).
P99_LIMIT_MS = 10.0
#: The load side kept up while its loop lag and caller-frame lateness (p99, ms) stay at
#: or under this: above it, frames reach the bridge in clumps and the figures describe
#: the generator as much as the bridge.
LOAD_SIDE_LIMIT_MS = 10.0
#: Wall seconds for a process to start listening, and for the bridge to wind its calls
#: down after the last caller hung up.
STARTUP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0


@dataclass
class LoadOptions:
    """One load test.

    ``seconds`` is caller audio per call (media-clock seconds); a call lasts a little
    longer, as the caller hangs up 1 s after the agent's last word. ``ramp_s`` spreads
    call starts evenly over that many wall seconds (``None``: ``min(5, seconds / 4)``).
    ``speed`` runs the bridge, the emulator and the callers that many times real time.
    ``bridge_env`` is added last to the bridge's environment (to compare settings).

    ``faults`` (``NAME[=ARG]`` specs), ``fault_fraction`` and ``fault_seed`` sprinkle
    faults over the calls (:func:`voicebridge.tools.loadtest.soak.plan_faults`).
    ``leak_check`` measures the bridge idle before the first call and ``settle_s`` after
    the last one ended, and scans its logs (:mod:`voicebridge.tools.loadtest.soak`).

    ``machine_probe`` also times the machine itself on the bridge's CPU, before, during
    and after the calls (:mod:`voicebridge.tools.loadtest.machine_probe`); off by
    default, as it measures the machine, not the bridge.
    """

    calls: int = 10
    seconds: float = 20.0
    ramp_s: float | None = None
    speed: float = 1.0
    generators: int = 1
    acs_rate: int = 16000
    voicelive_rate: int = 24000
    pin: bool = True
    bridge_env: dict[str, str] = field(default_factory=dict)
    p99_limit_ms: float = P99_LIMIT_MS
    progress: Callable[[str], None] | None = None
    faults: list[str] = field(default_factory=list)
    fault_fraction: float = soak.DEFAULT_FAULT_FRACTION
    fault_seed: int = 0
    leak_check: bool = False
    settle_s: float = soak.SETTLE_S
    machine_probe: bool = False
    #: Through the offline cluster: this many bridge nodes behind HAProxy with Redis
    #: (:mod:`voicebridge.tools.loadtest.cluster`); None: one bridge process.
    replicas: int | None = None

    @property
    def ramp(self) -> float:
        return min(5.0, self.seconds / 4) if self.ramp_s is None else self.ramp_s

    @property
    def timeout_s(self) -> float:
        """Wall seconds after the first call before a call that has not ended fails: the
        audio and the longest shipped answer at ``speed``, the ramp, and a wide margin."""
        return (self.seconds + 15.0) / self.speed + self.ramp + 60.0

    def say(self, message: str) -> None:
        """Pass ``message`` to ``progress``, if there is one."""
        if self.progress is not None:
            self.progress(message)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option that is out of range."""
        if self.calls < 1:
            raise ValueError("--calls must be at least 1")
        if self.seconds <= 0 or self.speed <= 0:
            raise ValueError("--seconds and --speed must be positive")
        if self.ramp < 0:
            raise ValueError("--ramp must not be negative")
        if not 1 <= self.generators <= 32:
            raise ValueError("--generators must be 1..32")
        if not 0.0 <= self.fault_fraction <= 1.0:
            raise ValueError("--fault-fraction must be within 0..1")
        if self.settle_s < 0:
            raise ValueError("--settle must not be negative")
        soak.parse_specs(self.faults, self.seconds)
        if self.replicas is not None:
            if self.replicas < 1:
                raise ValueError("--replicas must be at least 1")
            if self.faults or self.leak_check or self.machine_probe:
                raise ValueError(
                    "--replicas does not combine with --fault, --soak, --leak-check "
                    "or --machine-probe"
                )

    def fault_plan(self) -> list[soak.PlannedFault | None] | None:
        """Per call index its fault or None; None (no plan at all) without ``faults``."""
        if not self.faults:
            return None
        specs = soak.parse_specs(self.faults, self.seconds)
        return soak.plan_faults(self.calls, specs, self.fault_fraction, self.fault_seed)


def call_plan(
    options: LoadOptions, faults: list[soak.PlannedFault | None] | None = None
) -> list[list[dict[str, Any]]]:
    """Per generator, its calls (dealt round-robin): ``index``, ``start_s`` (evenly over
    the ramp, wall seconds after t0) and ``phase`` (where in the caller recording the call
    starts, evenly spread over it). With a fault plan (:meth:`LoadOptions.fault_plan`)
    every call also gets its ``call_connection_id`` (:func:`~.soak.call_ids`) and
    ``expect_end`` (caller-side ends that are clean for its fault), and a call with an
    ``acs-*`` fault its ``faults``."""
    plan: list[list[dict[str, Any]]] = [[] for _ in range(options.generators)]
    n = options.calls
    ids = soak.call_ids(n, options.fault_seed) if faults is not None else []
    for i in range(n):
        spec: dict[str, Any] = {"index": i, "start_s": options.ramp * i / n, "phase": i / n}
        if faults is not None:
            fault = faults[i]
            spec["call_connection_id"] = ids[i]
            spec["expect_end"] = list((fault.expected if fault else soak.DEFAULT_EXPECTED)[1])
            if fault is not None and fault.target == "acs":
                spec["faults"] = {fault.name: fault.value}
        plan[i % options.generators].append(spec)
    return plan


def voicelive_call_faults(
    options: LoadOptions, faults: list[soak.PlannedFault | None]
) -> dict[str, dict[str, Any]]:
    """The emulator's ``call_faults``: call connection id -> its ``voicelive-*`` fault."""
    ids = soak.call_ids(options.calls, options.fault_seed)
    return {
        ids[i]: {f.name: f.value}
        for i, f in enumerate(faults)
        if f is not None and f.target == "voicelive"
    }
