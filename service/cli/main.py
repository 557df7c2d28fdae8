"""``genjobs``: the command line (console script ``genjobs``, also ``python -m service.cli``).

Every command is a thin shell over the library: ``serve`` runs a :class:`~service.server.replica.Replica`
with its :class:`~service.server.api.ServiceApi`; the client commands send one request to the
``<prefix>.api.<name>`` endpoints, exactly as any other NATS client would, so what they print is
what a program in another language gets. Configuration comes from ``GENJOBS_*`` variables
(:meth:`Settings.from_env`) with flags on top.

Exit codes mean the same thing for every command (see ``EXIT_CODES``): scripts and process
supervisors can tell "you typed it wrong" from "NATS is not there" from "the server answered no".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, TypeAlias

from service.cli.common import (
    DEFAULT_CLIENT_URL,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    api_request,
    connect,
    print_json,
    run_async,
    settings_from,
)

log = logging.getLogger("genjobs.cli")


# --- argument parsing ------------------------------------------------------------------------


def _connection_flags(p: argparse.ArgumentParser, default: Any) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--nats-url",
        metavar="URL",
        default=default,
        help="NATS server(s), comma separated; credentials go in the URL "
        "(nats://reader:pw@host:4222). Default: $GENJOBS_NATS_URL",
    )
    g.add_argument(
        "--prefix",
        metavar="P",
        default=default,
        help="subject prefix (default: $GENJOBS_PREFIX or genjobs)",
    )


def _common() -> argparse.ArgumentParser:
    """Connection flags, accepted after the command too (``genjobs status --nats-url ...``).

    ``SUPPRESS`` keeps a value given before the command when it is not repeated after it.
    """
    p = argparse.ArgumentParser(add_help=False)
    _connection_flags(p, argparse.SUPPRESS)
    return p


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--user", required=True, metavar="U", help="the job's userId")
    p.add_argument("--tenant", metavar="T", help="the job's tenantId, if it has one")


class _Formatter(argparse.HelpFormatter):
    """Wraps prose to the terminal, keeps pre-formatted text (anything with a newline) as is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


# The type of add_subparsers()' result (generic in typeshed only, hence the string).
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="genjobs",
        description="Resumable LLM generation jobs on NATS JetStream.",
        epilog=EXIT_CODES + "\n\nRun `genjobs COMMAND --help` for a command's options.",
        formatter_class=_Formatter,
    )
    _connection_flags(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for add in (_add_serve, _add_gateway, _add_demo, _add_aggregate, _add_tail, _add_queries):
        add(sub, common)
    return parser


def _add_serve(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """`genjobs serve`: a replica."""
    fmt = _Formatter
    p = sub.add_parser(
        "serve",
        parents=[common],
        formatter_class=fmt,
        help="run a replica (starts its own nats-server unless a NATS URL is given)",
        description="Run one genjobs replica: the actor system, the `genjobs` micro service "
        "(<prefix>.api.*) and the remote-ingest subjects (<prefix>.ingest.*). Without "
        "--nats-url / GENJOBS_NATS_URL it starts an embedded nats-server with nats.conf. "
        "SIGTERM or SIGINT stops it gracefully: running jobs get their terminal event, "
        "publish acks are flushed, the connection is drained, exit 0.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--data-dir",
        default=".genjobs-data",
        type=Path,
        help="JetStream store of the embedded nats-server (default: %(default)s)",
    )
    p.add_argument(
        "--port", type=int, default=4222, help="port of the embedded nats-server (default: 4222)"
    )
    p.add_argument(
        "--connect-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to keep trying to reach an external NATS at start (default: 10)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve the HTTP gateway (SSE, LibreChat routes, /readyz, /metrics) on this "
        "address, sharing the replica's NATS connection (settings: docs/http.md)",
    )
    _log_level(p)
    _uvloop(p)


def _add_gateway(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """`genjobs gateway`: the standalone HTTP gateway."""
    fmt = _Formatter
    p = sub.add_parser(
        "gateway",
        parents=[common],
        formatter_class=fmt,
        help="run the HTTP gateway: SSE with resume by seq, LibreChat's routes, health, metrics",
        description="Serve genjobs over HTTP as a plain NATS client (stateless: run as many as "
        "you like behind a load balancer): GET <prefix>/stream/:id (SSE; Last-Event-ID, "
        "?after=SEQ, ?resume=true), /active, /status/:id, POST /abort, /healthz, /readyz, "
        "/metrics. Needs GENJOBS_JWT_SECRET or GENJOBS_JWT_JWKS_URL, or GENJOBS_AUTH=none for "
        "development. Every setting: docs/http.md.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="listen address (default: $GENJOBS_HTTP or 127.0.0.1:8080)",
    )
    p.add_argument(
        "--connect-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to keep trying to reach NATS at start (default: 10)",
    )
    _log_level(p)
    _uvloop(p)


def _add_demo(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """`genjobs demo`: the self-contained tour."""
    fmt = _Formatter
    p = sub.add_parser(
        "demo",
        formatter_class=fmt,
        help="a self-contained tour: two replicas, a producer, a reader that drops off, an abort",
        description="Start a throw-away nats-server and two replicas in this process, stream a "
        "simulated LLM generation on replica A, read it with a reader that drops off mid-way "
        "and resumes by seq, abort a second job from replica B, and check that nothing was "
        "lost or duplicated. Exit 0 when every check passes, 1 otherwise.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--tokens", type=int, default=135, help="text tokens of the generation (default: 135)"
    )
    p.add_argument(
        "--token-delay",
        type=float,
        default=0.01,
        metavar="SECONDS",
        help="pause between tokens, like a model streaming (default: 0.01)",
    )
    p.add_argument(
        "--http",
        nargs="?",
        const="127.0.0.1:8080",
        default=None,
        metavar="HOST:PORT",
        help="also serve the demo page on a gateway (default address 127.0.0.1:8080) and "
        "stream a slow generation into it; prints the page's URL, stays up until Ctrl-C",
    )
    _uvloop(p)


def _add_aggregate(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """`genjobs aggregate`: parses its own arguments (service.cli.aggregate)."""
    p = sub.add_parser(
        "aggregate",
        add_help=False,
        help="rebuild a recorded event stream's content offline (see `genjobs aggregate -h`)",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)


def _add_tail(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """`genjobs tail`: follow a job's events."""
    fmt = _Formatter
    p = sub.add_parser(
        "tail",
        parents=[common],
        formatter_class=fmt,
        help="follow a job's events live (resumes by seq after a disconnect)",
        description="Print a job's events as they are stored: text deltas inline, one compact "
        "line for any other event. Ends after the terminal event (final or error). After a "
        "disconnect it resumes after the last seq it printed, so nothing is shown twice.",
        epilog=EXIT_CODES,
    )
    _job_args(p)
    p.add_argument(
        "--after", type=int, default=0, metavar="SEQ", help="start after this stream seq"
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON line per event: {seq, index, kind, event}"
    )
    _uvloop(p)


def _add_queries(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """`genjobs status|resume|abort|active|counts`: one request, the JSON reply printed."""
    fmt = _Formatter
    for name, what in (
        ("status", "a job's status and content so far"),
        ("resume", "a job's resume snapshot (continue reading at seq + 1)"),
        ("abort", "abort a job from anywhere; prints the AbortResult"),
    ):
        p = sub.add_parser(
            name,
            parents=[common],
            formatter_class=fmt,
            help=what,
            description=f"Request <prefix>.api.{name} and print the JSON reply: {what}.",
            epilog=EXIT_CODES,
        )
        _job_args(p)
    p = sub.add_parser(
        "active",
        parents=[common],
        formatter_class=fmt,
        help="a user's running jobs",
        description="Request <prefix>.api.active and print {activeJobIds}.",
        epilog=EXIT_CODES,
    )
    p.add_argument("--user", required=True, metavar="U")
    p.add_argument("--tenant", metavar="T")
    sub.add_parser(
        "counts",
        parents=[common],
        formatter_class=fmt,
        help="how many jobs are running, complete, error, aborted",
        description="Request <prefix>.api.counts and print {running, complete, error, aborted}.",
        epilog=EXIT_CODES,
    )


def _log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default=os.environ.get("GENJOBS_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log to stdout from this level (default: $GENJOBS_LOG_LEVEL or info)",
    )


def _uvloop(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-uvloop", action="store_true", help="run on the standard asyncio event loop"
    )


# --- client commands --------------------------------------------------------------------------


def _job_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"jobId": args.job_id, "userId": args.user}
    if args.tenant:
        body["tenantId"] = args.tenant
    return body


async def _client_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    url = settings.nats_url or DEFAULT_CLIENT_URL
    name = args.command
    body: dict[str, Any]
    if name in ("status", "resume", "abort"):
        body = _job_body(args)
    elif name == "active":
        body = {"userId": args.user}
        if args.tenant:
            body["tenantId"] = args.tenant
    else:
        body = {}
    nc = await connect(url, name=f"genjobs-cli-{name}")
    try:
        ok, reply = await api_request(nc, settings, name, body)
    finally:
        await nc.close()
    if not ok:
        print_json(reply, sys.stderr)
        return EXIT_FAILED
    print_json(reply)
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse and run one command; returns the exit status (argparse exits 2 on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "aggregate":
        from service.cli.aggregate import main as aggregate_main

        return aggregate_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from service.cli.serve import serve

            return serve(args)
        if args.command == "gateway":
            from service.cli.gateway import gateway

            return gateway(args)
        if args.command == "demo":
            from service.cli.demo import main as demo_main

            return demo_main(args)
        if args.command == "tail":
            from service.cli.tail import tail

            return run_async(lambda: tail(args), not args.no_uvloop)
        return run_async(lambda: _client_command(args))
    except CliError as e:
        print(f"genjobs {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
