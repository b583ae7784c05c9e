"""The local status endpoint: `GET /status` answers the reported state, anything else is refused,
and a client that never finishes its request cannot hold the agent."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from edge_agent._status_endpoint import MAX_HEAD_BYTES, StatusEndpoint
from modules import ConfigError
from modules.device_state import DeviceInfo, ReportedState
from tests._services import free_port


def _state() -> ReportedState:
    return ReportedState(
        device_id="press-7",
        fleet="plant",
        at=datetime(2024, 5, 1, tzinfo=UTC),
        device=DeviceInfo(agent_version="0", platform="Linux", python="3.11", execution_providers=["CPU"]),
    )


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def _fetch(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def test_status_answers_the_reported_state_and_refuses_everything_else() -> None:
    port = free_port()
    endpoint = StatusEndpoint(port, _state)
    await endpoint.start()
    try:
        code, content_type, body = await asyncio.to_thread(_fetch, port, "/status?x=1")
        assert code == 200 and content_type.startswith("application/json")
        assert json.loads(body) == json.loads(_state().model_dump_json())
        for path, method, refused in (("/", "GET", 404), ("/status/x", "GET", 404), ("/status", "POST", 405)):
            assert (await asyncio.to_thread(_fetch, port, path, method))[0] == refused
        head = await _raw(port, b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert (await _raw(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        # a head larger than the bound gets the connection closed, and a client that never
        # finishes its head does not keep another from being served
        assert await _raw(port, b"GET /status HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n") == b""
        _, half_open = await asyncio.open_connection("127.0.0.1", port)
        half_open.write(b"GET /status HTTP/1.1\r\n")
        assert (await asyncio.to_thread(_fetch, port, "/status"))[0] == 200
        half_open.close()
    finally:
        await endpoint.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_taken_port_is_a_configuration_error() -> None:
    first = StatusEndpoint(free_port(), _state)
    await first.start()
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            await StatusEndpoint(first.port, _state).start()
    finally:
        await first.stop()


async def test_port_zero_serves_nothing() -> None:
    endpoint = StatusEndpoint(0, _state)
    await endpoint.start()
    await endpoint.stop()
