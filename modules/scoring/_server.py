"""Running the app: until cancelled (`serve`) or as a blocking call with clean Ctrl-C (`run_server`).

`run_server` is what `modelfleet serve` and the edge agent's child process end in; SIGTERM and
SIGINT both stop it cleanly, with exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from ._settings import ScoringSettings

log = logging.getLogger("modelfleet.scoring")


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


async def serve(settings: ScoringSettings) -> None:
    """Serve until cancelled; the listening address is logged once bound."""
    from ._app import create_app

    app = create_app(settings)
    runner = web.AppRunner(
        app, access_log=logging.getLogger("modelfleet.scoring.access") if settings.access_log else None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        for sock in site._server.sockets if site._server else ():
            address = sock.getsockname()
            log.info("listening on http://%s:%d", address[0], address[1])
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _serve_until_signal(settings: ScoringSettings) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, task.cancel)
    try:
        await serve(settings)
    except asyncio.CancelledError:
        log.info("stopped")


def run_server(settings: ScoringSettings) -> int:
    """Blocking: serve until SIGINT/SIGTERM, then shut down cleanly and return 0."""
    configure_logging()
    try:
        asyncio.run(_serve_until_signal(settings))
    except KeyboardInterrupt:
        log.info("stopped")
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    return 0
