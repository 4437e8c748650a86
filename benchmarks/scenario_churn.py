"""Scenario 2, multi-tenant churn: many tenants whose short-lived tokens expire during the run.

The fake server runs in a process of its own (:mod:`benchmarks.server_process`), as Feishu runs
elsewhere: its CPU does not take the GIL from the callers. Every system talks to that one server
(each with an app of its own). The oracle runs before and after every system (adjacent systems
share one oracle run), and a system's oracle figure is the mean of those two runs, so that a
drift of this machine's speed favours neither side. The control is the oracle's callers beside an
otherwise idle ``TokenSystem`` refreshing the same keys: the refresh traffic without our reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmarks import render
from benchmarks.baselines import Oracle, TokenSource
from benchmarks.harness import CallerRun, cdf_points, merge_runs, run_callers
from benchmarks.model import Goal, Scenario, ScenarioResult, Table
from benchmarks.scenario_common import (
    TENANTS_FULL,
    TENANTS_QUICK,
    TenantWorkload,
    caller_row,
    find_row,
    fmt_ms,
    fmt_x,
    metrics_line,
    random_tenants,
    ratio,
)
from benchmarks.server_process import ServerProcess
from benchmarks.systems import (
    ACTORS,
    ACTORS_MAILBOX,
    DOUBLE_CHECKED,
    FUTURE_FLOOR,
    GET_TIMEOUT,
    MUTEX,
    ORACLE,
    ActorsSource,
    build,
    remote_upstream,
)

__all__ = ["SCENARIO", "ChurnSizes"]


@dataclasses.dataclass(frozen=True)
class ChurnSizes:
    workload: TenantWorkload
    measure_s: float  # >= a token lifetime: every key expires or is refreshed inside the window
    oracle_warmup_s: float  # the oracle has no cache to fill: only the threads to start


# The churn workload: 40 tenants, 6 s tokens, 150 ms upstream, 16 callers + 1 ms of work;
# scaled to Feishu's 2 h tokens, 40 tenants refreshing every 6 s are about 48,000 tenants.
FULL = ChurnSizes(
    dataclasses.replace(TENANTS_FULL, tenants=40, lifetime_s=6.0),
    measure_s=6.0,
    oracle_warmup_s=0.25,
)
QUICK = ChurnSizes(TENANTS_QUICK, measure_s=0.3, oracle_warmup_s=0.05)

PLOT_NAME = "latency_cdf.png"
CONTROL = "control: oracle + idle actors refreshing"
SYSTEMS = [FUTURE_FLOOR, MUTEX, DOUBLE_CHECKED, ACTORS, ACTORS_MAILBOX, CONTROL]
GOAL_OF_ORACLE = 0.95

HEADERS = {
    "oracle_throughput": "oracle gets/s (mean before/after)",
    "window_s": "window s",
}


@dataclasses.dataclass(frozen=True)
class _Measured:
    run: CallerRun
    upstream: int  # token requests of this run's app that arrived in the measured window
    metrics: str | None  # ours only: its metrics over the whole run


def churn(sizes: ChurnSizes) -> ScenarioResult:
    work = sizes.workload
    policy = work.policy()
    tenants = work.tenant_keys
    result = ScenarioResult(
        name="churn",
        title="2. Multi-tenant churn",
        method=_method(sizes),
        params={
            "tenants": len(tenants),
            "callers": work.callers,
            "think_s": work.think_s,
            "upstream_latency_s": work.latency_s,
            "token_lifetime_s": work.lifetime_s,
            "refresh_window_s": min(work.window_s, work.lifetime_s / 4),
            "safety_margin_s": policy.safety_margin,
            "prewarm_lead_s": policy.prewarm_lead,
            "max_concurrent_fetches": policy.max_concurrent_fetches,
            "warmup_s": work.warmup_s,
            "oracle_warmup_s": sizes.oracle_warmup_s,
            "measure_s": sizes.measure_s,
            "server": "separate process (benchmarks/server_process.py), loopback HTTP",
        },
    )

    oracle_runs: list[CallerRun] = []
    measured: dict[str, _Measured] = {}
    with ServerProcess(
        latency=work.latency_s,
        token_lifetime=work.lifetime_s,
        refresh_window=min(work.window_s, work.lifetime_s / 4),
    ) as server:
        oracle_runs.append(_oracle(sizes))
        for label in SYSTEMS:
            measured[label] = _run(label, server, sizes)
            oracle_runs.append(_oracle(sizes))

    table = Table(
        "Churn",
        [
            "system",
            "gets",
            "throughput",
            "oracle_throughput",
            "vs_oracle_x",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "vs_mutex_x",
            "upstream",
            "window_s",
            "errors",
        ],
    )
    pooled_oracle = merge_runs(oracle_runs)
    each_oracle = [run.throughput for run in oracle_runs]
    mean_oracle = sum(each_oracle) / len(each_oracle)
    table.rows.append(
        caller_row(
            ORACLE,
            pooled_oracle,
            oracle_throughput=mean_oracle,
            upstream=0,
            window_s=pooled_oracle.window_s / len(oracle_runs),
        )
    )
    cdf: dict[str, list[list[float]]] = {ORACLE: cdf_points(pooled_oracle.latencies_ns)}
    for i, label in enumerate(SYSTEMS):
        m = measured[label]
        # The oracle runs just before and just after this one.
        beside = (each_oracle[i] + each_oracle[i + 1]) / 2
        table.rows.append(
            caller_row(
                label, m.run, oracle_throughput=beside, upstream=m.upstream, window_s=m.run.window_s
            )
        )
        if label != CONTROL:
            cdf[label] = cdf_points(m.run.latencies_ns)
        if m.metrics:
            result.notes.append(
                f"`{label}` metrics over the whole run (warm-up included): {m.metrics}."
            )
    mutex = find_row(table, MUTEX)
    for row in table.rows:
        row["vs_oracle_x"] = ratio(row["throughput"], row["oracle_throughput"])
        row["vs_mutex_x"] = ratio(row["throughput"], mutex["throughput"] if mutex else None)
    result.tables.append(table)
    result.extra["cdf_ms"] = cdf
    result.extra["oracle_runs_throughput"] = each_oracle

    spread = (max(each_oracle) - min(each_oracle)) / mean_oracle if mean_oracle else 0.0
    result.notes += [
        f"The oracle ran {len(oracle_runs)} times, between {min(each_oracle):,.0f} and "
        f"{max(each_oracle):,.0f} gets/s (a spread of {spread * 100:.1f} % of their mean: this "
        "machine's drift during the scenario); its row pools them. Every other row is compared "
        "with the mean of the two oracle runs just before and just after it.",
        "In the metrics, `coalesced` gets waited for a refresh already in flight and `stale "
        "served` gets were answered while one was. Every key is fetched at start, so the "
        f"prewarms of all {len(tenants)} keys come due within ±10 % of "
        f"{work.lead_s:g} s of each other; with {policy.max_concurrent_fetches} fetches "
        "in flight the last ones can finish after their key stopped being servable, and gets "
        "arriving in between wait.",
        f"`{CONTROL}` is a control, not a system: the oracle's callers, while a `TokenSystem` "
        "of its own (same keys, same policy, every key fetched once before the warm-up) keeps "
        "refreshing them in the background and nobody reads it. Its ratio to the oracle is "
        "the cost of the refresh traffic in this process (our HTTP client, the actors, the "
        "timers); `actors` ÷ control is the cost of the reads themselves.",
    ]
    if sizes.measure_s < work.lifetime_s:
        result.notes.append(
            f"The {sizes.measure_s:g} s window is shorter than one {work.lifetime_s:g} s token "
            "lifetime (a quick run's size), so few keys expire inside it: the churn ratios (to "
            "the mutex baseline, to the oracle) and this scenario's goals mean nothing here."
        )
    result.goals += _goals(table, evaluate=sizes.measure_s >= work.lifetime_s)
    return result


def _method(sizes: ChurnSizes) -> str:
    work = sizes.workload
    policy = work.policy()
    tenants = work.tenants
    long_enough = sizes.measure_s >= work.lifetime_s
    return (
        f"One marketplace app with {tenants} tenants on a fake server whose tokens live "
        f"{work.lifetime_s:g} s (a new one is issued in the last "
        f"{min(work.window_s, work.lifetime_s / 4):g} s) and whose every request takes "
        f"{work.latency_s * 1e3:g} ms. The server (`actors.testing.FakeFeishu`, loopback HTTP) "
        "runs in a child process (`benchmarks/server_process.py`), so that its CPU does not "
        "compete with the callers for this process's GIL, as Feishu's does not; every system "
        "talks to that one server, each run with an app of its own (fresh caches upstream). "
        f"{work.callers} callers each loop: get the token of a uniformly random tenant, then "
        f"`time.sleep({work.think_s:g})` (the business call). Each system: "
        f"{work.warmup_s:g} s warm-up (cold caches fill), then {sizes.measure_s:g} s measured"
        + (
            " (at least one token lifetime, so every key expires or is refreshed inside it)"
            if long_enough
            else ""
        )
        + ". The oracle (a constant, no server) runs before and after every system run "
        f"({sizes.oracle_warmup_s:g} s warm-up, the same window), and each row's ratio to the "
        "oracle is to the mean of those two runs. The control: the oracle's callers while an "
        "idle `TokenSystem` refreshes the same keys in the background. "
        "Every system serves a token only while "
        f"`now < expires_at - {work.margin_s:g} s`; ours prewarms "
        f"{work.lead_s:g} s (±10 %) before expiry, at most "
        f"{policy.max_concurrent_fetches} fetches in flight. The baselines have no prewarm "
        "(the seed's designs have none). Upstream counts the app + tenant token requests of the "
        "run's app that arrived during the measured window. Scaled to Feishu's real 2 h "
        f"tokens, this refresh rate equals about {tenants * 7200 / work.lifetime_s:,.0f} tenants."
    )


def _oracle(sizes: ChurnSizes) -> CallerRun:
    work = sizes.workload
    return run_callers(
        work.callers,
        random_tenants(Oracle(), work.tenant_keys, seed=2),
        warmup_s=sizes.oracle_warmup_s,
        measure_s=sizes.measure_s,
        think_s=work.think_s,
    )


def _run(label: str, server: ServerProcess, sizes: ChurnSizes) -> _Measured:
    """One system (or the control) on the workload, with a new app on ``server``."""
    work = sizes.workload
    up = remote_upstream(server, marketplace=True)
    policy = work.policy()
    background: ActorsSource | None = None
    if label == CONTROL:
        background = ActorsSource(up.app, policy=policy, ticket=up.ticket)
        proxy = background.system.proxy
        for future in [
            proxy.get_token(tenant_key=key, app_id=up.app.app_id) for key in work.tenant_keys
        ]:
            future.get(timeout=GET_TIMEOUT)
        source: TokenSource = Oracle()
    else:
        source = build(label, up, policy)
    try:
        run = run_callers(
            work.callers,
            random_tenants(source, work.tenant_keys, seed=2),
            warmup_s=work.warmup_s,
            measure_s=sizes.measure_s,
            think_s=work.think_s,
        )
        metrics = metrics_line(background if background is not None else source)
    finally:
        source.close()
        if background is not None:
            background.close()
    upstream = server.count(app_id=up.app.app_id, start=run.window_start, end=run.window_end)
    return _Measured(run, upstream, metrics)


def _goals(table: Table, *, evaluate: bool) -> list[Goal]:
    """The scenario's goals; with ``evaluate`` false (a window shorter than a token lifetime)
    they are measured but not judged."""
    ours, mutex = find_row(table, ACTORS), find_row(table, MUTEX)
    control = find_row(table, CONTROL)
    if not (ours and mutex and control):
        return []
    speedup = ratio(ours["throughput"], mutex["throughput"])
    p99_share = ratio(ours["p99_ms"], mutex["p99_ms"])
    of_oracle = ours["vs_oracle_x"]
    control_of_oracle = control["vs_oracle_x"]
    of_control = ratio(ours["throughput"], control["throughput"])
    goals = [
        Goal(
            "throughput vs the mutex baseline",
            ">= 100×",
            fmt_x(speedup),
            None if speedup is None else speedup >= 100,
        ),
        Goal(
            "p99 get latency vs the mutex baseline's p99",
            "<= 1 %",
            "n/a"
            if p99_share is None
            else f"{p99_share * 100:.3g} % ({fmt_ms(ours['p99_ms'])} vs {fmt_ms(mutex['p99_ms'])})",
            None if p99_share is None else p99_share <= 0.01,
        ),
        Goal(
            "throughput vs the oracle (mean of the oracle runs before and after), server in "
            "its own process",
            f">= {GOAL_OF_ORACLE:g}×",
            "n/a"
            if of_oracle is None
            else f"{of_oracle:.3f}× ({ours['throughput']:,.0f} vs "
            f"{ours['oracle_throughput']:,.0f} gets/s)",
            None if of_oracle is None else of_oracle >= GOAL_OF_ORACLE,
        ),
        Goal(
            "control (oracle callers + an idle actors system refreshing the same keys) vs the "
            "oracle: the refresh traffic's own cost",
            "informational",
            f"{fmt_x(control_of_oracle)}; actors ÷ control {fmt_x(of_control)}",
            None,
        ),
    ]
    if evaluate:
        return goals
    return [
        dataclasses.replace(
            goal, measured=f"{goal.measured} (window shorter than a token lifetime)", met=None
        )
        for goal in goals
    ]


def section(result: ScenarioResult, *, console: bool = False) -> list[str]:
    figure = f"![latency CDF per system, scenario 2]({PLOT_NAME})"
    return render.section(result, console=console, headers=HEADERS, figures=[figure])


def plot_cdf(result: ScenarioResult, out: Path) -> str | None:
    """Latency CDF (and tail) per system, written to ``out/latency_cdf.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no CDF plot (pip install matplotlib)"
    cdf: dict[str, list[list[float]]] = result.extra.get("cdf_ms", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for system, points in cdf.items():
        if not points:
            continue
        xs = [max(p[0], 1e-4) for p in points]
        ys = [p[1] for p in points]
        left.step(xs, ys, where="post", label=system)
        tail = [(x, 1.0 - y) for x, y in zip(xs, ys, strict=True) if y < 1.0]
        right.step([t[0] for t in tail], [t[1] for t in tail], where="post", label=system)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("get latency (ms, log scale)")
        axis.grid(True, which="both", alpha=0.3)
    left.set_ylabel("fraction of gets ≤ latency")
    left.set_title("Scenario 2: latency CDF")
    right.set_yscale("log")
    right.set_ylabel("fraction of gets > latency")
    right.set_title("Tail (1 − CDF)")
    right.set_ylim(1e-4, 1.0)
    left.legend(loc="lower right", fontsize="small")
    params = result.params
    fig.suptitle(
        f"{params.get('tenants')} tenants, {params.get('callers')} callers, "
        f"{params.get('upstream_latency_s', 0) * 1e3:g} ms upstream, "
        f"{params.get('token_lifetime_s')} s tokens"
    )
    fig.tight_layout()
    fig.savefig(out / PLOT_NAME, dpi=110)
    plt.close(fig)
    return None


SCENARIO = Scenario("churn", churn, full=FULL, quick=QUICK, section=section, write_files=plot_cdf)
