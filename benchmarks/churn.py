"""What happens when many tenants' tokens keep expiring under load? The multi-tenant workload
against the mutex designs and the oracle; the slow-tenant scenario reuses the workload."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import actors
from actors.testing import FakeFeishuProcess
from benchmarks.contenders import (
    ACTORS,
    DOUBLE_CHECKED,
    MUTEX,
    Actors,
    Contender,
    Oracle,
    build,
    new_app,
)
from benchmarks.harness import (
    CallerRun,
    Goal,
    OpFactory,
    Result,
    Scenario,
    Table,
    fmt,
    judged,
    ratio,
    run_callers,
)

PLOT = "latency_cdf.png"


@dataclasses.dataclass(frozen=True)
class Workload:
    """One marketplace app with ``tenants`` tenants whose short-lived tokens expire during the
    run; ``callers`` threads loop: get a uniformly random tenant's token, sleep ``think_s``."""

    tenants: int
    callers: int
    think_s: float
    latency_s: float  # of every upstream request
    lifetime_s: float  # of every token
    window_s: float  # the fake issues a new token in the last window_s of a lifetime
    margin_s: float  # every system serves a token only while now < expires_at - margin_s
    lead_s: float  # ours prewarms this long (±10 %) before expiry
    warmup_s: float  # before the measured window: cold caches fill
    measure_s: float
    smoke: bool = False

    @property
    def keys(self) -> list[str]:
        return [f"tenant-{i:03d}" for i in range(self.tenants)]

    def policy(self) -> actors.RefreshPolicy:
        return actors.RefreshPolicy(
            safety_margin=self.margin_s,
            prewarm_lead=self.lead_s,
            retry_base=0.05,
            retry_cap=0.5,
            seed=1,
        )

    def server(self) -> FakeFeishuProcess:
        return FakeFeishuProcess(
            latency=self.latency_s, token_lifetime=self.lifetime_s, refresh_window=self.window_s
        )

    def describe(self) -> str:
        return (
            f"One marketplace app with {self.tenants} tenants; the fake's tokens live "
            f"{self.lifetime_s:g} s (a new one is issued in the last {self.window_s:g} s) and "
            f"every request takes {self.latency_s * 1e3:g} ms. {self.callers} callers loop: get "
            f"a uniformly random tenant's token, then `time.sleep({self.think_s:g})` (the "
            f"business call); {self.warmup_s:g} s warm-up, then {self.measure_s:g} s measured. "
            f"Every system serves a token while `now < expires_at - {self.margin_s:g} s`; ours "
            f"prewarms {self.lead_s:g} s (±10 %) before expiry, the lock designs do not. "
            "Upstream counts the run's app's token requests that arrived in the window; every "
            "run has an app of its own on one server. Scaled to Feishu's 2 h tokens, this "
            f"refresh rate is that of about {self.tenants * 7200 / self.lifetime_s:,.0f} tenants."
        )


FULL = Workload(
    tenants=40,
    callers=16,
    think_s=0.001,
    latency_s=0.150,
    lifetime_s=6.0,
    window_s=1.0,
    margin_s=0.1,
    lead_s=0.6,
    warmup_s=1.5,
    measure_s=6.0,
)
QUICK = dataclasses.replace(
    FULL, tenants=6, callers=4, latency_s=0.02, lifetime_s=1.0, window_s=0.25, lead_s=0.3,
    warmup_s=0.2, measure_s=0.3, smoke=True,
)  # fmt: skip


def random_tenants(
    contender: Contender, keys: list[str], *, seed: int, slow: str | None = None
) -> OpFactory:
    """Each caller picks a random tenant per get (its own seeded generator); the op returns
    bucket 1 for the ``slow`` tenant, 0 for the others."""

    def make(index: int) -> Callable[[], object]:
        choice, get = random.Random(seed * 1000 + index).choice, contender.get

        def op() -> object:
            tenant = choice(keys)
            get(tenant)
            return int(tenant == slow)

        return op

    return make


def run_workload(
    name: str, work: Workload, server: FakeFeishuProcess, *, seed: int, slow: str | None = None
) -> tuple[CallerRun, int, str | None]:
    """System ``name`` on ``work`` with a new app on ``server``: its callers' run, the upstream
    requests in the window, and (ours) its metrics."""
    app = new_app(server, marketplace=True)
    contender = build(name, app, work.policy())
    try:
        run = run_callers(
            work.callers,
            random_tenants(contender, work.keys, seed=seed, slow=slow),
            warmup_s=work.warmup_s,
            measure_s=work.measure_s,
            think_s=work.think_s,
            buckets=2,
        )
        metrics = contender.metrics_line() if isinstance(contender, Actors) else None
    finally:
        contender.close()
    upstream = server.count(app_id=app.config.app_id, since=run.window_start, until=run.window_end)
    return run, upstream, metrics


def churn(work: Workload) -> Result:
    result = Result(
        name="churn",
        title="Multi-tenant churn",
        method=work.describe()
        + " The oracle (a constant, no server) runs before and after every system, and each "
        "row's ratio to the oracle is to the mean of those two runs.",
    )
    oracle_run = dataclasses.replace(work, warmup_s=0.25)
    table = Table("Churn")
    cdf: dict[str, list[tuple[float, float]]] = {}
    with work.server() as server:
        before = _oracle(oracle_run)
        for name in (MUTEX, DOUBLE_CHECKED, ACTORS):
            run, upstream, metrics = run_workload(name, work, server, seed=2)
            after = _oracle(oracle_run)
            oracle = (before.throughput + after.throughput) / 2
            table.rows.append(
                run.row(
                    name,
                    **{
                        "oracle gets/s": oracle,
                        "× oracle": ratio(run.throughput, oracle),
                        "upstream": upstream,
                    },
                )
            )
            cdf[name] = _cdf(run)
            if metrics:
                result.notes.append(f"`{name}` metrics over the whole run: {metrics}.")
            before = after
    cdf["oracle"] = _cdf(before)
    mutex = table.find(system=MUTEX)
    for row in table.rows:
        row["× mutex"] = ratio(row["gets/s"], mutex["gets/s"] if mutex else None)
    result.tables.append(table)
    result.extra["cdf_ms"] = cdf
    result.notes.append(f"![latency CDF per system]({PLOT})")
    if work.smoke:
        result.notes.append("Smoke run: the window is shorter than a token lifetime; not judged.")
    ours = table.find(system=ACTORS)
    if ours and mutex:
        speedup, oracle, share = (
            ours["× mutex"],
            ours["× oracle"],
            ratio(ours["p99 ms"], mutex["p99 ms"]),
        )
        result.goals += [
            Goal(
                "throughput vs the mutex design",
                ">= 100×",
                _x(speedup),
                judged(speedup is not None and speedup >= 100, smoke=work.smoke),
            ),
            Goal(
                "p99 get latency vs the mutex design's p99",
                "<= 1 %",
                f"{fmt((share or 0) * 100)} % ({fmt(ours['p99 ms'])} vs {fmt(mutex['p99 ms'])} ms)",
                judged(share is not None and share <= 0.01, smoke=work.smoke),
            ),
            Goal(
                "throughput vs the oracle (mean of the runs before and after)",
                ">= 0.95×",
                _x(oracle),
                judged(oracle is not None and oracle >= 0.95, smoke=work.smoke),
            ),
        ]
    return result


def _x(value: float | None) -> str:
    return fmt(value, "×")


def _oracle(work: Workload) -> CallerRun:
    return run_callers(
        work.callers,
        random_tenants(Oracle(), work.keys, seed=2),
        warmup_s=work.warmup_s,
        measure_s=work.measure_s,
        think_s=work.think_s,
    )


def _cdf(run: CallerRun) -> list[tuple[float, float]]:
    """(latency ms, share of gets at or below it) at 200 quantiles."""
    ordered = sorted(run.latencies_ns)
    if not ordered:
        return []
    steps = [i / 200 for i in range(201)]
    return [(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, q) for q in steps]


def plot(result: Result, out: Path) -> str | None:
    """The latency CDF of every system, ``out/latency_cdf.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no CDF plot (pip install matplotlib)"
    fig, axis = plt.subplots(figsize=(8, 4.8))
    for system, points in result.extra["cdf_ms"].items():
        axis.step(
            [max(x, 1e-4) for x, _ in points], [y for _, y in points], where="post", label=system
        )
    axis.set_xscale("log")
    axis.set_xlabel("get latency (ms, log scale)")
    axis.set_ylabel("share of gets ≤ latency")
    axis.set_title("Multi-tenant churn: latency CDF")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / PLOT, dpi=110)
    plt.close(fig)
    return None


SCENARIO = Scenario("churn", churn, full=FULL, quick=QUICK, write_files=plot)
