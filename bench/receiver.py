"""A minimal webhook receiver for the benchmarks, in its own process: answers 200 `ok` on
`/hook` on every port given, optionally after a delay, or never (`--hang`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web


def app(delay_s: float, hang: bool) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if hang:
            await asyncio.Event().wait()
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_post("/hook", handle)
    return application


async def serve(ports: list[int], delay_s: float, hang: bool) -> None:
    runners = []
    for port in ports:
        runner = web.AppRunner(app(delay_s, hang), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.ports, args.delay_s, args.hang))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
