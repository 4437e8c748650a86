"""Simulate many tenants over virtual hours: upstream calls, waits, hit rate, least validity.

python demos/simulate.py                      # 1,000 tenants x 24 virtual hours
python demos/simulate.py --tenants 200 --hours 6 --failure-rate 0.05 --outage 3:3.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from actors import RefreshPolicy
from actors.sim import SimulationConfig, run_simulation


def parse_outage(text: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    try:
        window = (float(start), float(end))
    except ValueError:
        msg = f"outage must look like START_HOUR:END_HOUR, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if window[0] >= window[1]:
        msg = f"outage must end after it starts, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--gets-per-step", type=int, default=100)
    parser.add_argument("--step", type=float, default=60.0, help="virtual seconds per step")
    parser.add_argument("--lifetime", type=float, default=7200.0, help="token lifetime (s)")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--outage", type=parse_outage, action="append", default=[])
    parser.add_argument("--max-concurrent-fetches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = SimulationConfig(
        tenants=args.tenants,
        hours=args.hours,
        gets_per_step=args.gets_per_step,
        step=args.step,
        token_lifetime=args.lifetime,
        failure_rate=args.failure_rate,
        outages=tuple(args.outage),
        policy=RefreshPolicy(seed=args.seed, max_concurrent_fetches=args.max_concurrent_fetches),
        seed=args.seed,
    )

    def progress(done: float) -> None:
        bar = "#" * int(done * 40)
        print(f"\r[{bar:<40}] {done:6.1%}", end="", file=sys.stderr, flush=True)

    report = run_simulation(config, progress=progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.render())
    print()
    print(report.metrics.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
