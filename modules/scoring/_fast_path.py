"""`POST /score` answered below aiohttp's request objects, where nothing about it needs them.

Under load, aiohttp's per-request machinery (the parsed message queued for the connection's
task, a task per request, the request and response objects, the writer) costs a small model
more CPU than the model itself: on the bench's CNN, a bare protocol answering from the bytes it
received spends about 80 us per request in all, aiohttp's bare handler about 140. For the request
that carries the load -- `POST /score` on an entry script whose runs are measured tiny enough for
the event loop -- the connection's protocol answers itself, with the same run, ids, headers,
errors and metrics as the application: both build their answers from the same functions.

Everything else goes to aiohttp exactly as it arrived: another route or method, a query, a
browser's CORS request, a wrong key, an over-long id, a compressed body, a body over the limit,
a head aiohttp would refuse, a run that belongs on the threads, a model not ready yet. So do
requests while aiohttp still has one of the connection's requests queued or in progress, which
keeps answers in order. aiohttp is only handed whole messages, cut where its own parser cuts
them (at most one Content-Length, no Transfer-Encoding); a head that cannot be framed that
surely, or after which the connection closes, hands the rest of the connection to aiohttp.
`MODELFLEET_FAST_PATH=0` turns the fast path off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import zlib
from collections.abc import Iterator
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from ._app import (
    HOST_KEY,
    RequestIdTooLongError,
    error_response,
    finish_headers,
    finish_response,
    gzip_wanted,
    request_ids,
)
from ._raw_http import AMLRequest, AMLResponse

log = logging.getLogger("modelfleet.scoring")

SWITCH = "MODELFLEET_FAST_PATH"
# A head longer than this is not a scoring request worth framing here: aiohttp takes the rest.
_MAX_HEAD = 16 * 1024
# A /score body is held here until complete up to this size; larger ones stream into aiohttp.
_MAX_FAST_BODY = 256 * 1024
# Bytes held behind a streamed answer before the connection stops being read.
_MAX_HELD = 256 * 1024
# aiohttp's own limits on a head: past them it answers 400 itself.
_MAX_FIELD = 8190
_MAX_HEADERS = 128
# Headers aiohttp refuses to see twice (aiohttp.http_parser.SINGLETON_HEADERS).
_SINGLETONS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)
# Heads with one of these are framed by aiohttp alone, for the rest of the connection.
_NOT_FRAMED_HERE = (b"\r\ntransfer-encoding:", b"\r\nupgrade:", b"\r\nsec-websocket-key1:")
# Requests with one of these are aiohttp's to answer: it answers 100-continue, and it inflates a
# compressed body before the handler reads it.
_NOT_ANSWERED_HERE = (b"\r\nexpect:", b"\r\ncontent-encoding:")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header lines as aiohttp's parser reads them surely: a name, a colon, a value without CR, LF or
# other control characters.
_HEADER_LINES = re.compile(rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*")
# Answers that never carry a body, so no framing header either (as aiohttp writes them).
EMPTY_BODY_STATUS_CODES = frozenset((204, 304, *range(100, 200)))
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_STREAM_END = object()
# What the aiohttp protocol keeps that the fast path reads; without them it stays off.
_NEEDED = (
    "_request_count",
    "_request_in_progress",
    "_handler_waiter",
    "_keepalive_timeout",
    "_next_keepalive_close_time",
    "_waiter",
    "_messages",
    "_paused",
    "_payload_parser",
    "_upgraded",
    "_close",
    "_force_close",
)


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def supported() -> bool:
    """True where aiohttp's protocol has the state the fast path reads to keep answers in order."""
    slots: set[str] = set()
    for cls in RequestHandler.__mro__:
        slots.update(getattr(cls, "__slots__", ()))
    return all(name in slots for name in _NEEDED) and callable(getattr(RequestHandler, "_drain_helper", None))


# A 200 the host wrote from run()'s result, as the general path below writes it.
_JSON_200 = (
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: application/json\r\n"
    "x-ms-run-function-failed: False\r\n"
    "x-ms-run-fn-exec-ms: %.3f\r\n"
    "x-request-id: %s\r\n"
    "x-ms-request-id: %s\r\n"
    "%s"
    "Content-Length: %d\r\n"
    "Date: %s\r\n"
    f"Server: {SERVER_SOFTWARE}\r\n"
    "\r\n"
)


def _gzip(body: bytes) -> bytes:
    """The whole body gzipped, as aiohttp compresses a body it holds."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


class _Streamed:
    """A reply whose body a generator yields: sent chunked, each `next()` on the threads."""

    __slots__ = ("chunks", "head", "on_done")

    def __init__(self, head: bytes, chunks: Iterator[Any], on_done: Any) -> None:
        self.head = head
        self.chunks = chunks
        self.on_done = on_done


class _Date:
    """The Date header, formatted once a second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = formatdate(now, usegmt=True)
        return self._text


class FastScore:
    """Builds the answer to one `POST /score` from its parsed head and body, or declines."""

    def __init__(self, app: web.Application, access_log: bool) -> None:
        host = app[HOST_KEY]
        settings = host.settings
        self._host = host
        self._access_log = access_log
        self._details = settings.error_details
        self._gzip_min_bytes = settings.gzip_min_bytes
        self._max_body = min(settings.max_request_bytes, _MAX_FAST_BODY)
        self._cors = bool(settings.cors_origins)
        self._auth = host.auth.enabled
        self._allows = host.auth.allows
        self._observe = host.metrics.observe_request
        self._date = _Date()
        self.answered = 0  # requests answered here, for tests and diagnostics

    @property
    def max_body(self) -> int:
        return self._max_body

    @property
    def executor(self) -> Any:
        return self._host.executor

    def answer(self, headers: CIMultiDictProxy[str], body: bytes) -> bytes | _Streamed | None:
        """The whole response, or None when aiohttp must answer (nothing has run then)."""
        started = time.perf_counter()
        host = self._host
        if not host.ready or self._access_log:
            return None
        handler = host.handler
        score_now = getattr(handler, "score_now", None)
        if score_now is None or handler.raw_requests or not handler.runs_inline(len(body)):
            return None
        if self._auth and not self._allows(headers.get("Authorization")):
            return None
        if self._cors and "Origin" in headers:
            return None
        try:
            ids = request_ids(headers)
        except RequestIdTooLongError:
            return None
        self.answered += 1
        try:
            reply: AMLResponse = score_now(AMLRequest("POST", "/score", "", headers, body))
            return self._reply(reply, ids, headers, started)
        except Exception as exc:
            return self._error(exc, ids, headers, started)

    def _reply(self, reply: AMLResponse, ids: Any, headers: Any, started: float) -> bytes | _Streamed:
        """What the app's `/score` route and middleware make of run()'s reply, as bytes."""
        exec_ms = reply.exec_ms if reply.exec_ms is not None else (time.perf_counter() - started) * 1000
        status = reply.status_code
        body = reply.body
        least = self._gzip_min_bytes
        if reply.json_only and status == 200 and (least is None or len(body) < least):
            # The usual reply, whose headers are known: the same lines from a template.
            extra = ""
            if ids.client:
                extra = f"x-ms-client-request-id: {ids.client}\r\n"
            trace_id = headers.get("TraceId")
            if trace_id is not None:
                extra += f"TraceId: {trace_id}\r\n"
            head = _JSON_200 % (exec_ms, ids.request_id, ids.legacy, extra, len(body), self._date())
            self._observe("POST", "/score", 200, time.perf_counter() - started)
            return head.encode() + body
        failed = reply.run_function_failed or reply.status_code >= 500
        items = reply.header_items()
        items.append(("x-ms-run-function-failed", "True" if failed else "False"))
        items.append(("x-ms-run-fn-exec-ms", f"{exec_ms:.3f}"))
        if reply.stream is not None and reply.status_code not in EMPTY_BODY_STATUS_CODES:
            response_headers: CIMultiDict[str] = CIMultiDict(items)
            ids.apply(response_headers, headers.get("TraceId"))
            status = reply.status_code

            def done() -> None:
                self._observe("POST", "/score", status, time.perf_counter() - started)

            return _Streamed(self._head(status, response_headers, None), reply.stream, done)
        # What the route's web.Response and the middleware make of it, without the objects.
        response_headers = CIMultiDict(items)
        gzip_min_bytes = self._gzip_min_bytes
        accept_encoding = headers.get("Accept-Encoding")
        encoding = None
        if gzip_min_bytes is not None and gzip_wanted(
            response_headers, body, accept_encoding, gzip_min_bytes
        ):
            body, encoding = _gzip(body), "gzip"
        finish_headers(response_headers, "/score", False, status, ids, headers.get("TraceId"))
        self._observe("POST", "/score", status, time.perf_counter() - started)
        return self._serialize(status, response_headers, body, encoding)

    def _error(self, exc: Exception, ids: Any, headers: Any, started: float) -> bytes:
        """The middleware's answer to a failed run, as bytes."""
        response = error_response(exc, ids, False, self._details, "POST", "/score")
        body: bytes = response.body  # type: ignore[assignment]
        finish_response(
            response,
            "/score",
            False,
            ids,
            headers.get("TraceId"),
            self._gzip_min_bytes,
            headers.get("Accept-Encoding"),
        )
        encoding = None
        if response.compression:  # as aiohttp compresses a whole body it holds
            body, encoding = _gzip(body), "gzip"
        self._observe("POST", "/score", response.status, time.perf_counter() - started)
        return self._serialize(response.status, response.headers, body, encoding)

    def _serialize(self, status: int, headers: Any, body: bytes, encoding: str | None = None) -> bytes:
        head = self._head(status, headers, body, encoding)
        return head if status in EMPTY_BODY_STATUS_CODES else head + body

    def _head(self, status: int, headers: Any, body: bytes | None, encoding: str | None = None) -> bytes:
        """Status line and headers as aiohttp writes them (`body` None: chunked; `encoding`: the
        body's compression, whose header aiohttp adds after the length).

        No value can hold a character aiohttp refuses to send: the script's headers are checked
        by `header_items()`, the echoed ids come from a head `parse_head` checked, and the rest
        are the host's own."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if status in EMPTY_BODY_STATUS_CODES:
            pass  # no body, so no framing header either
        elif body is None:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(f"Content-Length: {len(body)}")
            if encoding is not None:
                lines.append(f"Content-Encoding: {encoding}")
            if body and "Content-Type" not in headers:
                lines.append("Content-Type: application/octet-stream")
        if "Date" not in headers:
            lines.append(f"Date: {self._date()}")
        if "Server" not in headers:
            lines.append(f"Server: {SERVER_SOFTWARE}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode()


class _Head:
    """What the fast path reads of a request head: how long its message is, and whether it is
    a `POST /score` it may answer (with its headers, read-only)."""

    __slots__ = ("candidate", "headers", "length")

    def __init__(self, length: int, candidate: bool, headers: CIMultiDictProxy[str] | None) -> None:
        self.length = length
        self.candidate = candidate
        self.headers = headers


def parse_head(head: bytes) -> _Head | None:
    """The head (without its blank line), or None when it cannot be framed as surely as
    aiohttp's parser frames it."""
    line_end = head.find(b"\r\n")
    request_line = (head if line_end == -1 else head[:line_end]).split(b" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or _TOKEN.fullmatch(method) is None or method == b"CONNECT":
        return None
    if line_end != -1 and _HEADER_LINES.fullmatch(head, line_end) is None:
        return None  # a folded or malformed line, a bare CR or LF, a control character
    lowered = head.lower()
    if any(needle in lowered for needle in _NOT_FRAMED_HERE):
        return None
    # A request after which the connection closes gets the rest of the connection with it, as
    # aiohttp alone would: it judges what follows such a request in the same read.
    if version == b"HTTP/1.0":
        return None
    at = lowered.find(b"\r\nconnection:")
    if at != -1:
        value_end = lowered.find(b"\r\n", at + 2)
        value = lowered[at + len(b"\r\nconnection:") : None if value_end == -1 else value_end]
        if value.strip(b" \t") != b"keep-alive" or lowered.find(b"\r\nconnection:", at + 1) != -1:
            return None
    at = lowered.find(b"\r\ncontent-length:")
    if at == -1:
        length = 0
        has_length = False
    else:
        if lowered.find(b"\r\ncontent-length:", at + 1) != -1:
            return None  # two lengths: aiohttp refuses, or picks one; either way not ours
        value_at = at + len(b"\r\ncontent-length:")
        value_end = head.find(b"\r\n", value_at)
        value = head[value_at : None if value_end == -1 else value_end].strip(b" \t")
        if not value.isdigit() or len(value) > 15:
            return None
        length = int(value)
        has_length = True
    candidate = (
        has_length
        and method == b"POST"
        and target == b"/score"
        and line_end != -1
        and head.isascii()
        and not any(needle in lowered for needle in _NOT_ANSWERED_HERE)
    )
    if not candidate:
        return _Head(length, False, None)
    headers: CIMultiDict[str] = CIMultiDict()
    names: list[str] = []
    for line in head[line_end + 2 :].decode("ascii").split("\r\n"):
        name, _, value = line.partition(":")
        if len(line) > _MAX_FIELD:
            return _Head(length, False, None)  # aiohttp's 400 for an over-long field
        names.append(name.lower())
        headers.add(name, value.strip(" \t"))
    if (
        len(names) > _MAX_HEADERS
        or "host" not in names  # HTTP/1.1 without a Host: aiohttp's 400
        or len(set(names) & _SINGLETONS) != sum(1 for name in names if name in _SINGLETONS)
    ):
        return _Head(length, False, None)
    return _Head(length, True, CIMultiDictProxy(headers))


class FastRequestHandler(RequestHandler):
    """aiohttp's connection protocol, answering tiny `POST /score` runs itself."""

    __slots__ = (
        "_fast",
        "_fast_buffer",
        "_fast_busy",
        "_fast_handed_over",
        "_fast_last_head",
        "_fast_need",
        "_fast_passthrough",
        "_fast_reading_paused",
    )

    def __init__(self, manager: web.Server, fast: FastScore, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._fast = fast
        # Bytes not framed yet, and how many must be there before framing is worth trying again
        # (a body trickling in is not copied and scanned again for every packet); negative: a
        # head of that many bytes so far, searched for its end only in what comes after.
        self._fast_buffer = bytearray()
        self._fast_need = 0
        self._fast_busy: asyncio.Task[None] | None = None
        self._fast_handed_over = False
        self._fast_passthrough = 0
        self._fast_last_head: tuple[bytes, _Head] | None = None
        self._fast_reading_paused = False

    def data_received(self, data: bytes) -> None:
        if self._fast_handed_over or not data:  # b"": aiohttp resuming its paused parser
            super().data_received(data)
            return
        if self._force_close or self._close:
            return
        buffer = self._fast_buffer
        if buffer or self._fast_busy is not None:
            buffer += data
            if self._fast_busy is not None:
                # While a streamed answer is going out, everything after it waits, and past
                # a bound the client waits too.
                if len(buffer) > _MAX_HELD and not self._fast_reading_paused and self.transport:
                    self._fast_reading_paused = True
                    self.transport.pause_reading()
                return
            if len(buffer) < self._fast_need:
                self._touch()  # a request still arriving is not an idle connection
                return
            scanned = -self._fast_need  # > 0: a head still arriving, this much of it searched
            if scanned > 0 and len(buffer) <= _MAX_HEAD and buffer.find(b"\r\n\r\n", scanned - 3) == -1:
                self._fast_need = -len(buffer)  # only the bytes that come next can end it
                self._touch()
                return
            data = bytes(buffer)
            self._fast_buffer = bytearray()
        elif self._fast_passthrough:  # the rest of a message aiohttp is reading
            owed = self._fast_passthrough
            if len(data) <= owed:
                self._fast_passthrough = owed - len(data)
                super().data_received(data)
                return
            self._fast_passthrough = 0
            super().data_received(data[:owed])
            data = data[owed:]
        self._frame(data)

    def _keep(self, rest: bytes, need: int) -> None:
        self._fast_buffer = bytearray(rest)
        self._fast_need = need

    def _hand_over(self, data: bytes) -> None:
        self._fast_handed_over = True
        super().data_received(data)

    def _aiohttp_idle(self) -> bool:
        """aiohttp has nothing of this connection queued or running: it was never handed a
        request, or it waits for the next one."""
        if self._messages or self._paused or self._payload_parser is not None or self._upgraded:
            return False
        if not self._request_count:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _frame(self, data: bytes) -> None:
        position, size = 0, len(data)
        while position < size:
            if self._force_close or self._close or self.transport is None:
                return
            end = data.find(b"\r\n\r\n", position)
            if end == -1:
                if size - position > _MAX_HEAD:
                    self._hand_over(data[position:])
                else:
                    self._keep(data[position:], -(size - position))  # negative: a partial head
                return
            raw_head = data[position:end]
            last = self._fast_last_head
            if last is not None and last[0] == raw_head:
                head: _Head | None = last[1]  # a client sends the same head again and again
            else:
                head = parse_head(raw_head)
                if head is None:
                    self._hand_over(data[position:])
                    return
                self._fast_last_head = (raw_head, head)
            message_end = end + 4 + head.length
            if head.candidate and head.length <= self._fast.max_body:
                if message_end > size:  # the body is still coming
                    self._keep(data[position:], message_end - position)
                    return
                if self._aiohttp_idle():
                    assert head.headers is not None
                    answer = self._fast.answer(head.headers, data[end + 4 : message_end])
                    if answer is not None:
                        self._send(answer, data[message_end:])
                        if self._fast_busy is not None:
                            return
                        position = message_end
                        continue
            taken = min(message_end, size)
            super().data_received(data[position:taken])
            self._fast_passthrough = message_end - taken
            position = taken

    def _send(self, answer: bytes | _Streamed, rest: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self._touch()
        if isinstance(answer, bytes):
            transport.write(answer)
            return
        self._keep(rest, 0)
        # aiohttp's shutdown waits for a request in progress, as for one of its own.
        self._request_in_progress = True
        self._fast_busy = self._loop.create_task(self._stream(transport, answer))

    def _touch(self) -> None:
        """Count as activity for aiohttp's keep-alive timeout, which only sees its own requests."""
        if self._keepalive_timeout:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout

    async def _stream(self, transport: asyncio.Transport, streamed: _Streamed) -> None:
        """A generator's chunks as they come, as the app's route sends them: each `next()` on
        the threads, each write drained, and a connection cut (not ended) if it fails."""
        loop = self._loop
        try:
            transport.write(streamed.head)
            while True:
                chunk = await loop.run_in_executor(self._fast.executor, next, streamed.chunks, _STREAM_END)
                if chunk is _STREAM_END:
                    break
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                if data:
                    transport.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self._touch()
                    if self._paused:
                        await self._drain_helper()
            transport.write(b"0\r\n\r\n")
        except ConnectionError:
            return  # the client went away: nothing left to tell it
        except Exception:
            # Headers are gone: the only honest signal left is a cut connection.
            log.exception("the streamed response of run() failed part way")
            transport.abort()
            return
        finally:
            streamed.on_done()
            self._fast_busy = None
            self._request_in_progress = False
            waiter = self._handler_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._touch()
        rest = bytes(self._fast_buffer)
        self._keep(b"", 0)
        if self._fast_reading_paused:
            self._fast_reading_paused = False
            if not transport.is_closing():
                transport.resume_reading()
        if rest and self.transport is not None:
            self.data_received(rest)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._fast_busy is not None:
            self._fast_busy.cancel()
        super().connection_lost(exc)


class FastPathServer(web.Server):
    """aiohttp's server, making connections that answer tiny `POST /score` runs themselves."""

    def __init__(self, base: web.Server, fast: FastScore) -> None:
        self.__dict__.update(base.__dict__)
        self.fast = fast

    def __call__(self) -> RequestHandler:
        return FastRequestHandler(self, self.fast, loop=self._loop, **self._kwargs)


class FastPathRunner(web.AppRunner):
    """`web.AppRunner` whose server takes the fast path where it can (see module docstring)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if not (enabled() and supported()):
            return server
        # aiohttp logs every request unless told not to; the fast path logs none.
        access_log = self._kwargs.get("access_log", True) is not None
        return FastPathServer(server, FastScore(self.app, access_log))
