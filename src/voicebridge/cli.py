"""The ``voicebridge`` command: one subcommand per module, imported only when used.

Each command module exposes ``configure(parser)`` (add its arguments) and
``run(args) -> int`` (do the work, return the exit status). Importing lazily keeps
``voicebridge --help`` instant and keeps simulator-only dependencies out of ``serve``.

The production image ships ``serve``, ``doctor`` and ``call`` only (``voicebridge.sim`` and
``voicebridge.tools`` are left out: see the Dockerfile); its other commands say so and
exit 2 instead of failing on an import.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("voicebridge.server", "run the bridge service (FastAPI on uvicorn)"),
    "simulate": ("voicebridge.sim.simulate", "run a whole phone call offline and write a report"),
    "doctor": (
        "voicebridge.doctor",
        "check the configured Voice Live, ACS and public URL before the first real call",
    ),
    "call": ("voicebridge.dial", "place one outbound call through a running bridge"),
    "phone": (
        "voicebridge.phone.command",
        "talk to the agent from your browser: the bridge with the browser phone on loopback",
    ),
    "emulator": ("voicebridge.sim.emulator", "run the local Voice Live emulator"),
    "fake-acs": ("voicebridge.sim.fake_acs", "run the local fake ACS (Call Automation + media)"),
    "resample": ("voicebridge.tools.resample", "stream a WAV through the production resampler"),
    "bench": ("voicebridge.tools.bench", "per-frame CPU cost and added latency of the core"),
    "loadtest": (
        "voicebridge.tools.loadtest",
        "N concurrent simulated calls against one bridge process",
    ),
}


#: Where the commands that are not in the production image come from.
NOT_INSTALLED_HINT = (
    "this installation has the service only (serve, doctor, call), like the production image; "
    "the simulator and the developer tools come with a source install: pip install -e '.[dev]'"
)


def installed(name: str) -> bool:
    """Whether command ``name``'s module is present (without importing it)."""
    module = COMMANDS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (voicebridge.sim, .tools) is missing
        return False


def load(name: str) -> ModuleType:
    """Command ``name``'s module; exits with status 2 and one line saying so if it is not
    part of this installation. A missing third-party module (a dependency) is not
    hidden: it raises as it is."""
    module = COMMANDS[name][0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module and not module.startswith(missing + "."):
            raise
    print(f"voicebridge: '{name}' is not installed here: {NOT_INSTALLED_HINT}", file=sys.stderr)
    raise SystemExit(2)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebridge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        if not installed(name):
            help_text += " (not installed here)"
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command pays for its imports
            load(name).configure(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    return int(load(args.command).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
