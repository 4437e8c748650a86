"""Simulate many tenants over virtual hours: upstream calls, waits, hit rate, least validity.

    python demos/simulate.py                      # 1,000 tenants x 24 virtual hours
    python demos/simulate.py --tenants 200 --hours 6 --failure-rate 0.05 --outage 3:3.5

The same as ``python -m actors simulate``; the harness itself is ``actors.sim``:

    from actors.sim import SimulationConfig, run_simulation
    print(run_simulation(SimulationConfig(tenants=1000, hours=24)).render())
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from actors._cli import main

if __name__ == "__main__":
    raise SystemExit(main(["simulate", *sys.argv[1:]]))
