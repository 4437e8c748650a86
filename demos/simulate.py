"""Simulate many tenants over virtual hours: upstream calls, waits, hit rate, least validity.

    python demos/simulate.py                      # 1,000 tenants x 24 virtual hours
    python demos/simulate.py --tenants 200 --hours 6 --failure-rate 0.05 --outage 3:3.5
    python demos/simulate.py --plot day.png       # and the day hour by hour (needs matplotlib)

Public API only (``actors.sim``); ``python -m actors simulate`` has more knobs and a progress bar.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from actors.sim import SimulationConfig, parse_outage, run_simulation


def outage(text: str) -> tuple[float, float]:
    try:
        return parse_outage(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--outage", type=outage, action="append", default=[])
    parser.add_argument("--plot", metavar="PNG", help="draw the run hour by hour into this PNG")
    args = parser.parse_args()
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error('--plot needs matplotlib: pip install "lark-token-actors[plot]"')
    try:
        config = SimulationConfig(
            tenants=args.tenants,
            hours=args.hours,
            failure_rate=args.failure_rate,
            outages=tuple(args.outage),
        )
    except ValueError as exc:
        parser.error(str(exc))
    report = run_simulation(config)
    print(report.render())
    print()
    print(report.metrics.report())
    if args.plot:
        report.plot(args.plot)
        print(f"\nplot written to {args.plot}")


if __name__ == "__main__":
    main()
