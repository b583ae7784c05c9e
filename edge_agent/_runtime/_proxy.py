"""The module's public port: a small reverse proxy in front of whichever instance is active.

Clients keep one address while versions change behind it. `switch()` sends new requests to the
new instance at once; requests already in flight finish on the old one, and `drained()` tells
when it can be stopped, so an update fails no request.

`aiohttp.web` (about 1.7 MiB resident) is imported when the first proxy starts: an agent that
runs no module never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("modelfleet.agent.proxy")

# RFC 9110 §7.6.1 hop-by-hop headers, plus Host (set for the target) and the length and encoding
# framing, which the two connections choose for themselves.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_CHUNK = 64 * 1024
# Requests to the scoring host can be large (8 MiB by default, configurable per module).
_MAX_BODY = 1 << 30


def _forwardable(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """Headers minus the hop-by-hop ones, including those the Connection header names."""
    items = list(headers.items())
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(name, value) for name, value in items if name.lower() not in _HOP_BY_HOP | named]


class FrontProxy:
    """Listens on `host:port` (port 0 picks one; read `.port` after `start()`)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._target: int | None = None
        self._in_flight: Counter[int] = Counter()
        self._idle_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def target(self) -> int | None:
        return self._target

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Keep-alive to the targets: a fresh connection per request would add a round trip.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("front proxy on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def switch(self, target_port: int | None) -> int | None:
        """Point new requests at `target_port` (None: answer 503); returns the previous target."""
        previous, self._target = self._target, target_port
        if previous != target_port:
            log.info("front proxy %d: target %s -> %s", self.port, previous, target_port)
        return previous

    def in_flight(self, port: int) -> int:
        return self._in_flight[port]

    async def drained(self, port: int, timeout: float) -> None:
        """Until no request to `port` is in flight; TimeoutError after `timeout` seconds."""
        if self._in_flight[port] == 0:
            return
        idle = asyncio.get_running_loop().create_future()
        self._idle_waiters.setdefault(port, []).append(idle)
        try:
            await asyncio.wait_for(idle, timeout)
        finally:
            waiters = self._idle_waiters.get(port, [])
            if idle in waiters:
                waiters.remove(idle)

    def _finished(self, port: int) -> None:
        # Synchronous on purpose: it runs in `finally`, also when the handler is being cancelled.
        self._in_flight[port] -= 1
        if self._in_flight[port] > 0:
            return
        del self._in_flight[port]
        for idle in self._idle_waiters.pop(port, []):
            if not idle.done():
                idle.set_result(None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        port = self._target
        if port is None:
            return _error(503, "no instance of this module is running")
        # Counted before the first await so drained() cannot miss a request that was routed
        # to the old target just before the switch.
        self._in_flight[port] += 1
        try:
            return await self._forward(request, port)
        finally:
            self._finished(port)

    async def _forward(self, request: web.Request, port: int) -> web.StreamResponse:
        from aiohttp import web  # loaded by start(); a dictionary lookup here

        assert self._session is not None
        url = f"http://127.0.0.1:{port}{request.rel_url}"
        headers = _forwardable(request.headers)
        body = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )
        except aiohttp.ClientConnectorError:
            return _error(503, f"the module instance on port {port} is not accepting connections")
        except aiohttp.ClientError as exc:
            return _error(502, f"the module instance on port {port} failed: {exc.__class__.__name__}")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in _forwardable(upstream.headers):
                if name.lower() != "content-length":
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            with contextlib.suppress(aiohttp.ClientPayloadError, ConnectionResetError):
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response


def _error(status: int, message: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"message": message}, status=status)
