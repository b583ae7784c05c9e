"""A byte relay between a TCP port and a Unix socket: how an agent inside the test's private
network namespace reaches the registry outside it (a Unix socket is a file, so it crosses
network namespaces; nothing leaves loopback on either side)."""

from __future__ import annotations

import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _join(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    peer: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    peer_reader, peer_writer = peer
    await asyncio.gather(_pipe(reader, peer_writer), _pipe(peer_reader, writer))


async def tcp_to_unix(port: int, path: str) -> asyncio.Server:
    """127.0.0.1:`port` -> the Unix socket `path`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = await asyncio.open_unix_connection(path)
        except OSError:
            writer.close()
            return
        await _join(reader, writer, peer)

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def unix_to_tcp(path: str, port: int) -> asyncio.Server:
    """The Unix socket `path` -> 127.0.0.1:`port`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await _join(reader, writer, peer)

    return await asyncio.start_unix_server(handle, path)
