"""The ``lark-token-actors`` command line (also ``python -m actors``).

Commands: ``demo``, ``token``, ``simulate``, ``report``, ``serve-metrics``. A usage mistake prints
one line (``lark-token-actors: error: ...``) and exits 2; a failure at run time (Feishu said no,
the port is taken) prints one line and exits 1; Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from loguru import logger

from actors import __version__
from actors import _commands as cmds
from actors._commands import ENV_ID, ENV_SECRET, ENV_TICKET, ENV_URL, CommandError, UsageError
from actors._config import FEISHU, AppType, TokenKind

__all__ = ["main"]

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
        "fetcher, a simulation harness and a Prometheus endpoint.",
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
    demo.set_defaults(run=cmds.cmd_demo)

    token = commands.add_parser(
        "token",
        help="fetch a token with the credentials from the environment and print it masked",
        description=f"Fetch a token for the app in {ENV_ID} / {ENV_SECRET} (domain: "
        f"{ENV_URL}, default {FEISHU}) and print it masked, or whole with --show.",
    )
    token.add_argument(
        "--kind", choices=[k.value for k in TokenKind], default="tenant", help="default: tenant"
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
    token.set_defaults(run=cmds.cmd_token)

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
    simulate.set_defaults(run=cmds.cmd_simulate)

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
    report.set_defaults(run=cmds.cmd_report)

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
    serve.set_defaults(run=cmds.cmd_serve_metrics)
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
