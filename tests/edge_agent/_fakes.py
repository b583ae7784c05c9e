"""In-memory stand-ins for the agent's outside world: a transport with no broker and a module
runtime with no registry and no processes. The agent's decisions run unchanged against them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

from edge_agent._module_runtime import KeysLookup, StateListener
from edge_agent._planner import Remove, Replace, Start
from edge_agent._state import InstanceRecord
from modules import ModelfleetError
from modules.device_state import ModuleState
from modules.transport import Message, TransportError


class FakeTransport:
    def __init__(self) -> None:
        self.subscriptions: list[str] = []
        self.published: list[tuple[str, bytes, bool]] = []
        self._connected = False
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._on_connect: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.subscriptions.append(topic_filter)

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(callback)

    async def start(self, connect_timeout: float = 10.0) -> None:
        self._connected = True
        for callback in self._on_connect:
            await callback()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        if not self._connected:
            raise TransportError("not connected")
        self.published.append((topic, payload, retain))

    def inject(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self._inbox.put_nowait(Message(topic, payload, retain))

    async def messages(self) -> AsyncIterator[Message]:
        while (message := await self._inbox.get()) is not None:
            yield message

    async def stop(self) -> None:
        self._connected = False
        self._inbox.put_nowait(None)

    def last(self, topic: str) -> bytes | None:
        for published_topic, payload, _ in reversed(self.published):
            if published_topic == topic:
                return payload
        return None


class FakeRuntime:
    """Runs nothing; records each command. `fail[name] = exc` makes commands on `name` raise."""

    def __init__(self) -> None:
        self.commands: list[Start | Replace | Remove] = []
        self.readopted: list[InstanceRecord] = []
        self.fail: dict[str, BaseException] = {}
        self.fail_once = False  # each entry of `fail` fails one command only
        self.records: dict[str, InstanceRecord] = {}
        self.restarted: list[str] = []
        self.pruned: list[set[str]] = []
        # when set, starts and replaces wait for it (to see the agent while work is under way)
        self.gate: asyncio.Event | None = None
        self.on_state: StateListener = lambda _n, _s: None
        self.keys_for: KeysLookup = lambda _d: None
        self._ports = itertools.count(41000)

    def bind(self, on_state: StateListener, keys_for: KeysLookup, on_progress=None) -> None:  # type: ignore[no-untyped-def]
        self.on_state = on_state
        self.keys_for = keys_for

    async def _run(self, command: Start | Replace) -> InstanceRecord:
        self.commands.append(command)
        desired = command.desired
        if self.gate is not None:
            await self.gate.wait()
        if desired.name in self.fail:
            raise self.fail.pop(desired.name) if self.fail_once else self.fail[desired.name]
        record = InstanceRecord(
            desired=desired,
            instance_id=f"{desired.name}-{len(self.commands)}",
            internal_port=next(self._ports),
        )
        self.records[desired.name] = record
        self.on_state(
            desired.name,
            ModuleState(
                name=desired.name,
                deployment=desired.deployment,
                module=desired.repository,
                digest=desired.digest,
                status="running",
                port=desired.port,
            ),
        )
        return record

    async def start(self, command: Start) -> InstanceRecord:
        return await self._run(command)

    async def replace(self, command: Replace) -> InstanceRecord:
        return await self._run(command)

    async def remove(self, command: Remove) -> None:
        self.commands.append(command)
        if command.actual.name in self.fail:
            raise self.fail[command.actual.name]
        self.records.pop(command.actual.name, None)

    async def readopt(self, record: InstanceRecord) -> InstanceRecord | None:
        self.readopted.append(record)
        self.records[record.module] = record
        return record

    async def reap_strays(self) -> list[int]:
        return []

    async def restart(self, name: str) -> None:
        if name not in self.records:
            raise ModelfleetError(f"no module {name}")
        self.restarted.append(name)

    def logs(self, name: str, tail: int) -> list[str]:
        return [f"{name} line {i}" for i in range(tail)]

    def serving(self) -> dict[str, InstanceRecord]:
        return dict(self.records)

    async def execution_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    async def prune(self, keep_digests: set[str]) -> None:
        self.pruned.append(set(keep_digests))

    async def shutdown(self) -> None:
        self.records.clear()
