"""Cuttable links between simulated devices and a real broker.

A device "goes offline" only if its connection really drops: the broker must see the socket die
without a DISCONNECT, so it publishes the device's last will, and the agent's MQTT client must
see it too, so it goes through its real reconnect path. Each device therefore reaches the broker
through a relay of its own (one loopback listener per device: no parsing of MQTT packets, no
guessing which connection is whose). Cutting it resets both sides of every live connection and
refuses new ones until it is restored; a cut of every relay is the broker dropping out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from modules.tasks import cancel_and_wait

log = logging.getLogger("modelfleet.simulator.relay")
_CHUNK = 65536


@dataclass
class _Link:
    server: asyncio.Server
    port: int
    cut: bool = False
    pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class LinkRelay:
    """Relays for named links to one upstream broker; `open(name)` gives the URL to connect to."""

    def __init__(self, upstream_host: str, upstream_port: int, *, scheme: str = "mqtt") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.scheme = scheme
        self._links: dict[str, _Link] = {}

    async def open(self, name: str) -> str:
        if name in self._links:
            return f"{self.scheme}://127.0.0.1:{self._links[name].port}"
        holder: list[_Link] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(holder[0], reader, writer)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = _Link(server, port)
        holder.append(link)
        self._links[name] = link
        return f"{self.scheme}://127.0.0.1:{port}"

    def is_cut(self, name: str) -> bool:
        return self._links[name].cut

    def cut(self, name: str) -> None:
        """Reset every live connection of the link (no DISCONNECT) and refuse new ones."""
        link = self._links[name]
        link.cut = True
        for client, upstream in list(link.pipes):
            client.transport.abort()
            upstream.transport.abort()
        link.pipes.clear()

    def restore(self, name: str) -> None:
        self._links[name].cut = False

    def cut_all(self) -> None:
        for name in self._links:
            self.cut(name)

    def restore_all(self) -> None:
        for name in self._links:
            self.restore(name)

    async def close(self) -> None:
        for link in self._links.values():
            link.server.close()
            for client, upstream in list(link.pipes):
                client.transport.abort()
                upstream.transport.abort()
            await cancel_and_wait(*link.tasks)
        for link in self._links.values():
            with contextlib.suppress(Exception):
                await link.server.wait_closed()
        self._links.clear()

    async def _serve(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if link.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.info("relay to %s:%d: %s", *self.upstream, exc)
            writer.transport.abort()
            return
        if link.cut:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        pair = (writer, up_writer)
        link.pipes.add(pair)
        loop = asyncio.get_running_loop()
        tasks = {
            loop.create_task(_pipe(reader, up_writer)),
            loop.create_task(_pipe(up_reader, writer)),
        }
        link.tasks |= tasks
        try:
            # Either direction ending ends the connection, as a real link would.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.pipes.discard(pair)
            for w in pair:
                if link.cut:
                    w.transport.abort()
                else:
                    w.close()
            await cancel_and_wait(*tasks)
            link.tasks -= tasks


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
