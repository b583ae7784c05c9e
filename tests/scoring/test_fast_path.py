"""The fast path for `POST /score` answers exactly as aiohttp's route does, and only when it may.

Two hosts serve the same script side by side: one as `modelfleet serve` serves (fast path on),
one where aiohttp answers everything. Every kind of reply run() can give must come back the
same from both, byte for byte but for the values that differ per request (Date, generated ids,
run time). Raw-socket tests then check the framing: pipelined requests answered in order,
bodies split over packets, and every head the fast path must leave to aiohttp.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from typing import Any

import pytest
import requests

from modules.scoring._fast_path import FastPathRunner, parse_head, supported

from .conftest import SCRIPTS

SCRIPT = SCRIPTS / "reply_kinds.py"
# Values that differ per request or per moment, not per server.
_VARYING = {"date", "x-ms-run-fn-exec-ms"}
KINDS = [
    "echo",
    "raise",
    "none",
    "text",
    "big",
    "response",
    "empty",
    "failed",
    "bad_header",
    "stream",
    "big_response",
    "not_json",
]


# Warm-up bodies are the largest the tests send: the inline gate lets a body onto the loop only
# if it is not much larger than the largest one it has seen run fast.
WARM_BODY = {"kind": "echo", "padding": "." * 200}


def _warm(host: Any) -> None:
    """Until runs go on the event loop (the inline gate has seen enough fast threaded runs)."""
    deadline = time.monotonic() + 30
    while not host.settings.entry_script or not _inline(host):
        assert time.monotonic() < deadline, "runs never moved onto the event loop"
        requests.post(host.url + "/score", json=WARM_BODY, timeout=10).raise_for_status()


def _inline(host: Any) -> bool:
    return _inline_with(host, {})


@pytest.fixture
def pair(serve_host) -> tuple[Any, Any]:
    """(fast path on, aiohttp only), both warm, same script and settings."""
    hosts = []
    for fast_path in (True, False):
        host = serve_host(fast_path=fast_path, entry_script=SCRIPT, model_dir=SCRIPTS)
        assert host.wait_loaded()["status"] == "Healthy"
        _warm(host)
        hosts.append(host)
    return hosts[0], hosts[1]


def _seen(response: requests.Response, generated_ids: bool) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers in the order sent (less what differs per request), body."""
    own_id = response.headers.get("x-request-id")
    headers = []
    for name, value in response.raw.headers.items():
        if name.lower() in _VARYING:
            value = "<varies>"
        elif generated_ids and name.lower() in ("x-request-id", "x-ms-request-id") and value == own_id:
            value = "<generated>"
        headers.append((name, value))
    return response.status_code, headers, response.content


def test_the_installed_aiohttp_has_what_the_fast_path_reads() -> None:
    # Were this False, the host would serve correctly but without the fast path: fail loudly.
    assert supported()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-ms-client-request-id": "client-7", "TraceId": "trace-1"},
        {"x-request-id": "mine-1", "x-ms-request-id": "legacy-1"},
        {"Accept-Encoding": "identity"},
        {"Accept-Encoding": "gzip"},
    ],
    ids=["plain", "client-ids", "own-ids", "identity", "gzip"],
)
def test_every_reply_is_answered_as_aiohttp_answers_it(pair, kind: str, headers: dict[str, str]) -> None:
    fast, reference = pair
    body = json.dumps({"kind": kind}).encode()
    before = fast.fast.answered
    ours = requests.post(fast.url + "/score", data=body, headers=headers, timeout=10, stream=True)
    theirs = requests.post(reference.url + "/score", data=body, headers=headers, timeout=10, stream=True)
    raw_ours, raw_theirs = ours.raw.read(decode_content=False), theirs.raw.read(decode_content=False)
    assert fast.fast.answered == before + 1, "the fast path did not answer"
    generated = "x-request-id" not in headers
    assert _seen(ours, generated)[:2] == _seen(theirs, generated)[:2]
    if ours.headers.get("Content-Encoding") == "gzip":
        raw_ours, raw_theirs = gzip.decompress(raw_ours), gzip.decompress(raw_theirs)
    # An error body names the request id, which each server makes up for itself.
    raw_ours = raw_ours.replace(ours.headers["x-request-id"].encode(), b"<id>")
    raw_theirs = raw_theirs.replace(theirs.headers["x-request-id"].encode(), b"<id>")
    assert raw_ours == raw_theirs
    if kind == "raise":
        assert b"hunter2" not in raw_ours  # the exception text stays on the server


def test_a_large_reply_is_gzipped_for_a_client_that_asks(pair) -> None:
    fast, _ = pair
    before = fast.fast.answered
    response = requests.post(fast.url + "/score", json={"kind": "big"}, timeout=10)
    assert fast.fast.answered == before + 1
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert len(response.json()["rows"]) == 400


def test_metrics_count_what_the_fast_path_answered(pair) -> None:
    fast, _ = pair

    def count(status: str) -> float:
        text = requests.get(fast.url + "/metrics", timeout=10).text
        line = f'modelfleet_scoring_requests_total{{method="POST",route="/score",status="{status}"}}'
        values = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)]
        return values[0] if values else 0.0

    ok, failed = count("200"), count("500")
    before = fast.fast.answered
    requests.post(fast.url + "/score", json={"kind": "echo"}, timeout=10)
    requests.post(fast.url + "/score", json={"kind": "raise"}, timeout=10)
    assert fast.fast.answered == before + 2
    assert (count("200"), count("500")) == (ok + 1, failed + 1)


# ------------------------------------------------------------------ raw sockets: framing


def _connect(host: Any) -> socket.socket:
    port = int(host.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _post(body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST /score HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class _Reader:
    """Reads responses off one socket in order (Content-Length or chunked framing)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        part, self.buffer = self.buffer.split(marker, 1)
        return part

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        part, self.buffer = self.buffer[:size], self.buffer[size:]
        return part

    def response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._until(b"\r\n\r\n").decode()
        status_line, *lines = head.split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        status = int(status_line.split()[1])
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n"), 16)
                chunk = self._exactly(size + 2)[:-2]
                if not size:
                    break
                body += chunk
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def closed(self) -> bool:
        try:
            self.sock.settimeout(5)
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False


def _echo(name: str) -> bytes:
    return json.dumps({"kind": "echo", "name": name}).encode()


def test_pipelined_requests_are_answered_in_order_whoever_answers_them(pair) -> None:
    fast, _ = pair
    before = fast.fast.answered
    with _connect(fast) as sock:
        sock.sendall(
            _post(_echo("a"))
            + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
            + _post(_echo("b"))
            + b"GET /swagger.json HTTP/1.1\r\nHost: x\r\n\r\n"
            + _post(_echo("c"))
            + _post(_echo("d"))
        )
        reader = _Reader(sock)
        answers = [reader.response() for _ in range(6)]
    assert [status for status, _, _ in answers] == [200] * 6
    assert json.loads(answers[0][2])["name"] == "a"
    assert json.loads(answers[1][2]) == {"ready": True}
    assert json.loads(answers[2][2])["name"] == "b"
    assert "swagger" in json.loads(answers[3][2])
    assert [json.loads(answers[i][2])["name"] for i in (4, 5)] == ["c", "d"]
    assert fast.fast.answered > before  # the first one at least: aiohttp was idle then


def test_a_body_split_over_packets_is_still_answered_by_the_fast_path(pair) -> None:
    fast, _ = pair
    message = _post(_echo("split"))
    before = fast.fast.answered
    with _connect(fast) as sock:
        for cut in (10, 30, len(message) - 3):  # inside the head, inside the body, near the end
            sock.sendall(message[:cut])
            time.sleep(0.05)
            sock.sendall(message[cut:])
            status, _, body = _Reader(sock).response()
            assert status == 200 and json.loads(body)["name"] == "split"
    assert fast.fast.answered == before + 3


def test_a_body_trickling_in_small_packets_is_answered_once_whole(pair) -> None:
    fast, _ = pair
    message = _post(json.dumps({"kind": "echo", "name": "trickle", "padding": "." * 150}).encode())
    before = fast.fast.answered
    with _connect(fast) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(message), 7):
            sock.sendall(message[at : at + 7])
        status, _, body = _Reader(sock).response()
    assert (status, json.loads(body)["name"]) == (200, "trickle")
    assert fast.fast.answered == before + 1


def test_a_head_trickling_in_byte_by_byte_is_read_once_whole(pair) -> None:
    fast, _ = pair
    message = _post(_echo("slow head"), "X-Padding: " + "p" * 3000 + "\r\n")
    head_end = message.index(b"\r\n\r\n") + 4
    before = fast.fast.answered
    with _connect(fast) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(head_end):
            sock.sendall(message[at : at + 1])
        sock.sendall(message[head_end:])
        status, _, body = _Reader(sock).response()
    assert (status, json.loads(body)["name"]) == (200, "slow head")
    assert fast.fast.answered == before + 1


def test_requests_behind_a_streamed_answer_wait_for_its_end(pair) -> None:
    fast, _ = pair
    with _connect(fast) as sock:
        sock.sendall(_post(json.dumps({"kind": "stream"}).encode()) + _post(_echo("after the stream")))
        reader = _Reader(sock)
        streamed, after = reader.response(), reader.response()
    assert streamed[:1] == (200,) and streamed[1]["transfer-encoding"] == "chunked"
    assert streamed[2] == b"".join(f"part {index};".encode() for index in range(5))
    assert (after[0], json.loads(after[2])["name"]) == (200, "after the stream")


def test_a_chunked_body_goes_to_aiohttp_with_the_rest_of_its_connection(pair) -> None:
    fast, _ = pair
    body = _echo("chunked")
    before = fast.fast.answered
    with _connect(fast) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
            + _post(_echo("after"))
        )
        reader = _Reader(sock)
        first, second = reader.response(), reader.response()
    assert (first[0], json.loads(first[2])["name"]) == (200, "chunked")
    assert (second[0], json.loads(second[2])["name"]) == (200, "after")
    assert fast.fast.answered == before


@pytest.mark.parametrize(
    "head",
    [
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: x\r\n Content-Length: 5\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: x\nContent-Length: 5\r\n\r\n",
        b"POST /score HTTP/1.1\r\nHost: \x01x\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=[
        "length-and-chunked",
        "two-lengths",
        "signed-length",
        "space-before-colon",
        "folded",
        "bare-lf",
        "ctl",
    ],
)
def test_heads_that_cannot_be_framed_surely_are_aiohttps_to_judge(pair, head: bytes) -> None:
    """Request smuggling lives in these: aiohttp answers them exactly as it does alone."""
    fast, reference = pair
    assert parse_head(head[: head.index(b"\r\n\r\n")]) is None
    tail = b"hello" + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    before = fast.fast.answered
    seen = []
    for host in (fast, reference):
        with _connect(host) as sock:
            sock.sendall(head + tail)
            reader = _Reader(sock)
            answers = []
            try:
                while True:
                    status, _headers, body = reader.response()
                    answers.append((status, body))
            except (ConnectionError, TimeoutError, OSError):
                pass
            seen.append(answers)
    assert seen[0] == seen[1]
    assert fast.fast.answered == before


def test_expect_100_continue_is_answered_by_aiohttp(pair) -> None:
    fast, _ = pair
    body = _echo("expect")
    with _connect(fast) as sock:
        sock.sendall(
            _post(b"", "Expect: 100-continue\r\n").replace(
                b"Content-Length: 0", b"Content-Length: %d" % len(body)
            )
        )
        reader = _Reader(sock)
        assert reader._until(b"\r\n\r\n").startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        status, _, answer = reader.response()
    assert (status, json.loads(answer)["name"]) == (200, "expect")


@pytest.mark.parametrize(
    ("version", "extra"),
    [("1.0", ""), ("1.1", "Connection: close\r\n")],
    ids=["http-1.0", "connection-close"],
)
def test_a_connection_the_client_closes_after_one_answer_is_aiohttps(pair, version: str, extra: str) -> None:
    fast, _ = pair
    before = fast.fast.answered
    with _connect(fast) as sock:
        sock.sendall(_post(_echo("once"), extra, version))
        reader = _Reader(sock)
        status, _, body = reader.response()
        assert (status, json.loads(body)["name"]) == (200, "once")
        assert reader.closed()
    assert fast.fast.answered == before


def test_keep_alive_counts_from_the_last_fast_answer(serve_host) -> None:
    """aiohttp closes a connection idle past its keep-alive time; answers it never saw must
    count as activity, and an idle connection must still be closed."""
    host = serve_host(entry_script=SCRIPT, model_dir=SCRIPTS, runner_args={"keepalive_timeout": 1.0})
    host.wait_loaded()
    _warm(host)
    before = host.fast.answered
    with _connect(host) as sock:
        reader = _Reader(sock)
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # well past the timeout, never idle that long
            sock.sendall(_post(_echo("alive")))
            assert reader.response()[0] == 200
            time.sleep(0.3)
        assert host.fast.answered > before
        time.sleep(2.0)
        assert reader.closed()


def test_a_wrong_key_a_long_id_and_a_big_body_are_aiohttps(serve_host) -> None:
    host = serve_host(entry_script=SCRIPT, model_dir=SCRIPTS, primary_key="k" * 32, max_request_bytes=2048)
    host.wait_loaded()
    key = {"Authorization": "Bearer " + "k" * 32}
    deadline = time.monotonic() + 30
    while not _inline_with(host, key):
        assert time.monotonic() < deadline
        requests.post(host.url + "/score", json=WARM_BODY, headers=key, timeout=10)
    before = host.fast.answered
    assert requests.post(host.url + "/score", json={"kind": "echo"}, headers=key, timeout=10).ok
    assert host.fast.answered == before + 1
    wrong = requests.post(host.url + "/score", json={"kind": "echo"}, headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    long_id = requests.post(
        host.url + "/score", json={}, headers={**key, "x-ms-client-request-id": "i" * 101}
    )
    assert long_id.status_code == 431
    big = requests.post(host.url + "/score", data=b"{" + b" " * 4096 + b"}", headers=key, timeout=10)
    assert big.status_code == 413
    assert host.fast.answered == before + 1


def _inline_with(host: Any, headers: dict[str, str]) -> bool:
    text = requests.get(host.url + "/metrics", headers=headers, timeout=10).text
    return "modelfleet_scoring_inline 1" in text.splitlines()


def test_a_slow_script_is_never_answered_on_the_fast_path(serve_host) -> None:
    host = serve_host(entry_script=SCRIPTS / "slow_run.py", model_dir=SCRIPTS)
    host.wait_loaded()
    for _ in range(12):
        requests.post(host.url + "/score", json={"sleep": 0.002}, timeout=10)
    assert host.fast.answered == 0


def test_the_switch_turns_the_fast_path_off(monkeypatch) -> None:
    import asyncio

    from modules.scoring import ScoringSettings, create_app

    monkeypatch.setenv("MODELFLEET_FAST_PATH", "0")

    async def server_class() -> str:
        runner = FastPathRunner(create_app(ScoringSettings(entry_script=SCRIPT, model_dir=SCRIPTS)))
        await runner.setup()
        try:
            return type(runner.server).__name__
        finally:
            await runner.cleanup()

    assert asyncio.run(server_class()) == "Server"


# ------------------------------------------------------------------ what aiohttp must still answer


def _exchange(host: Any, message: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """Every answer to `message` until the server stops sending, and whether it closed."""
    with _connect(host) as sock:
        sock.sendall(message)
        reader = _Reader(sock)
        answers = []
        closed = False
        try:
            while True:
                status, _headers, body = reader.response()
                answers.append((status, body))
                if len(answers) >= 3:
                    break
        except ConnectionError:
            closed = True
        except (TimeoutError, OSError):
            pass
        return answers, closed


def _head_lines(*lines: str, body: bytes) -> bytes:
    return ("POST /score HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode() + body


_ECHO = json.dumps({"kind": "echo", "name": "strict"}).encode()
_LENGTH = f"Content-Length: {len(_ECHO)}"


@pytest.mark.parametrize(
    "message",
    [
        _head_lines(_LENGTH, body=_ECHO),
        _head_lines("Host: x", "Host: y", _LENGTH, body=_ECHO),
        _head_lines("Host: x", "Content-Type: a/b", "Content-Type: a/b", _LENGTH, body=_ECHO),
        _head_lines("Host: x", *(f"X-Many-{index}: {index}" for index in range(130)), _LENGTH, body=_ECHO),
        _head_lines("Host: x", "X-Long: " + "v" * 9000, _LENGTH, body=_ECHO),
        _head_lines("Host: x", "Connection: keep-alive", "Connection: close", _LENGTH, body=_ECHO),
        _head_lines("Host: x", "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5", _LENGTH, body=_ECHO),
    ],
    ids=[
        "no-host",
        "two-hosts",
        "two-content-types",
        "130-headers",
        "9000-byte-value",
        "two-connections",
        "key1",
    ],
)
def test_heads_aiohttp_refuses_or_closes_on_are_answered_as_aiohttp_answers_them(
    pair, message: bytes
) -> None:
    fast, reference = pair
    before = fast.fast.answered
    assert _exchange(fast, message + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n") == _exchange(
        reference, message + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert fast.fast.answered == before


def test_a_compressed_body_is_inflated_by_aiohttp_as_before(pair) -> None:
    fast, reference = pair
    small = gzip.compress(_echo("zipped"))
    big = gzip.compress(json.dumps({"kind": "echo", "padding": "." * 1_500_000}).encode())
    for body in (small, big):
        answers = []
        for host in (fast, reference):
            response = requests.post(
                host.url + "/score", data=body, headers={"Content-Encoding": "gzip"}, timeout=20
            )
            answers.append((response.status_code, response.content))
        assert answers[0] == answers[1] and answers[0][0] == 200
    index = gzip.compress(json.dumps({"padding": "." * 1_500_000}).encode())
    response = requests.post(
        fast.url + "/v2/repository/index", data=index, headers={"Content-Encoding": "gzip"}, timeout=20
    )
    assert response.status_code == 200


def test_a_generator_that_fails_part_way_cuts_the_connection_on_both_paths(pair) -> None:
    seen = []
    for host in pair:
        with _connect(host) as sock:
            sock.sendall(_post(json.dumps({"kind": "stream_fails"}).encode()))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        seen.append((head.split(b"\r\n")[0], body))
    assert seen[0] == seen[1]
    assert seen[0][1] == b"4\r\none;\r\n4\r\ntwo;\r\n"  # no last chunk: not a clean end


def test_a_large_body_behind_a_streamed_answer_is_read_once_the_stream_ends(pair) -> None:
    fast, _ = pair
    big = json.dumps({"kind": "echo", "name": "big", "padding": "." * 700_000}).encode()
    with _connect(fast) as sock:
        sock.sendall(
            _post(json.dumps({"kind": "stream_slow", "parts": 3, "pause": 0.2}).encode()) + _post(big)
        )
        reader = _Reader(sock)
        streamed, after = reader.response(), reader.response()
    assert streamed[2] == b"part 0;part 1;part 2;"
    assert (after[0], json.loads(after[2])["name"]) == (200, "big")


def test_a_streamed_answer_waits_for_a_client_that_does_not_read(pair) -> None:
    fast, _ = pair
    parts = 40
    with _connect(fast) as sock:
        sock.sendall(_post(json.dumps({"kind": "stream_big", "parts": parts}).encode()))
        time.sleep(1.5)  # the client reads nothing meanwhile
        buffered = asyncio.run_coroutine_threadsafe(_write_buffers(fast), fast._loop).result(10)
        assert buffered < 8 << 20, f"{buffered} bytes buffered for a client that reads nothing"
        status, _, body = _Reader(sock).response()
    assert status == 200 and len(body) == parts << 20


async def _write_buffers(host: Any) -> int:
    return sum(
        connection.transport.get_write_buffer_size()
        for connection in host._runner.server.connections
        if connection.transport is not None
    )


def test_a_long_stream_outlives_the_keep_alive_timeout_and_shutdown_waits_for_it(serve_host) -> None:
    host = serve_host(entry_script=SCRIPT, model_dir=SCRIPTS, runner_args={"keepalive_timeout": 0.5})
    host.wait_loaded()
    _warm(host)
    before = host.fast.answered
    received: list[bytes] = []

    def read_stream() -> None:
        with _connect(host) as sock:
            sock.sendall(_post(json.dumps({"kind": "stream_slow", "parts": 5, "pause": 0.4}).encode()))
            received.append(_Reader(sock).response()[2])

    reader = threading.Thread(target=read_stream)
    reader.start()
    time.sleep(0.9)  # past the keep-alive timeout, two parts in
    assert host.fast.answered == before + 1
    host.__exit__(None, None, None)  # aiohttp's graceful shutdown: waits for requests in progress
    reader.join(30)
    assert received == [b"".join(f"part {index};".encode() for index in range(5))]
