"""The `munsit-bridge` command: parse arguments, build the service, map outcomes to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import aiohttp

from bridge import __version__
from bridge.config import Settings, load_settings, resolve_path
from bridge.errors import BridgeError, ConfigError
from bridge.logging import configure
from bridge.service import Service, build_store

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="munsit-bridge", description="Signed, durable webhooks for the Munsit denoise API."
    )
    parser.add_argument("--version", action="version", version=f"munsit-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="poll Munsit and deliver webhooks until stopped")
    run.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")

    check = sub.add_parser("check", help="validate the configuration and open the store")
    check.add_argument("--config", help="TOML file (default: $BRIDGE_CONFIG or ./bridge.toml)")
    check.add_argument("--live", action="store_true", help="also call the Munsit list once")

    sub.add_parser("demo", help="run the whole pipeline against the built-in simulator")

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
            return _check(args.config, live=args.live)
        if args.command == "demo":
            from bridge.demo import run_demo

            return asyncio.run(run_demo())
        if args.command == "simulate":
            return _simulate(args.host, args.port, args.api_key, args.jobs)
    except KeyboardInterrupt:
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def _load(config: str | None) -> Settings:
    return load_settings(resolve_path(config))


def _run(config: str | None) -> int:
    try:
        settings = _load(config)
    except ConfigError as exc:
        print(f"munsit-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log.level, settings.log.format)
    try:
        asyncio.run(_serve(settings))
    except BridgeError as exc:
        print(f"munsit-bridge: {exc}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Service(settings) as service:
        await service.run(stop)


def _check(config: str | None, *, live: bool) -> int:
    try:
        settings = _load(config)
    except ConfigError as exc:
        print(f"munsit-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        asyncio.run(_check_async(settings, live=live))
    except BridgeError as exc:
        print(f"munsit-bridge: {exc}", file=sys.stderr)
        return EXIT_FATAL
    subs = ", ".join(s.id for s in settings.subscribers) or "none"
    print(f"config ok: store {settings.store.url}, subscribers: {subs}")
    if live:
        print(f"upstream ok: {settings.upstream.base_url} accepted the API key")
    return EXIT_OK


async def _check_async(settings: Settings, *, live: bool) -> None:
    store = build_store(settings)
    await store.open()
    await store.close()
    if not live:
        return
    from bridge.clock import SystemClock
    from bridge.upstream.client import MunsitClient

    clock = SystemClock()
    async with aiohttp.ClientSession() as session:
        client = MunsitClient(
            session,
            base_url=settings.upstream.base_url,
            api_key=settings.upstream.api_key,
            timeout_s=settings.upstream.request_timeout_s,
            sleep=clock.sleep,
            now=clock.now,
            max_attempts=2,
        )
        await client.list_page(0, 1)


def _simulate(host: str, port: int, api_key: str, jobs: int) -> int:
    from bridge.upstream.simulator import serve

    asyncio.run(serve(host=host, port=port, api_key=api_key, jobs=jobs))
    return EXIT_OK
