"""A private network namespace with a control plane in it, and an agent process beside it.

The namespace is held by a `sleep` started under `unshare -n` (its loopback brought up first);
every process of the scenario joins it with `nsenter`, so IoT Hub's fixed port 8883 never meets
anything else on the machine, and nothing of it is reachable from outside but the Unix sockets
the test drives it through. Needs root (or user namespaces) and `unshare`/`nsenter` from
util-linux; their absence fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modules.pki import init_ca, issue_client, issue_server
from tests._services import _binary
from tests.azureiot._relay import tcp_to_unix, unix_to_tcp

ROOT = Path(__file__).resolve().parents[2]
IOTHUB_PORT = 8883  # fixed, as IoT Hub's; free because the namespace is private
MQTT_PORT = 1883
REGISTRY_PORT = 5000
GUARD_S = 180.0  # hang guard for waits, not a performance bound


@dataclass
class Namespace:
    holder: subprocess.Popen[bytes]

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *argv]


@contextlib.contextmanager
def private_network() -> Iterator[Namespace]:
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (util-linux / iproute2)", pytrace=False)
    holder = subprocess.Popen(
        ["unshare", "-n", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != b"up":
        holder.kill()
        _, err = holder.communicate()
        pytest.fail(f"cannot make a private network namespace: {err.decode()[-1000:]}", pytrace=False)
    try:
        yield Namespace(holder)
    finally:
        holder.kill()
        holder.wait()


def tls_files(root: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for `localhost` (what IoT Hub's SDK will dial)."""
    init_ca(root)
    issued = issue_server(root, ["localhost"])
    return Path(issued.ca_file), Path(issued.cert_file), Path(issued.key_file)


class Broker:
    """Mosquitto inside the namespace; `restart()` stops it (no persistence) and starts a new one."""

    def __init__(
        self, ns: Namespace, root: Path, port: int, tls: tuple[Path, Path, Path] | None, *, x509: bool = False
    ):
        self.ns, self.root, self.port = ns, root, port
        root.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "user root"]
        if tls is not None:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            if x509:  # as IoT Hub with X.509 devices: the client certificate is the identity
                lines += ["require_certificate true", "use_identity_as_username true"]
        lines += ["max_queued_messages 100000", "log_dest stderr", "log_type error", "log_type warning"]
        self.config = root / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = _binary("mosquitto", "mosquitto")
        with (self.root / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.ns.argv([binary, "-c", str(self.config)]), stdout=log, stderr=log
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class HubSide:
    """The stand-in (`standin_hub.py`) in the namespace, driven over its Unix socket."""

    def __init__(
        self,
        ns: Namespace,
        root: Path,
        mode: str,
        device: str,
        fleet: str,
        registry_port: int,
        *,
        x509: bool = False,
    ):
        """`mode`: iothub or mqtt; `x509`: the broker requires client certificates (iothub).
        In iothub mode the hub's service REST API (TLS, SAS checked) is on 127.0.0.1:`rest_port`
        outside the namespace, for the publisher, with `service_connection_string`."""
        self.root = root
        self.rest_socket = root / "rest.sock"
        self.rest_port = 0
        self.sas_key = base64.b64encode(os.urandom(32)).decode()
        self.control = root / "control.sock"
        self.registry_socket = root / "registry.sock"
        self.registry_port = registry_port
        self.mode = mode
        self.tls = tls_files(root / "pki") if mode == "iothub" else None
        self.x509 = x509
        port = IOTHUB_PORT if mode == "iothub" else MQTT_PORT
        self.broker = Broker(ns, root / "broker", port, self.tls, x509=x509)
        self.ns, self.device, self.fleet = ns, device, fleet
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self._relay: asyncio.Server | None = None
        self._rest_relay: asyncio.Server | None = None

    def device_certificate(self) -> tuple[Path, Path]:
        """An X.509 certificate and key for the device, from the test CA (CN = the device id)."""
        issued = issue_client(self.root / "pki", device=self.device)
        assert issued.key_file is not None
        return Path(issued.cert_file), Path(issued.key_file)

    @property
    def service_connection_string(self) -> str:
        return f"HostName=localhost;SharedAccessKeyName=service;SharedAccessKey={self.sas_key}"

    @property
    def ca_file(self) -> Path:
        assert self.tls is not None
        return self.tls[0]

    async def __aenter__(self) -> HubSide:
        self._relay = await unix_to_tcp(str(self.registry_socket), self.registry_port)
        if self.mode == "iothub":
            self._rest_relay = await tcp_to_unix(0, str(self.rest_socket))
            self.rest_port = self._rest_relay.sockets[0].getsockname()[1]
        self.broker.start()
        argv = [
            sys.executable, "-m", "tests.azureiot.standin_hub", "--mode", self.mode,
            "--broker-port", str(self.broker.port), "--device", self.device, "--fleet", self.fleet,
            "--control", str(self.control), "--registry-port", str(REGISTRY_PORT),
            "--registry-socket", str(self.registry_socket),
        ]  # fmt: skip
        if self.tls is not None:
            ca, cert, key = self.tls
            argv += [
                "--ca",
                str(ca),
                "--rest-socket",
                str(self.rest_socket),
                "--rest-tls",
                str(cert),
                str(key),
            ]
            argv += ["--rest-sas-key", self.sas_key]
        if self.x509:
            own = issue_client(self.root / "pki", publisher="standin")
            argv += ["--cert", str(own.cert_file), "--key", str(own.key_file)]
        with (self.root / "standin.log").open("ab") as log:
            self.proc = subprocess.Popen(self.ns.argv(argv), stdout=log, stderr=log, cwd=ROOT)
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.control)))
        await self.wait_ready()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self.broker.stop()
        for relay in (self._relay, self._rest_relay):
            if relay is not None:
                relay.close()

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.http().get("http://hub/ready") as resp:
                    return resp.status == 200
            return False

        await poll(ready, "the stand-in hub reaching its broker", self.logs)

    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def put_document(
        self, kind: str, name: str | None, document: bytes, *, silent: bool = False
    ) -> None:
        """`silent` (iothub): into the twin without the desired-properties push, as a patch lost."""
        body = {"kind": kind, "name": name, "document": document.decode(), "silent": silent}
        async with self.http().put("http://hub/fleet/documents", json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def reported(self) -> dict[str, Any] | None:
        async with self.http().get("http://hub/fleet/reported") as resp:
            return await resp.json()

    async def invoke(
        self, method: str, signed_request: dict[str, Any], timeout: float = 90
    ) -> dict[str, Any]:
        url = f"http://hub/fleet/methods/{method}?timeout={timeout}"
        async with self.http().post(url, json=signed_request) as resp:
            return await resp.json()

    async def telemetry(self) -> list[Any]:
        async with self.http().get("http://hub/fleet/telemetry") as resp:
            return await resp.json()

    async def twin(self) -> dict[str, Any]:
        async with self.http().get(f"http://hub/twins/{self.device}") as resp:
            return await resp.json()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in (self.root / "standin.log", self.root / "broker" / "mosquitto.log")
            if p.exists()
        )


@contextlib.asynccontextmanager
async def agent_process(
    ns: Namespace, python: Path, root: Path, hub: str, settings: dict[str, Any], env: dict[str, str]
) -> AsyncIterator[Callable[[], str]]:
    """`modelfleet agent run` with the given interpreter, inside the namespace; yields its log."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "agent.toml"
    config.write_text("[agent]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    log_path = root / "agent.log"
    argv = [str(python), "-m", "modules.cli", "agent", "run", "--config", str(config), "--hub", hub]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ns.argv(argv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env}
        )

    def read_log() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        yield read_log
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def poll(check: Callable[[], Any], what: str, logs: Callable[[], str] | None = None) -> Any:
    """Until `check()` (sync or async) gives something truthy; fails with the logs after the guard."""
    deadline = time.monotonic() + GUARD_S
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}\n{logs() if logs else ''}", pytrace=False)
        await asyncio.sleep(0.2)
