"""Named call-control scenarios for ``voicebridge simulate --scenario NAME``.

Each builds a caller recording from the shipped one (its first utterance, then silence)
with a sidecar script (``X.json`` beside ``X.wav``: what the emulator "hears", and keys
the caller presses), plus the bridge settings and faults that show one feature:

========================  ==========================================================
``hangup``                the caller says goodbye; the agent says goodbye and ends the
                          call once it has been heard (``agent_hung_up``)
``transfer``              the caller asks for a person; announcement, transfer accepted
                          (``transferred``)
``transfer-failed``       as ``transfer``, but nobody answers: the agent tells the
                          caller and the call goes on (``caller_hung_up``)
``slow-tool``             the transfer takes 4 s: the caller hears "One moment, please"
                          instead of dead air, then is transferred
``dtmf``                  the caller types 1234# on the keypad: the keys interrupt the
                          agent and reach it as one turn (never in the logs)
``dtmf-action``           the caller presses 0, configured as "transfer": no model needed
``silence``               the caller says nothing: two re-prompts, then goodbye and
                          hang-up (``no_input``)
========================  ==========================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from voicebridge.sim.wav import read_wav, write_wav

__all__ = ["SCENARIOS", "Scenario", "build", "scenario_help", "write_caller"]

#: Where the shipped recording's utterances are (sim/data/caller.json).
FIRST_TURN_END_S = 12.0
TRANSFER_TARGETS = "default=+15557654321,billing=+15557654322"


@dataclass(frozen=True)
class Scenario:
    help: str
    #: the caller's first utterance (the shipped one) plays; then what it says at its
    #: second turn (None: nothing), and keys pressed at 13 s
    first_turn: bool = True
    second_turn: str | None = None
    keys: str = ""
    seconds: float = 40.0
    settings: dict[str, Any] = field(default_factory=dict)
    faults: tuple[str, ...] = ()
    expect: str = "caller_hung_up"


_TRANSFER = {"transfer_targets": TRANSFER_TARGETS}

SCENARIOS: dict[str, Scenario] = {
    "hangup": Scenario(
        "the agent ends the call after its goodbye",
        second_turn="Thanks, that's all. Goodbye!",
        expect="agent_hung_up",
    ),
    "transfer": Scenario(
        "transfer to a person, accepted",
        second_turn="Can I talk to a person, please?",
        settings=_TRANSFER,
        expect="transferred",
    ),
    "transfer-failed": Scenario(
        "transfer to a person fails; the call goes on",
        second_turn="Can I talk to a person, please?",
        settings=_TRANSFER,
        faults=("acs-transfer-fail",),
        seconds=30.0,
    ),
    "slow-tool": Scenario(
        "a slow transfer: a filler instead of dead air",
        second_turn="Can I talk to a person, please?",
        settings=_TRANSFER,
        faults=("acs-transfer-slow=4",),
        expect="transferred",
    ),
    "dtmf": Scenario(
        "keypad digits reach the agent as one turn",
        keys="1234#",
        seconds=30.0,
    ),
    "dtmf-action": Scenario(
        "a key that transfers without the model",
        keys="0",
        settings={**_TRANSFER, "dtmf_actions": "0=transfer"},
        expect="transferred",
    ),
    "silence": Scenario(
        "a silent caller is re-prompted twice, then let go",
        first_turn=False,
        seconds=60.0,
        settings={"no_input_reprompt_s": 6.0},
        expect="no_input",
    ),
}


def _shipped(name: str) -> Any:
    return resources.files("voicebridge.sim") / "data" / name


def write_caller(scenario: Scenario, directory: Path) -> Path:
    """The scenario's caller WAV and its sidecar script, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pcm, rate = read_wav(_shipped("caller.wav"))
    segments: list[dict[str, Any]] = json.loads(_shipped("caller.json").read_text())
    total = int(scenario.seconds * rate)
    out = np.zeros(total, dtype=np.int16)
    script: list[dict[str, Any]] = []
    if scenario.first_turn:
        first = segments[0]
        cut = int(FIRST_TURN_END_S * rate)
        out[:cut] = pcm[:cut]
        script.append(dict(first))
    if scenario.second_turn is not None:
        second = segments[1]  # the shipped second utterance, heard as this text
        start, end = int(second["start_s"] * rate), int(second["end_s"] * rate) + rate // 2
        out[start:end] = pcm[start:end]
        script.append({**second, "text": scenario.second_turn, "barge_in": False})
    if scenario.keys:
        script.append({"start_s": 13.0, "end_s": 13.0, "text": "", "dtmf": scenario.keys})
    path = directory / "caller.wav"
    write_wav(path, out, rate)
    path.with_suffix(".json").write_text(json.dumps(script, indent=2))
    return path


def build(name: str, options: Any) -> Any:
    """``options`` (a SimOptions) for scenario ``name``: its caller (written under
    ``options.out``), settings and faults, before the options' own."""
    scenario = SCENARIOS[name]
    caller = write_caller(scenario, (options.out or Path("sim-out")) / "scenario")
    return replace(
        options,
        caller_audio=caller,
        settings={**scenario.settings, **options.settings},
        faults=[*scenario.faults, *options.faults],
    )


def scenario_help() -> str:
    """One line per scenario, for ``--help``."""
    width = max(len(n) for n in SCENARIOS)
    return "\n".join(f"{n:<{width}}  {s.help} (outcome {s.expect})" for n, s in SCENARIOS.items())
