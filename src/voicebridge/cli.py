"""The ``voicebridge`` command: one subcommand per module, imported only when used.

Each command module exposes ``configure(parser)`` (add its arguments) and
``run(args) -> int`` (do the work, return the exit status). Importing lazily keeps
``voicebridge --help`` instant and keeps simulator-only dependencies out of ``serve``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("voicebridge.server", "run the bridge service (FastAPI on uvicorn)"),
    "simulate": ("voicebridge.sim.simulate", "run a whole phone call offline and write a report"),
    "doctor": (
        "voicebridge.doctor",
        "check the configured Voice Live, ACS and public URL before the first real call",
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


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebridge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command pays for its imports
            importlib.import_module(module).configure(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
