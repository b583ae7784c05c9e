"""A payload cap enforced on the wire, before paho buffers anything.

paho reads a whole PUBLISH packet into memory (and copies it on the way) before any callback can
look at its size, so a 50 MB message on an open broker costs a client several times that. The
transport therefore hands paho this wrapper instead of the socket: it follows the MQTT framing
(fixed header, remaining length) of what it reads, passes every packet through unchanged, except a
PUBLISH whose body is above the limit. Of that one it keeps only the topic and packet id and drops
the rest as it arrives, then gives paho a small PUBLISH in its place: same flags, topic and id (so
paho acknowledges it as usual) and a marker payload that names the original payload's size. The transport
turns the marker into an `oversized` message. Memory stays bounded by the read chunk, whatever
the broker sends.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

MARKER = b"\x00modelfleet:oversized:"
_CHUNK = 64 * 1024
_PUBLISH = 3


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class GuardedSocket:
    """What paho reads from: the connected (possibly TLS) socket, with oversized PUBLISH bodies
    dropped unread. Everything but `recv` and `pending` is the socket's own."""

    def __init__(self, sock: socket.socket, max_body_bytes: int) -> None:
        self.sock = sock
        self.max_body_bytes = max_body_bytes
        self._out = bytearray()  # bytes ready for paho
        self._header = bytearray()  # the fixed header being read
        self._pass = 0  # body bytes of the current packet still to pass through
        self._prefix = bytearray()  # an oversized PUBLISH: topic length, topic, packet id
        self._prefix_needed = 0
        self._topic_known = False
        self._drop = 0  # body bytes of an oversized PUBLISH still to drop
        self._first = 0  # its first header byte (type and flags)
        self._size = 0  # its body size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> int:
        """Bytes readable without the fd becoming readable: ours, and TLS's decrypted ones."""
        inner = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
        return len(self._out) + inner

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        while not self._out:
            data = self.sock.recv(max(bufsize, _CHUNK))  # BlockingIOError etc. reach paho as they are
            if not data:
                return b""
            self._feed(data)
        chunk = bytes(self._out[:bufsize])
        del self._out[:bufsize]
        return chunk

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        i, end = 0, len(view)
        while i < end:
            if self._pass:
                take = min(self._pass, end - i)
                self._out += view[i : i + take]
                self._pass -= take
                i += take
            elif self._prefix_needed:
                take = min(self._prefix_needed, end - i)
                self._prefix += view[i : i + take]
                self._prefix_needed -= take
                i += take
                if not self._prefix_needed:
                    self._prefix_read()
            elif self._drop:
                take = min(self._drop, end - i)
                self._drop -= take
                i += take
                if not self._drop:
                    self._replace()
            else:
                self._header.append(view[i])
                i += 1
                if (len(self._header) > 1 and not self._header[-1] & 0x80) or len(self._header) == 5:
                    self._header_read()

    def _header_read(self) -> None:
        header, self._header = self._header, bytearray()
        length, multiplier = 0, 1
        for byte in header[1:]:
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
        if header[0] >> 4 == _PUBLISH and length > self.max_body_bytes:
            self._first, self._size = header[0], length
            self._prefix = bytearray()
            self._prefix_needed, self._topic_known = 2, False
            return
        self._out += header
        self._pass = length

    def _prefix_read(self) -> None:
        qos = (self._first >> 1) & 3
        if not self._topic_known:
            self._topic_known = True
            topic_length = int.from_bytes(self._prefix[:2], "big")
            self._prefix_needed = topic_length + (2 if qos else 0)
            if self._prefix_needed:
                return
        self._drop = self._size - len(self._prefix)
        if not self._drop:
            self._replace()

    def _replace(self) -> None:
        payload_size = self._size - len(self._prefix)
        body = bytes(self._prefix) + MARKER + str(payload_size).encode()
        self._out += bytes([self._first]) + _varint(len(body)) + body
        self._prefix = bytearray()
