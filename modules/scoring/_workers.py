"""Several scoring processes behind one port, like gunicorn's workers.

Per-request work (HTTP parsing, JSON, numpy conversion, the entry script itself) is Python under
the GIL, so one process tops out at about one core whatever the thread count. The supervisor
binds the listening socket once (so `port=0` and a busy port behave as with one process), forks
`processes` workers that each run the whole host on it, init() included (as Azure ML does with
several gunicorn workers), and restarts a worker that dies.

Connections are spread over the workers by a shared table of open-connection counts: a worker
whose count is above the least loaded one's leaves a waiting connection to the others for a
moment. Without that the first worker to wake takes every connection a keep-alive client opens
at once (asyncio accepts up to 100 per wake-up) and the other workers idle.

Workers never outlive the supervisor: on Linux they ask the kernel for SIGTERM when it dies
(`PR_SET_PDEATHSIG`), and everywhere they also watch a pipe the supervisor holds open, so a
`kill -9` of the supervisor still takes them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from aiohttp import web

from . import _loop
from ._settings import ScoringSettings

log = logging.getLogger("modelfleet.scoring")

_PR_SET_PDEATHSIG = 1
# A worker that dies sooner than this after its start is restarted only after a pause, so a
# crashing init() does not become a fork loop.
_MIN_LIFETIME_S = 5.0
_STOP_GRACE_S = 20.0
# How long a busier worker leaves a waiting connection to the least loaded one.
_DEFER_ACCEPT_S = 0.002
_PUBLISH_EVERY_S = 0.05
_SLOT = struct.Struct("i")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def multiprocess_supported() -> bool:
    return hasattr(os, "fork") and sys.platform != "darwin"


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ConnectionTable:
    """Open connections per worker, in anonymous shared memory (inherited across fork)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._memory = mmap.mmap(-1, _SLOT.size * size)

    def set(self, index: int, value: int) -> None:
        _SLOT.pack_into(self._memory, index * _SLOT.size, value)

    def get(self, index: int) -> int:
        return _SLOT.unpack_from(self._memory, index * _SLOT.size)[0]

    def least_loaded_other(self, index: int) -> int:
        others = [self.get(i) for i in range(self.size) if i != index]
        return min(others) if others else 1 << 30


class BalancedAcceptor:
    """Accepts from the shared socket for one worker, leaving connections to idler workers.

    Accepting one connection per readiness event (instead of asyncio's up-to-100) and deferring
    briefly when another worker has fewer connections keeps long-lived keep-alive connections
    spread evenly; after the deferral the worker accepts anyway, so a busy peer never strands
    a client.
    """

    def __init__(
        self,
        sock: socket.socket,
        server: web.Server,
        table: ConnectionTable,
        index: int,
    ) -> None:
        self._sock = sock
        self._server = server
        self._table = table
        self._index = index
        self._loop = asyncio.get_running_loop()
        self._deferred: asyncio.TimerHandle | None = None
        self._closed = False
        self._pending: set[asyncio.Task] = set()
        self._refresh: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._publish_periodically()

    def _publish_periodically(self) -> None:
        # Closed connections are only noticed here; accepts publish at once.
        self.publish()
        self._refresh = self._loop.call_later(_PUBLISH_EVERY_S, self._publish_periodically)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        for handle in (self._deferred, self._refresh):
            if handle is not None:
                handle.cancel()
        self._table.set(self._index, 0)

    def publish(self) -> None:
        self._table.set(self._index, len(self._server.connections))

    def _on_readable(self, force: bool = False) -> None:
        if self._closed:
            return
        mine = len(self._server.connections)
        if not force and mine > self._table.least_loaded_other(self._index):
            # Step aside for a moment; accept anyway afterwards if nobody else did.
            self._loop.remove_reader(self._sock.fileno())
            self._deferred = self._loop.call_later(_DEFER_ACCEPT_S, self._resume)
            return
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: log, keep serving the connections we have
            log.warning("accept failed: %s", exc)
            return
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._table.set(self._index, mine + 1)
        task = self._loop.create_task(self._connect(conn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _resume(self) -> None:
        self._deferred = None
        if self._closed:
            return
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._on_readable(force=True)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._server, conn)
        except OSError:
            conn.close()
        self.publish()


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _worker_main(
    settings: ScoringSettings,
    sock: socket.socket,
    table: ConnectionTable,
    index: int,
    parent_pid: int,
    watch_fd: int,
    serve_on_socket: Callable[..., object],
) -> int:
    """Runs in the forked child (SIGINT/SIGTERM still blocked); returns the exit code."""
    _die_with_parent(parent_pid)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            # One cancel only: a second one would interrupt the clean shutdown.
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(watch_fd)
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
            task.cancel()

        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop)
        # EOF on the pipe = the supervisor is gone (also where PR_SET_PDEATHSIG does not exist).
        loop.add_reader(watch_fd, stop)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_on_socket(settings, sock, table, index)  # type: ignore[misc]

    try:
        _loop.run(main())
    except Exception:
        log.exception("scoring worker %d failed", index)
        return 1
    return 0


class WorkerSupervisor:
    """Forks, watches and stops the workers; the process the agent or the terminal sees."""

    def __init__(
        self, settings: ScoringSettings, serve_on_socket: Callable[..., object], sock: socket.socket
    ) -> None:
        self.settings = settings
        self.count = settings.processes
        self._serve_on_socket = serve_on_socket
        self._sock = sock
        self._table = ConnectionTable(self.count)
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self._stopping = False
        self._watch_r, self._watch_w = os.pipe()

    def _spawn(self, index: int) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across fork so the child cannot take a stop signal with the parent's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            raise
        if pid == 0:  # child
            code = 1
            try:
                os.close(self._watch_w)
                code = _worker_main(
                    self.settings,
                    self._sock,
                    self._table,
                    index,
                    parent,
                    self._watch_r,
                    self._serve_on_socket,
                )
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self._table.set(index, 0)
        self._children[pid] = (index, time.monotonic())

    def run(self) -> int:
        """Blocking: until SIGINT/SIGTERM, then stop every worker and return 0."""
        received: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            received.append(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            address = self._sock.getsockname()
            log.info(
                "listening on http://%s:%d with %d worker processes",
                address[0],
                address[1],
                self.count,
            )
            for index in range(self.count):
                self._spawn(index)
            restart_at: dict[int, float] = {}
            while not received:
                self._reap(restart_at)
                now = time.monotonic()
                for index, when in list(restart_at.items()):
                    if now >= when and not received:
                        del restart_at[index]
                        self._spawn(index)
                time.sleep(0.2)
            self._stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._watch_r)
            os.close(self._watch_w)
            self._sock.close()
        log.info("stopped")
        return 0

    def _reap(self, restart_at: dict[int, float]) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index, started = self._children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - started
            delay = 0.0 if lived >= _MIN_LIFETIME_S else _MIN_LIFETIME_S - lived
            log.error(
                "scoring worker %d (pid %d) exited with %d; restarting in %.1f s", index, pid, code, delay
            )
            self._table.set(index, 0)
            restart_at[index] = time.monotonic() + delay

    def _stop(self) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        while self._children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                break
            if pid == 0:
                time.sleep(0.05)
                continue
            self._children.pop(pid, None)
        for pid in list(self._children):
            log.warning("scoring worker pid %d did not stop in time; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._children.clear()
