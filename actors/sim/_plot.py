"""A simulation's hours: the per-hour series of a run (:class:`HourStats`, re-exported by
``actors.sim``, added up in :class:`HourTotals` while it runs) and its picture in one PNG
(``SimulationReport.plot``, ``simulate --plot``).

Three panels over the virtual hours: upstream calls per hour (and the busiest step of each
hour), token requests in flight at once, and the validity left on the tokens served to callers
(least and median), against the safety margin and the prewarm lead. Evenly spread refreshes
show as even bars and a busiest step near the hourly mean per step; refreshes bunching up show
as spikes.

matplotlib is an optional dependency (the ``plot`` extra). It is imported only here, only when a
plot is drawn, and only its object-oriented API is used (no pyplot, no global state), so
plotting works on any thread and without a display.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["MISSING", "HourStats", "HourTotals", "plot_hours", "require_matplotlib"]


MISSING = 'plotting needs matplotlib: pip install "lark-token-actors[plot]"'


@dataclasses.dataclass(frozen=True, kw_only=True)
class HourStats:
    """One virtual hour of a simulation: hour ``h`` covers virtual time (h, h + 1] hours (the
    last one also holds what a run ending off the hour adds)."""

    upstream_calls: int  # token requests the fake server received
    busiest_step: int  # the most token requests in one step: refreshes bunched or spread
    peak_in_flight: int  # the most token requests in flight at once (real concurrency)
    mean_in_flight: float  # the mean over the hour's steps of each step's peak in flight
    gets: int  # caller gets sent
    errors: int  # gets answered with an error
    min_validity: float | None  # least validity (s) left on a token served to a caller
    median_validity: float | None  # median validity (s, to the second) on served tokens


class HourTotals:
    """The running totals of one virtual hour of a simulation, closed into its HourStats."""

    __slots__ = (
        "busiest",
        "calls",
        "errors",
        "flight_sum",
        "gets",
        "in_flight",
        "least",
        "steps",
        "validity",
    )

    def __init__(self) -> None:
        self.calls = self.busiest = self.in_flight = self.gets = self.errors = 0
        self.flight_sum = self.steps = 0
        self.least = math.inf  # exact, where the counter below is to the second
        # Served tokens' validity left, by whole second: bounded by the token lifetime.
        self.validity: Counter[int] = Counter()

    def close(self) -> HourStats:
        seen = sorted(self.validity.items())
        median: float | None = None
        middle, count = 0, sum(self.validity.values())
        for seconds, n in seen:
            middle += n
            if 2 * middle >= count:
                median = float(seconds)
                break
        return HourStats(
            upstream_calls=self.calls,
            busiest_step=self.busiest,
            peak_in_flight=self.in_flight,
            mean_in_flight=self.flight_sum / self.steps if self.steps else 0.0,
            gets=self.gets,
            errors=self.errors,
            min_validity=self.least if seen else None,
            median_validity=median,
        )


def require_matplotlib() -> None:
    """Raise ImportError with an install hint unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401, PLC0415 - the optional extra
    except ImportError:
        raise ImportError(MISSING) from None


def plot_hours(
    hours: Sequence[HourStats],
    path: str | os.PathLike[str],
    *,
    title: str,
    fetch_cap: int,
    safety_margin: float,
    prewarm_lead: float,
) -> None:
    """Write the hourly picture of a run to ``path`` as a PNG."""
    require_matplotlib()
    from matplotlib.figure import Figure  # noqa: PLC0415 - the optional extra

    x = [h + 0.5 for h in range(len(hours))]  # each bar sits in the middle of its hour
    fig = Figure(figsize=(9, 8.5), dpi=80, layout="constrained")
    calls, flight, validity = fig.subplots(3, 1, sharex=True)
    fig.suptitle(title, fontsize=11)

    calls.bar(x, [h.upstream_calls for h in hours], width=0.8, color="tab:blue")
    calls.set_ylabel("token requests per hour")
    calls.set_ylim(bottom=0)
    busiest = calls.twinx()
    busiest.plot(x, [h.busiest_step for h in hours], "o-", color="tab:orange", ms=3)
    busiest.set_ylabel("busiest step (requests)", color="tab:orange")
    busiest.set_ylim(bottom=0)
    calls.set_title("Upstream calls: bars per hour; orange, the most in one step of that hour")

    flight.step(
        x,
        [h.peak_in_flight for h in hours],
        where="mid",
        color="tab:purple",
        label="most at once in the hour",
    )
    flight.plot(
        x,
        [h.mean_in_flight for h in hours],
        "o-",
        ms=3,
        color="tab:cyan",
        label="mean of each step's most",
    )
    flight.axhline(fetch_cap, color="grey", ls="--", lw=1)
    flight.annotate(
        f"cap {fetch_cap}", (0, fetch_cap), xytext=(2, 2), textcoords="offset points", fontsize=8
    )
    flight.set_ylabel("requests in flight")
    flight.set_ylim(0, fetch_cap * 1.45)  # room above the cap for the legend
    flight.set_title("Fetches in flight (worker threads; beyond the cap they queue)")
    flight.legend(loc="upper right", fontsize=8, ncols=2)

    _validity_panel(validity, hours, x, safety_margin=safety_margin, prewarm_lead=prewarm_lead)
    validity.set_xlabel("virtual time (hours)")
    validity.set_xlim(0, max(1, len(hours)))
    for axes in (calls, flight, validity):
        axes.grid(alpha=0.3)
    fig.savefig(os.fspath(path), format="png")


def _validity_panel(
    axes: Any,
    hours: Sequence[HourStats],
    x: list[float],
    *,
    safety_margin: float,
    prewarm_lead: float,
) -> None:
    lows = [h.min_validity for h in hours]
    mids = [h.median_validity for h in hours]
    for values, color, label in ((mids, "tab:green", "median"), (lows, "tab:red", "least")):
        # Hours with no token served (no gets yet) stay gaps rather than zeros.
        minutes = [float("nan") if v is None else v / 60 for v in values]
        axes.plot(x, minutes, "o-", ms=3, color=color, label=label)
    axes.axhline(
        safety_margin / 60,
        color="black",
        ls="--",
        lw=1,
        label=f"safety margin ({safety_margin:g} s)",
    )
    axes.axhline(
        prewarm_lead / 60,
        color="grey",
        ls=":",
        lw=1,
        label=f"prewarm lead ({prewarm_lead:g} s)",
    )
    axes.set_ylabel("validity left (minutes)")
    highest = max([v for v in (*lows, *mids) if v is not None] + [prewarm_lead])
    axes.set_ylim(0, highest / 60 * 1.4)  # room above the lines for the legend
    axes.set_title("Validity left on the tokens served to callers, per hour")
    axes.legend(loc="upper right", fontsize=8, ncols=2)
