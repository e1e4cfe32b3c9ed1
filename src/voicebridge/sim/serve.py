"""``python -m voicebridge.sim.serve [--host H] [--port P] --speed S``: the bridge exactly
as ``voicebridge serve`` runs it (settings from the environment, the same uvicorn
options, GC freeze, drain on SIGTERM: :func:`voicebridge.server.run`), except that media
time runs ``S`` times real time (:class:`~voicebridge.sim.clock.ScaledClock`).

For the load test's bridge process; it lives in ``sim/``, so the production image has
no way to run a scaled clock.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from voicebridge import server
from voicebridge.sim.clock import ScaledClock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge.sim.serve",
        description="voicebridge serve with the simulator's media clock",
    )
    server.configure(parser)
    parser.add_argument(
        "--speed", type=float, default=1.0, help="media time runs X times real time"
    )
    args = parser.parse_args(argv)
    if not 0 < args.speed <= 100:
        parser.error("--speed must be in (0, 100]")
    return server.run(
        args,
        clock=None if args.speed == 1.0 else ScaledClock(args.speed),
        worker_program=("-m", "voicebridge.sim.serve", "--speed", repr(args.speed)),
    )


if __name__ == "__main__":
    sys.exit(main())
