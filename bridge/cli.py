"""The `munsit-bridge` command: parse arguments, build the service, map outcomes to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bridge import __version__, preflight
from bridge.config import Settings, load_settings, resolve_path
from bridge.deliver.verify import VerifyError, parse_header, verify
from bridge.errors import BridgeError, ConfigError, NotFoundError, RequestError
from bridge.logging import configure
from bridge.ops import commands
from bridge.params import parse_filter, parse_limit, parse_time
from bridge.runtime import tune_gc
from bridge.service import Service

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="munsit-bridge", description="Signed, durable webhooks for the Munsit denoise API."
    )
    parser.add_argument("--version", action="version", version=f"munsit-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="poll Munsit and deliver webhooks until stopped")
    run.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")

    check = sub.add_parser(
        "check", help="validate the configuration and look at the store (creates nothing)"
    )
    check.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")
    check.add_argument("--live", action="store_true", help="also call the Munsit list once")
    check.add_argument(
        "--send-test", action="store_true", help="also send bridge.test to every subscriber"
    )

    sub.add_parser("demo", help="run the whole pipeline against the built-in simulator")

    send = sub.add_parser("send-test", help="send a bridge.test event to one subscriber now")
    send.add_argument("id", help="subscriber id")
    send.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")

    rep = sub.add_parser("replay", help="send stored events again, with their original ids")
    rep.add_argument("--since", required=True, help="ISO 8601 time, e.g. 2026-11-24T00:00:00Z")
    rep.add_argument("--subscriber", help="only this subscriber")
    rep.add_argument("--type", help="only this event type, e.g. denoise.completed")
    rep.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")

    ver = sub.add_parser("verify", help="verify a received webhook as a receiver would")
    ver.add_argument("--secret", required=True, help="the subscriber's whsec_ secret")
    ver.add_argument("--body-file", required=True, help="the raw request body ('-': stdin)")
    ver.add_argument("--header", action="append", default=[], help="'name: value', once per header")
    ver.add_argument("--tolerance-s", type=float, default=300.0, help="timestamp tolerance")

    stat = sub.add_parser("status", help="the bridge at a glance, from its store")
    stat.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")
    stat.add_argument("--json", action="store_true", help="machine-readable output")

    dels = sub.add_parser("deliveries", help="recent deliveries with their last attempt")
    dels.add_argument("--state", help="pending, delivered, failed or orphaned")
    dels.add_argument("--subscriber", help="only this subscriber's")
    dels.add_argument("--type", help="only deliveries of events of this type")
    dels.add_argument("--record", help="only deliveries of events of this Munsit record")
    dels.add_argument("--since", help="only deliveries queued at or after this ISO 8601 time")
    dels.add_argument("--until", help="only deliveries queued before this ISO 8601 time")
    dels.add_argument("--limit", help="at most this many, newest first (default 100)")
    dels.add_argument("--json", action="store_true", help="what GET /api/deliveries answers")
    dels.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")

    sub.add_parser("secret", help="print a new whsec_ secret for a subscriber")

    sim = sub.add_parser("simulate", help="run the Munsit API simulator standalone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8099)
    sim.add_argument("--api-key", default="sim-key")
    sim.add_argument("--jobs", type=int, default=20, help="records to create at start")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "check":
            return _check(args.config, live=args.live, send=args.send_test)
        if args.command == "demo":
            from bridge.sim.demo import run_demo

            return asyncio.run(run_demo())
        if args.command == "send-test":
            return _send_test(args.id, args.config)
        if args.command == "replay":
            return _replay(args.config, args.since, args.subscriber, args.type)
        if args.command == "verify":
            return _verify(args.secret, args.body_file, args.header, args.tolerance_s)
        if args.command == "status":
            return _status(args.config, as_json=args.json)
        if args.command == "deliveries":
            return _deliveries(args)
        if args.command == "secret":
            print(commands.new_secret())
            return EXIT_OK
        if args.command == "simulate":
            return _simulate(args.host, args.port, args.api_key, args.jobs)
    except KeyboardInterrupt:
        return EXIT_OK
    except ConfigError as exc:  # every command: the configuration names the bad key
        return _fail(exc, EXIT_CONFIG)
    except BridgeError as exc:  # every command: a clear line, never a traceback
        return _fail(exc, EXIT_FATAL)
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def _fail(exc: BaseException, code: int) -> int:
    print(f"munsit-bridge: {exc}", file=sys.stderr)
    return code


def _load(config: str | None) -> Settings:
    return load_settings(resolve_path(config))


def _run(config: str | None) -> int:
    # until the event loop takes over, SIGTERM stops start-up as cleanly as Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = _load(config)
    # configured once here
    configure(
        settings.log.level, settings.log.format, cache=True, replica=settings.store.replica_id
    )
    asyncio.run(_serve(settings))
    return EXIT_OK


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Service(settings, exclusive=True) as service:
        tune_gc()
        await service.run(stop)


def _check(config: str | None, *, live: bool, send: bool) -> int:
    settings = _load(config)
    ok = asyncio.run(preflight.check(settings, live=live, send=send, emit=_say))
    return EXIT_OK if ok else EXIT_FATAL


def _say(line: str) -> None:
    print(line, flush=True)


def _status(config: str | None, *, as_json: bool) -> int:
    report = asyncio.run(commands.status(_load(config)))
    print(json.dumps(report, indent=2) if as_json else "\n".join(commands.status_text(report)))
    return EXIT_OK


def _deliveries(args: argparse.Namespace) -> int:
    try:
        where, limit = parse_filter(lambda key: getattr(args, key)), parse_limit(args.limit)
    except RequestError as exc:  # a bad parameter, like a bad key
        return _fail(exc, EXIT_CONFIG)
    settings = _load(args.config)
    page = asyncio.run(commands.deliveries(settings, where=where, limit=limit))
    table = commands.deliveries_table(page)
    print(json.dumps(page, indent=2) if args.json else "\n".join(table))
    return EXIT_OK


def _simulate(host: str, port: int, api_key: str, jobs: int) -> int:
    from bridge.sim.simulator import serve

    asyncio.run(serve(host=host, port=port, api_key=api_key, jobs=jobs))
    return EXIT_OK


def _verify(secret: str, body_file: str, header_lines: list[str], tolerance_s: float) -> int:
    try:
        raw = sys.stdin.buffer.read() if body_file == "-" else Path(body_file).read_bytes()
        body = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        where = "standard input" if body_file == "-" else f"body file {body_file}"
        print(f"invalid: cannot read {where}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    try:
        headers = dict(parse_header(line) for line in header_lines)
        event = verify(secret, body, headers, now=time.time(), tolerance_s=tolerance_s)
    except VerifyError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print("valid")
    print(json.dumps(event, indent=2, ensure_ascii=False))
    return EXIT_OK


def _send_test(subscriber_id: str, config: str | None) -> int:
    settings = _load(config)
    try:
        answer = asyncio.run(commands.send_test(settings, subscriber_id))
    except NotFoundError as exc:
        return _fail(exc, EXIT_CONFIG)
    code = answer["status_code"] if answer["status_code"] is not None else "no response"
    print(f"{subscriber_id}: {code} in {answer['latency_ms']:.0f} ms")
    if answer["error"]:
        print(f"error: {answer['error']}")
    if answer["response_excerpt"]:
        print(f"response: {answer['response_excerpt']}")
    return EXIT_OK if answer["ok"] else EXIT_FATAL


def _replay(config: str | None, since: str, subscriber: str | None, event_type: str | None) -> int:
    settings = _load(config)
    try:
        result = asyncio.run(
            commands.replay(
                settings, since=parse_time(since), subscriber=subscriber, event_type=event_type
            )
        )
    except RequestError as exc:  # a bad parameter, like a bad key
        return _fail(exc, EXIT_CONFIG)
    print(commands.replay_summary(result, subscriber))
    return EXIT_OK
