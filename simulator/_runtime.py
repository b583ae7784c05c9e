"""A module runtime that runs nothing: the agent's decisions run unchanged, modules only "run".

It takes the place of the executor (registry pulls, the artifact store, child processes) behind
`edge_agent.ModuleRuntime`, so a simulated device costs a few objects, not a process per module.
What it reports is what the real runtime would report in the same situation (downloading,
starting, running with the desired digest; failed with a reason; backoff and a restart count
after a crash; unhealthy), because those reports are what the status book, the rollout watcher
and `modelfleet status` judge.

Behaviour is set per device, at any time: a start delay (the download and start-up a real device
takes), a module that fails its next start or every start, a running module that crashes, one
that turns unhealthy.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from edge_agent import InstanceRecord
from modules import ModelfleetError
from modules.device_state import ModuleState
from modules.service_keys import ServiceKeys

# Mirrors of the listener types the agent binds (`edge_agent._module_runtime`), which are not
# part of its public surface.
StateListener = Callable[[str, ModuleState], None]
KeysLookup = Callable[[str | None], ServiceKeys | None]
ProgressListener = Callable[[str, str, int, int], None]


class _Desired(Protocol):
    """What the simulator reads of the agent's desired module (`Start.desired`, `Replace.desired`)."""

    name: str
    deployment: str | None
    repository: str
    digest: str
    port: int
    restart_policy: str


class SimulatedStartError(ModelfleetError):
    """A simulated module did not start (the stand-in for `init()` raising or readiness failing)."""


@dataclass
class ModuleFaults:
    """What a device's modules will do; changed by the fleet's fault methods."""

    fail_next: dict[str, str] = field(default_factory=dict)  # module -> reason, one start only
    fail_always: dict[str, str] = field(default_factory=dict)  # module -> reason, until healed
    fail_digests: dict[str, str] = field(default_factory=dict)  # digest -> reason, any module


@dataclass
class _Running:
    record: InstanceRecord
    state: ModuleState


class _DeadPort:
    """One loopback port bound and never listened on: a connection to it is refused at once.

    Simulated instances "listen" there, so whatever probes a module port (the heartbeat's
    metrics scrape) fails fast instead of reaching some real service on a made-up port."""

    _sock: socket.socket | None = None

    @classmethod
    def port(cls) -> int:
        if cls._sock is None:
            cls._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            cls._sock.bind(("127.0.0.1", 0))
        return int(cls._sock.getsockname()[1])


def _now() -> datetime:
    return datetime.now(UTC)


class SimulatedRuntime:
    """`edge_agent.ModuleRuntime` for one simulated device."""

    def __init__(
        self,
        *,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        start_delay_s: float = 0.0,
        restart_delay_s: float = 0.5,
    ) -> None:
        self.providers = list(providers)
        self.start_delay_s = start_delay_s
        self.restart_delay_s = restart_delay_s
        self.faults = ModuleFaults()
        self.starts = 0  # start and replace commands carried out, failed ones included
        self._running: dict[str, _Running] = {}
        self._serial = itertools.count(1)
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        self._on_state: StateListener = lambda _name, _state: None
        self._on_progress: ProgressListener | None = None

    # -- faults (called by the fleet) ---------------------------------------------------------

    def fail_next_start(self, module: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        self.faults.fail_next[module] = reason

    def fail_every_start(self, module: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        self.faults.fail_always[module] = reason

    def fail_digest(self, digest: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        """Every start of this version fails, whatever the module's name: a bad release."""
        self.faults.fail_digests[digest] = reason

    def heal(self, module: str | None = None) -> None:
        """Forget start faults (of one module, or all) and make running modules healthy again."""
        if module is None:
            self.faults = ModuleFaults()
        else:
            self.faults.fail_next.pop(module, None)
            self.faults.fail_always.pop(module, None)
        for name, running in self._running.items():
            if (module is None or name == module) and running.state.health == "unhealthy":
                self._update(name, status="running", health="healthy")

    def crash(self, module: str, exit_code: int = 1) -> None:
        """The running instance exits; it is started again after `restart_delay_s` unless its
        restart policy is `never` (then it stays failed)."""
        running = self._require(module)
        policy = getattr(running.record.desired, "restart_policy", "always")
        restarts = policy != "never" and not (policy == "on-failure" and exit_code == 0)
        exited = _now()
        if not restarts:
            self._update(module, status="failed", exit_code=exit_code, exited_at=exited, health="unknown")
            return
        self._update(
            module,
            status="backoff",
            exit_code=exit_code,
            exited_at=exited,
            health="unknown",
            next_restart_at=exited + timedelta(seconds=self.restart_delay_s),
        )
        loop = asyncio.get_running_loop()
        self._restarts[module] = loop.call_later(self.restart_delay_s, self._restarted, module)

    def make_unhealthy(self, module: str) -> None:
        """The instance keeps running but fails its health probe (until `heal`)."""
        self._require(module)
        self._update(module, status="unhealthy", health="unhealthy")

    def _require(self, module: str) -> _Running:
        running = self._running.get(module)
        if running is None:
            raise ModelfleetError(f"module {module!r} does not run on this device")
        return running

    def _restarted(self, module: str) -> None:
        self._restarts.pop(module, None)
        running = self._running.get(module)
        if running is not None:
            self._update(
                module,
                status="running",
                health="healthy",
                restart_count=running.state.restart_count + 1,
                started_at=_now(),
                next_restart_at=None,
            )

    def _update(self, module: str, **changes: Any) -> None:
        running = self._running[module]
        running.state = running.state.model_copy(update=changes)
        self._on_state(module, running.state)

    # -- edge_agent.ModuleRuntime -------------------------------------------------------------

    def bind(
        self,
        on_state: StateListener,
        keys_for: KeysLookup,
        on_progress: ProgressListener | None = None,
    ) -> None:
        self._on_state = on_state
        self._on_progress = on_progress

    async def start(self, command: Any) -> InstanceRecord:
        return await self._bring_up(command.desired, replacing=False)

    async def replace(self, command: Any) -> InstanceRecord:
        return await self._bring_up(command.desired, replacing=True)

    async def _bring_up(self, desired: _Desired, *, replacing: bool) -> InstanceRecord:
        """Delay, then fail or run; while a replacement comes up the old state is what serves,
        so only a first start reports its intermediate states."""
        self.starts += 1
        name = desired.name
        if self.start_delay_s > 0:
            if not replacing:
                self._on_state(name, self._state(desired, status="downloading"))
            await asyncio.sleep(self.start_delay_s)
        reason = (
            self.faults.fail_next.pop(name, None)
            or self.faults.fail_always.get(name)
            or self.faults.fail_digests.get(desired.digest)
        )
        if reason is not None:
            raise SimulatedStartError(f"module {name} did not start: {reason}")
        self._cancel_restart(name)
        record = InstanceRecord(
            desired=desired,  # type: ignore[arg-type]  # the agent's own DesiredModule
            instance_id=f"{name}-{desired.digest[7:15]}-{next(self._serial)}",
            internal_port=_DeadPort.port(),
        )
        state = self._state(desired, status="running", health="healthy", started_at=_now())
        self._running[name] = _Running(record, state)
        self._on_state(name, state)
        return record

    @staticmethod
    def _state(desired: _Desired, **fields: Any) -> ModuleState:
        return ModuleState(
            name=desired.name,
            deployment=desired.deployment,
            module=desired.repository,
            digest=desired.digest,
            port=desired.port,
            **fields,
        )

    async def remove(self, command: Any) -> None:
        name = command.actual.name
        self._cancel_restart(name)
        self._running.pop(name, None)

    async def readopt(self, record: InstanceRecord) -> InstanceRecord | None:
        """A restarted agent finds its simulated modules still running, as processes outlive it."""
        desired: Any = record.desired
        state = self._state(desired, status="running", health="healthy", started_at=_now())
        self._running[record.module] = _Running(record, state)
        self._on_state(record.module, state)
        return record

    async def reap_strays(self) -> list[int]:
        return []

    async def restart(self, name: str) -> None:
        running = self._require(name)
        self._update(name, status="running", health="healthy", restart_count=running.state.restart_count + 1)

    def logs(self, name: str, tail: int) -> list[str]:
        running = self._require(name)
        lines = [f"{name}: simulated instance {running.record.instance_id} is {running.state.status}"]
        return lines[-tail:] if tail > 0 else []

    def serving(self) -> dict[str, InstanceRecord]:
        return {
            name: running.record
            for name, running in self._running.items()
            if running.state.status not in ("failed", "stopped")
        }

    def running_digests(self) -> Mapping[str, str]:
        """Module -> digest of what runs and is not unhealthy (what a test compares)."""
        return {
            name: running.record.digest
            for name, running in self._running.items()
            if running.state.status == "running" and running.state.health != "unhealthy"
        }

    async def execution_providers(self) -> list[str]:
        return list(self.providers)

    async def prune(self, keep_digests: set[str]) -> None:
        return None

    async def shutdown(self) -> None:
        """The agent stops its modules when it stops."""
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()
        self._running.clear()

    def _cancel_restart(self, name: str) -> None:
        handle = self._restarts.pop(name, None)
        if handle is not None:
            handle.cancel()
