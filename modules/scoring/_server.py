"""Running the app: until cancelled (`serve`) or as a blocking call with clean Ctrl-C (`run_server`).

`run_server` is what `modelfleet serve` and the edge agent's child process end in; SIGTERM and
SIGINT both stop it cleanly, with exit code 0. With `processes > 1` it supervises that many
worker processes on one port (see `_workers`); `serve` is always this one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys

from aiohttp import web

from . import _loop
from ._settings import ScoringSettings
from ._workers import BalancedAcceptor, ConnectionTable, WorkerSupervisor, bind_socket, multiprocess_supported

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
    runner = _runner(settings)
    await runner.setup()
    freezing = asyncio.create_task(_freeze_once_loaded(runner))
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        for sock in site._server.sockets if site._server else ():
            address = sock.getsockname()
            log.info("listening on http://%s:%d", address[0], address[1])
        await asyncio.Event().wait()
    finally:
        freezing.cancel()
        await runner.cleanup()


async def _freeze_once_loaded(runner: web.AppRunner) -> None:
    """In a process that only serves: what exists once the model is loaded lives as long as
    the process, so it is frozen and the collector stops walking it on every full collection
    while requests run."""
    from ._app import HOST_KEY

    if await runner.app[HOST_KEY].loaded():
        gc.freeze()


def _runner(settings: ScoringSettings) -> web.AppRunner:
    from ._app import create_app
    from ._fast_path import FastPathRunner

    access_log = logging.getLogger("modelfleet.scoring.access") if settings.access_log else None
    return FastPathRunner(create_app(settings), access_log=access_log)


async def serve_on_socket(
    settings: ScoringSettings, sock: socket.socket, table: ConnectionTable, index: int
) -> None:
    """One worker process of several: serve on the supervisor's socket until cancelled."""
    runner = _runner(settings)
    await runner.setup()
    assert runner.server is not None
    acceptor = BalancedAcceptor(sock, runner.server, table, index)
    freezing = asyncio.create_task(_freeze_once_loaded(runner))
    try:
        acceptor.start()
        log.debug("worker %d (pid %d) serving", index, os.getpid())
        await asyncio.Event().wait()
    finally:
        freezing.cancel()
        acceptor.close()
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
    if settings.processes > 1:
        if multiprocess_supported():
            return _run_workers(settings)
        log.warning("several processes need fork(); serving with one process")
    try:
        _loop.run(_serve_until_signal(settings))
    except KeyboardInterrupt:
        log.info("stopped")
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    return 0


def _run_workers(settings: ScoringSettings) -> int:
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    return WorkerSupervisor(settings, serve_on_socket, sock).run()
