"""A loopback HTTP proxy in front of a registry that counts bytes and injects faults.

It lets tests prove what crossed the wire (not what the client believes it sent) and cut or
corrupt a download at an exact byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class ProxyLog:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    request_body_bytes: int = 0


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.log = ProxyLog()
        self.cut_blob_downloads = 0  # how many blob GETs to cut half-way
        self.corrupt_blobs = False  # flip a byte in every blob body served
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.log.requests.append((request.method, request.path, request.headers.get("Range")))
        self.log.request_body_bytes += len(body)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            location = out_headers.get("Location")
            if location and location.startswith(self.upstream):
                out_headers["Location"] = self.url + location[len(self.upstream) :]
            is_blob_get = request.method == "GET" and "/blobs/sha256:" in request.path
            if is_blob_get and upstream.status in (200, 206) and self.corrupt_blobs and payload:
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            if is_blob_get and upstream.status in (200, 206) and self.cut_blob_downloads > 0:
                self.cut_blob_downloads -= 1
                resp = web.StreamResponse(status=upstream.status, headers=out_headers)
                resp.content_length = len(payload)
                await resp.prepare(request)
                await resp.write(payload[: len(payload) // 2])
                assert request.transport is not None
                request.transport.close()
                return resp
            return web.Response(status=upstream.status, headers=out_headers, body=payload)
