"""The local status endpoint (`GET /status` on 127.0.0.1): what `modelfleet agent status` reads
on the device itself, with no broker in the way.

One read-only route on the loopback interface, served on asyncio's own streams rather than
aiohttp's web server: `aiohttp.web` costs about 1.7 MiB resident, and an idle agent (no module,
so no front proxy) would load it for this route alone. Each answer closes its connection, a
request head is bounded in size and in time, and nothing but the route is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from modules import ConfigError
from modules.device_state import ReportedState

log = logging.getLogger("modelfleet.agent")

ROUTE = "/status"
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Server Error"}


class StatusEndpoint:
    def __init__(self, port: int, reported_state: Callable[[], ReportedState]) -> None:
        self.port = port
        self.reported_state = reported_state
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.port == 0:
            return
        try:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise ConfigError(
                f"status endpoint cannot listen on 127.0.0.1:{self.port}: {exc.strerror}"
            ) from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) for a request head; only its request line matters."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, b"400: Bad Request", "text/plain"
        method, target = parts[0], parts[1]
        if target.split("?", 1)[0] != ROUTE:
            return 404, b"404: Not Found", "text/plain"
        if method not in ("GET", "HEAD"):
            return 405, b"405: Method Not Allowed", "text/plain"
        try:
            body = self.reported_state().model_dump_json().encode()
        except Exception:
            log.exception("status endpoint: the reported state could not be built")
            return 500, b"500: Server Error", "text/plain"
        return 200, body, "application/json"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            status, body, content_type = self._answer(head)
            lines = [
                f"HTTP/1.1 {status} {_REASONS[status]}",
                f"Content-Type: {content_type}; charset=utf-8",
                f"Content-Length: {len(body)}",
                "Connection: close",
            ]
            if status == 405:
                lines.append("Allow: GET, HEAD")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
