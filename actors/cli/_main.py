"""The ``lark-token-actors`` command line (also ``python -m actors``): the parser, the exit
codes and what each command does."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

import pykka
from loguru import logger

from actors import __version__
from actors._config import FEISHU, AppConfig, AppType, RefreshPolicy, TokenKind
from actors._errors import SystemStoppedError, TokenError, mask_token
from actors._events import RefreshEvent, TokenRefreshed
from actors._system import TokenSystem

if TYPE_CHECKING:
    from actors.testing import FakeFeishu

__all__ = [
    "CommandError",
    "UsageError",
    "cmd_demo",
    "cmd_keygen",
    "cmd_report",
    "cmd_serve_metrics",
    "cmd_simulate",
    "cmd_token",
    "main",
]


PROG = "lark-token-actors"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage before the error; one line reads better in a terminal
        # and in CI logs, and --help is one flag away.
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors end here
        return exc.code if isinstance(exc.code, int) else 1
    sink = _start_logging(args.log_level)
    try:
        command: Callable[[argparse.Namespace], int] = args.run
        return command(args)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except CommandError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        # The with-blocks have stopped the system and servers on the way out; nothing to say.
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): point stdout at devnull so the interpreter's
        # final flush does not fail a second time with a traceback.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        _stop_logging(sink)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# --- the parser ----------------------------------------------------------------------------------


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Feishu/Lark access tokens from an actor-owned cache: demos, a token "
        "fetcher, a simulation harness, a Prometheus endpoint and a key generator.",
        epilog=f"Real credentials come from {ENV_ID}, {ENV_SECRET} and optionally {ENV_URL} "
        f"(default {FEISHU}).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        choices=("TRACE", "DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        default=None,
        help="print the library's log lines at this level and above on stderr (default: none)",
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    demo = commands.add_parser(
        "demo",
        help="concurrent callers, one upstream request, an invalidation, the report",
        description="Concurrent callers share one upstream request, warm gets are answered "
        "from the cache, an invalidation fetches a fresh token; then the performance report. "
        f"Runs against an embedded fake Feishu unless {ENV_ID} and {ENV_SECRET} are set.",
    )
    demo.add_argument("--callers", type=_positive_int, default=32, help="concurrent callers")
    demo.add_argument("--warm-gets", type=_non_negative_int, default=1000, help="cached gets")
    demo.set_defaults(run=cmd_demo)

    token = commands.add_parser(
        "token",
        help="fetch a token with the credentials from the environment and print it masked",
        description=f"Fetch a token for the app in {ENV_ID} / {ENV_SECRET} (domain: "
        f"{ENV_URL}, default {FEISHU}) and print it masked, or whole with --show.",
    )
    token.add_argument(
        "--kind",
        choices=[TokenKind.TENANT.value, TokenKind.APP.value],
        default="tenant",
        help="default: tenant",
    )
    token.add_argument("--tenant-key", help="the tenant (marketplace apps' tenant tokens only)")
    token.add_argument(
        "--app-type",
        choices=[t.value for t in AppType],
        default=AppType.SELF_BUILT.value,
        help="default: self_built",
    )
    token.add_argument(
        "--app-ticket",
        default=os.environ.get(ENV_TICKET),
        help=f"the app_ticket Feishu last pushed (marketplace apps; default: ${ENV_TICKET})",
    )
    token.add_argument(
        "--show", action="store_true", help="print the whole token, alone on its line"
    )
    token.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="seconds to wait (default: 30)"
    )
    token.set_defaults(run=cmd_token)

    simulate = commands.add_parser(
        "simulate",
        help="many tenants over virtual hours against the fake server, in seconds",
        description="Simulate a marketplace app with many tenants over virtual hours on a "
        "manual clock: upstream calls per hour, peak concurrent fetches, callers that waited "
        "and how long (in virtual seconds), hit rate and the least validity left on a served "
        "token; with --plot, the same hour by hour in a PNG. Exits 1 if an invariant broke "
        "(a get never answered, a token served within the safety margin, two fetches of one "
        "key at once, more than the cap in flight).",
    )
    simulate.add_argument("--tenants", type=_positive_int, default=1000, help="default: 1000")
    simulate.add_argument("--hours", type=_positive_float, default=24.0, help="default: 24")
    simulate.add_argument(
        "--gets-per-step", type=_non_negative_int, default=100, help="default: 100"
    )
    simulate.add_argument(
        "--step", type=_positive_float, default=60.0, help="virtual seconds per step (60)"
    )
    simulate.add_argument(
        "--lifetime", type=_positive_float, default=7200.0, help="token lifetime, s (7200)"
    )
    simulate.add_argument(
        "--failure-rate", type=_fraction, default=0.0, help="share of requests failing (0-1)"
    )
    simulate.add_argument(
        "--outage",
        type=_outage,
        action="append",
        default=[],
        metavar="START:END",
        help="virtual hours during which every request fails; repeatable",
    )
    simulate.add_argument("--max-concurrent-fetches", type=_positive_int, default=8)
    simulate.add_argument("--seed", type=int, default=1, help="default: 1")
    simulate.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw the run hour by hour into this PNG file: upstream calls, fetches in "
        'flight, validity left on served tokens (needs matplotlib: the "plot" extra)',
    )
    simulate.set_defaults(run=cmd_simulate)

    report = commands.add_parser(
        "report",
        help="run a short workload against the fake server and print the performance report",
        description="Two apps (self-built and marketplace), concurrent misses, warm hits, one "
        "transient upstream failure and an invalidation against the embedded fake Feishu; "
        "then the performance report.",
    )
    report.add_argument("--gets", type=_non_negative_int, default=2000, help="default: 2000")
    report.add_argument("--tenants", type=_positive_int, default=5, help="marketplace tenants")
    report.add_argument(
        "--latency", type=_non_negative_float, default=0.05, help="fake server latency, s"
    )
    report.set_defaults(run=cmd_report)

    serve = commands.add_parser(
        "serve-metrics",
        help="serve Prometheus metrics of a system under a small workload",
        description="Start a system (against the embedded fake Feishu, or the real one if "
        f"{ENV_ID} and {ENV_SECRET} are set), keep getting tokens in the background and "
        "serve its metrics at http://ADDR:PORT/metrics until Ctrl-C. Needs the prometheus "
        'extra: pip install "lark-token-actors[prometheus]".',
    )
    serve.add_argument("--port", type=_port, required=True, help="0 picks a free port")
    serve.add_argument("--addr", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument(
        "--interval", type=_positive_float, default=0.5, help="seconds between workload rounds"
    )
    # For tests and scripted runs: stop after this many seconds instead of waiting for Ctrl-C.
    serve.add_argument("--duration", type=_non_negative_float, help=argparse.SUPPRESS)
    serve.set_defaults(run=cmd_serve_metrics)

    keygen = commands.add_parser(
        "keygen",
        help="print a new key for encrypting stored user tokens",
        description="Print a new Fernet key, alone on stdout (export FEISHU_TOKEN_KEY=$("
        f"{PROG} keygen) works), and how to use it on stderr. Stores encrypt user access and "
        "refresh tokens with it: set FEISHU_TOKEN_KEY, or pass SqliteStore(path, key=...) or "
        "RedisStore(url, key=...).",
    )
    keygen.set_defaults(run=cmd_keygen)
    return parser


def _number(text: str, convert: Callable[[str], float], what: str) -> float:
    try:
        return convert(text)
    except ValueError:
        msg = f"expected {what}, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _positive_int(text: str) -> int:
    value = int(_number(text, int, "a whole number >= 1"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(_number(text, int, "a whole number >= 0"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float, "a number > 0")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text, float, "a number from 0 to 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(_number(text, int, "a port number 0-65535"))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def _outage(text: str) -> tuple[float, float]:
    from actors.sim import parse_outage  # noqa: PLC0415 - only the simulate command needs it

    try:
        return parse_outage(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- logging -------------------------------------------------------------------------------------


def _start_logging(level: str | None) -> int | None:
    if level is None:
        return None
    # This is the application side, so it may choose a sink; only when asked, and only for
    # the library's own records. loguru's default stderr handler would print them twice.
    with contextlib.suppress(ValueError):
        logger.remove(0)
    logger.enable("actors")
    return logger.add(
        sys.stderr,
        level=level,
        filter="actors",
        format="{time:HH:mm:ss.SSS} {level: <7} {message} {extra}",
    )


def _stop_logging(sink: int | None) -> None:
    if sink is not None:
        logger.remove(sink)
        logger.disable("actors")


# --- credentials and apps ------------------------------------------------------------------------


ENV_ID, ENV_SECRET, ENV_URL = "FEISHU_APP_ID", "FEISHU_APP_SECRET", "FEISHU_BASE_URL"
ENV_TICKET = "FEISHU_APP_TICKET"
_DEMO_ID, _DEMO_SECRET = "cli_demo", "demo-secret"
_MARKET_ID, _MARKET_SECRET = "cli_demo_market", "demo-market-secret"


class UsageError(Exception):
    """A user mistake found after parsing (missing credentials, contradictory options): exit 2."""


class CommandError(Exception):
    """The command could not do its job (Feishu refused, the port is taken): exit 1."""


def _env_app(*, required: bool, app_type: AppType | None = None) -> AppConfig | None:
    """The app in the environment (``AppConfig.from_env``); None if neither credential is set
    and ``required`` is false. ``app_type`` (the --app-type option) wins over FEISHU_APP_TYPE."""
    missing = [name for name in (ENV_ID, ENV_SECRET) if not os.environ.get(name, "").strip()]
    if len(missing) == 2 and not required:
        return None
    if missing:
        msg = f"set {' and '.join(missing)} in the environment (the app's credentials)"
        raise UsageError(msg)
    try:
        app = AppConfig.from_env()
    except ValueError as exc:
        msg = f"bad app settings in the environment: {exc}"
        raise UsageError(msg) from None
    return app if app_type is None else dataclasses.replace(app, app_type=app_type)


@contextlib.contextmanager
def _workload_app(
    *, latency: float, token_lifetime: float = 7200.0
) -> Iterator[tuple[AppConfig, FakeFeishu | None]]:
    """The real app from the environment, or a demo app on an embedded fake server."""
    app = _env_app(required=False)
    if app is not None:
        yield app, None
        return
    from actors.testing import FakeFeishu  # noqa: PLC0415 - only without real credentials

    with FakeFeishu(latency=latency, token_lifetime=token_lifetime) as server:
        server.add_app(_DEMO_ID, _DEMO_SECRET)
        yield AppConfig(_DEMO_ID, _DEMO_SECRET, base_url=server.base_url), server


def _concurrent_gets(get: Callable[[], str], callers: int) -> list[str]:
    """``callers`` threads released at once by a barrier, each doing one ``get``."""
    tokens: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(callers)

    def caller() -> None:
        barrier.wait()
        try:
            tokens.append(get())
        except BaseException as exc:  # re-raised on the main thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=caller, name=f"actors-cli-caller-{i}", daemon=True)
        for i in range(callers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return tokens


def _token_error(exc: BaseException) -> CommandError:
    if isinstance(exc, pykka.Timeout):
        return CommandError("no answer from the token system in time")
    return CommandError(str(exc))


# --- commands ------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    callers: int = args.callers
    with _workload_app(latency=0.2) as (app, server), TokenSystem.start(app) as system:
        where = "the embedded fake Feishu" if server else app.base_url
        print(f"app {app.app_id} against {where}")
        try:
            _demo_steps(system, server, callers=callers, warm_gets=args.warm_gets)
        except (TokenError, pykka.Timeout) as exc:
            raise _token_error(exc) from None
        print()
        print(system.performance_report())
    return 0


def _demo_steps(
    system: TokenSystem, server: FakeFeishu | None, *, callers: int, warm_gets: int
) -> None:
    # 1. Single flight: many callers miss at once, one upstream request serves them all.
    started = time.perf_counter()
    tokens = _concurrent_gets(lambda: system.proxy.get_token().get(timeout=30), callers)
    elapsed = time.perf_counter() - started
    upstream = server.count("tenant") if server else system.metrics().fetch_success
    print(
        f"{callers} concurrent callers got {len(set(tokens))} token "
        f"({mask_token(tokens[0])}) in {elapsed * 1e3:.0f} ms "
        f"from {upstream} upstream request(s)"
    )

    # 2. Warm hits never touch the network.
    if warm_gets:
        started = time.perf_counter()
        for _ in range(warm_gets):
            system.proxy.get_token().get(timeout=5)
        per_get = (time.perf_counter() - started) / warm_gets
        print(f"{warm_gets} warm gets: {per_get * 1e6:.0f} µs each")

    # 3. A business API said 99991663: invalidate exactly that token and fetch a fresh one.
    if server:
        server.rotate()  # the fake server revokes it, as Feishu would
    dropped = system.proxy.invalidate(tokens[0]).get(timeout=5)
    fresh = system.proxy.get_token().get(timeout=30)
    print(f"invalidate({mask_token(tokens[0])}) -> {dropped}; now serving {mask_token(fresh)}")
    again = system.proxy.invalidate(tokens[0]).get(timeout=5)
    print(f"invalidating the old token again -> {again}")


def cmd_token(args: argparse.Namespace) -> int:
    app = _env_app(required=True, app_type=AppType(args.app_type))
    assert app is not None  # required=True raises instead
    kind = TokenKind(args.kind)
    tenant_key: str | None = args.tenant_key
    marketplace_tenant = app.app_type is AppType.MARKETPLACE and kind is TokenKind.TENANT
    if tenant_key is not None and not marketplace_tenant:
        msg = "--tenant-key is only for a marketplace app's tenant token (--app-type marketplace)"
        raise UsageError(msg)
    if marketplace_tenant and not tenant_key:
        raise UsageError("--tenant-key is required for a marketplace app's tenant token")
    ticket: str | None = args.app_ticket
    if app.app_type is AppType.MARKETPLACE and not ticket:
        # The CLI has no event endpoint, so it cannot receive a re-pushed ticket.
        msg = f"a marketplace app needs --app-ticket (or ${ENV_TICKET}): the last app_ticket "
        msg += "Feishu pushed to your event endpoint"
        raise UsageError(msg)

    timeout: float = args.timeout
    # A rejected ticket makes the system ask Feishu to resend one and wait for it; the resent
    # ticket goes to the app's event endpoint, never to this process, so do not wait long.
    policy = RefreshPolicy(ticket_wait=min(timeout, 5.0))
    with TokenSystem.start(app, policy=policy) as system:
        refreshed: list[TokenRefreshed] = []

        def on_event(event: RefreshEvent) -> None:
            if isinstance(event, TokenRefreshed) and (event.kind, event.tenant_key) == (
                kind,
                tenant_key,
            ):
                refreshed.append(event)

        system.subscribe(on_event)
        try:
            if ticket:
                system.proxy.set_app_ticket(ticket).get(timeout=timeout)
            token = system.proxy.get_token(kind, tenant_key=tenant_key).get(timeout=timeout)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except (TokenError, pykka.Timeout) as exc:
            raise _token_error(exc) from None
        if args.show:
            print(token)
            return 0
        validity = ""
        with contextlib.suppress(TimeoutError):
            system.settle(timeout=2.0)  # the TokenRefreshed event is delivered on another thread
        if refreshed:
            left = refreshed[-1].expires_at - system.clock.now()
            validity = f" (valid for {left:.0f} s)"
        print(f"{kind.value}_access_token for {app.app_id}: {mask_token(token)}{validity}")
    return 0


class _ProgressBar:
    """A one-line bar on a terminal, redrawn only when the shown percentage changes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = -1

    def __call__(self, done: float) -> None:
        permille = int(done * 1000)
        if permille == self._shown:
            return
        self._shown = permille
        bar = "#" * int(done * 40)
        print(f"\r[{bar:<40}] {done:6.1%}", end="", file=self._stream, flush=True)

    def close(self) -> None:
        if self._shown >= 0:
            print(file=self._stream, flush=True)


def cmd_simulate(args: argparse.Namespace) -> int:
    # Imported here: the harness pulls in the simulation machinery that other commands skip.
    from actors.sim import SimulationConfig, run_simulation  # noqa: PLC0415

    try:
        config = SimulationConfig(
            tenants=args.tenants,
            hours=args.hours,
            gets_per_step=args.gets_per_step,
            step=args.step,
            token_lifetime=args.lifetime,
            failure_rate=args.failure_rate,
            outages=tuple(args.outage),
            policy=RefreshPolicy(
                seed=args.seed, max_concurrent_fetches=args.max_concurrent_fetches
            ),
            seed=args.seed,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    plot: str | None = args.plot
    if plot is not None:
        _check_plot_target(plot)  # before the run, not after minutes of it
    bar = _ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = run_simulation(config, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print(report.render())
    print()
    print(report.metrics.report())
    if plot is not None:
        try:
            report.plot(plot)
        except OSError as exc:
            msg = f"cannot write the plot to {plot}: {exc.strerror or exc}"
            raise CommandError(msg) from None
        print()
        print(f"plot written to {plot}")
    if report.violations:
        raise CommandError(f"simulation invariants broken: {'; '.join(report.violations)}")
    return 0


def _check_plot_target(path: str) -> None:
    from actors.sim._plot import require_matplotlib  # noqa: PLC0415 - only with --plot

    try:
        require_matplotlib()
    except ImportError as exc:
        raise UsageError(f"--plot: {exc}") from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--plot: no such directory: {folder}")


def cmd_report(args: argparse.Namespace) -> int:
    gets: int = args.gets
    tenants = [f"tenant-{i:03d}" for i in range(args.tenants)]
    # A short backoff, so the scripted transient failure below retries at once.
    policy = RefreshPolicy(retry_base=0.05, retry_cap=0.2, seed=1)
    from actors.testing import FakeFeishu, Reply  # noqa: PLC0415 - test support, on demand

    with FakeFeishu(latency=args.latency) as server:
        server.add_app(_DEMO_ID, _DEMO_SECRET)
        server.add_app(_MARKET_ID, _MARKET_SECRET, marketplace=True)
        apps = [
            AppConfig(_DEMO_ID, _DEMO_SECRET, base_url=server.base_url),
            AppConfig(
                _MARKET_ID,
                _MARKET_SECRET,
                app_type=AppType.MARKETPLACE,
                base_url=server.base_url,
            ),
        ]
        with TokenSystem.start(apps, policy=policy) as system:
            proxy = system.proxy
            try:
                proxy.set_app_ticket(server.issue_ticket(_MARKET_ID), app_id=_MARKET_ID).get(
                    timeout=10
                )
                # One 502 on the first tenant token request: a failure and a retry in the report.
                server.script("tenant", Reply.http(502), app_id=_DEMO_ID)
                tokens = _concurrent_gets(
                    lambda: proxy.get_token(app_id=_DEMO_ID).get(timeout=10), 16
                )
                for i in range(gets):
                    if i % 4 == 0:
                        proxy.get_token(TokenKind.APP, app_id=_DEMO_ID).get(timeout=10)
                    elif i % 4 == 1:
                        tenant = tenants[i % len(tenants)]
                        proxy.get_token(tenant_key=tenant, app_id=_MARKET_ID).get(timeout=10)
                    else:
                        proxy.get_token(app_id=_DEMO_ID).get(timeout=10)
                server.rotate(_DEMO_ID)
                proxy.invalidate(tokens[0]).get(timeout=10)
                proxy.get_token(app_id=_DEMO_ID).get(timeout=10)
                system.settle(timeout=10)
            except (TokenError, pykka.Timeout) as exc:
                raise _token_error(exc) from None
            print(
                f"workload: 16 concurrent misses, {gets} gets over 2 apps and "
                f"{len(tenants) + 2} keys, one transient 502, one invalidation "
                f"(fake Feishu, {args.latency * 1e3:.0f} ms latency)"
            )
            print()
            print(system.performance_report())
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new Fernet key on stdout, and how to use it on stderr."""
    # Only this command needs them (cryptography is not a small import).
    from cryptography.fernet import Fernet  # noqa: PLC0415

    from actors.stores._grants import KEY_ENV  # noqa: PLC0415

    print(Fernet.generate_key().decode("ascii"))
    print(
        f"{PROG}: a new key, shown once: keep it secret. Use it as {KEY_ENV} (a comma-separated "
        "list, newest first, rotates keys) or SqliteStore(path, key=...) / RedisStore(url, "
        "key=...).",
        file=sys.stderr,
    )
    return 0


def cmd_serve_metrics(args: argparse.Namespace) -> int:
    try:
        from actors.prometheus import serve_metrics  # noqa: PLC0415 - the optional extra
    except ImportError as exc:
        raise CommandError(str(exc)) from None

    # Short-lived fake tokens, so prewarms show up within minutes of watching.
    with (
        _workload_app(latency=0.05, token_lifetime=900.0) as (app, server),
        TokenSystem.start(app) as system,
    ):
        try:
            httpd, thread = serve_metrics(system, port=args.port, addr=args.addr)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            msg = f"cannot serve metrics on {args.addr}:{args.port}: {reason}"
            raise CommandError(msg) from None
        stop = threading.Event()
        workload = threading.Thread(
            target=_keep_getting,
            args=(system, stop, args.interval),
            name="actors-cli-workload",
            daemon=True,
        )
        workload.start()
        try:
            host = f"[{args.addr}]" if ":" in args.addr else args.addr
            where = "the embedded fake Feishu" if server else app.base_url
            print(
                f"serving metrics at http://{host}:{httpd.server_port}/metrics for app "
                f"{app.app_id} against {where}; Ctrl-C stops",
                flush=True,
            )
            _wait(args.duration)
        finally:
            stop.set()
            httpd.shutdown()
            httpd.server_close()
            thread.join()
            # Stopped before the join: a get still waiting on an unreachable upstream then ends
            # at once with SystemStoppedError instead of running out its timeout.
            system.stop()
            workload.join()
    return 0


def _wait(duration: float | None) -> None:
    """Block for ``duration`` seconds (None: until Ctrl-C)."""
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
        if left <= 0:
            return
        # Short slices, because CPython runs signal handlers only on the main thread between
        # bytecodes: when SIGINT lands on another thread, an endless wait never sees Ctrl-C.
        time.sleep(left)


def _keep_getting(system: TokenSystem, stop: threading.Event, interval: float) -> None:
    """The background workload of serve-metrics: a few gets of both kinds every ``interval``."""
    while not stop.is_set():
        for kind in (TokenKind.TENANT, TokenKind.APP):
            try:
                system.proxy.get_token(kind).get(timeout=5)
            except SystemStoppedError:
                return
            except (TokenError, pykka.Timeout) as exc:
                # Failures are what the metrics are there to show; keep going.
                logger.bind(error=type(exc).__name__).debug("serve-metrics workload: {}", exc)
        stop.wait(interval)
