"""A module runtime that runs nothing: the agent's decisions run unchanged, modules only "run".

It takes the place of the executor (registry pulls, the artifact store, child processes) behind
`edge_agent.ModuleRuntime`, so a simulated device costs a few objects, not a process per module.
What it reports is what the real runtime would report in the same situation (downloading,
starting, running with the desired digest; failed with a reason; backoff and a restart count
after a crash; unhealthy), because those reports are what the status book, the rollout watcher
and `modelfleet status` judge.

Behaviour is set per device, at any time: a start delay (the start-up a real device takes), a
download at the device's bandwidth (progress reported as the real store reports it) that can be
slow, cut or corrupted, a disk that fills, a module that fails its next start or every start, one
that never becomes ready (the start fails when the readiness wait runs out, as the real
supervisor's does), a running module that crashes, one that crashes after N requests (with
restarts backing off as the real supervisor's do), one that turns unhealthy. Download faults
raise the errors the real artifact store raises (`RegistryUnreachableError` for a cut link,
`DigestMismatchError` for bytes that do not hash to their digest), so the agent classifies them
exactly as on a device: failures time can fix, retried with backoff; a cut download resumes where
it stopped.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from edge_agent import InstanceRecord
from modules import DigestMismatchError, ModelfleetError, RegistryUnreachableError
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


class SimulatedDiskFullError(ModelfleetError):
    """The device's disk has no room for the download: as on a device, freeing space fixes it."""

    transient = True


DEFAULT_MODULE_BYTES = 20 * 2**20
"""What a module "weighs" when nothing says otherwise: a small model and its code."""
MAX_BACKOFF_S = 30.0
"""The longest wait between restarts of a module that keeps crashing."""
PROGRESS_STEP_S = 0.5
"""How often a simulated download advances (and may report progress)."""


@dataclass
class DownloadFaults:
    """What the device's downloads will do. `once`: the fault applies to the next download only."""

    slow_factor: float = 1.0  # bandwidth multiplier (0.1: ten times slower)
    cut_at: float | None = None  # fraction of the bytes after which the link drops
    cut_once: bool = True
    corrupt: bool = False
    corrupt_once: bool = True


@dataclass
class ModuleFaults:
    """What a device's modules will do; changed by the fleet's fault methods."""

    fail_next: dict[str, str] = field(default_factory=dict)  # module -> reason, one start only
    fail_always: dict[str, str] = field(default_factory=dict)  # module -> reason, until healed
    fail_digests: dict[str, str] = field(default_factory=dict)  # digest -> reason, any module
    never_ready: set[str] = field(default_factory=set)  # modules whose readiness probe never answers
    crash_after: dict[str, int] = field(default_factory=dict)  # module -> requests an instance survives


@dataclass
class _Running:
    record: InstanceRecord
    state: ModuleState
    requests: int = 0  # answered by this instance since it (re)started


class _DeadPort:
    """One loopback port bound and never listened on: a connection to it is refused at once.

    Simulated instances "listen" there, so whatever probes a module port (the heartbeat's
    metrics scrape) fails fast instead of reaching some real service on a made-up port."""

    _sock: socket.socket | None = None
    _port = 0  # asked of the socket once: every start of every device reads it

    @classmethod
    def port(cls) -> int:
        if cls._sock is None:
            cls._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            cls._sock.bind(("127.0.0.1", 0))
            cls._port = int(cls._sock.getsockname()[1])
        return cls._port


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
        bandwidth_bps: float = 0.0,
        disk_free_bytes: int | None = None,
        module_bytes: int = DEFAULT_MODULE_BYTES,
        ready_timeout_s: float = 2.0,
        requests_per_s: float = 0.0,
        never_ready: Iterable[str] = (),
        crash_after: Mapping[str, int] | None = None,
    ) -> None:
        """`bandwidth_bps` 0: downloads take no time (what a benchmark of the agent wants);
        `disk_free_bytes` None: the disk never fills. `ready_timeout_s` stands for the agent's
        `start_timeout_s` (how long a start waits for readiness; short, so a rehearsal does not
        wait two minutes per fault). `requests_per_s`: traffic every running module serves
        (0: only what `serve` sends), which is what makes `crash_after` fire by itself."""
        self.providers = list(providers)
        self.start_delay_s = start_delay_s
        self.restart_delay_s = restart_delay_s
        self.bandwidth_bps = bandwidth_bps
        self.disk_free_bytes = disk_free_bytes
        self.module_bytes = module_bytes
        self.ready_timeout_s = ready_timeout_s
        self.requests_per_s = requests_per_s
        self.faults = ModuleFaults(never_ready=set(never_ready), crash_after=dict(crash_after or {}))
        self.download_faults = DownloadFaults()
        self.downloads = 0  # downloads begun, failed ones included
        self._stored: set[str] = set()  # digests in the (simulated) artifact store
        self._partial: dict[str, int] = {}  # digest -> bytes kept from a cut download
        self.starts = 0  # start and replace commands carried out, failed ones included
        self._running: dict[str, _Running] = {}
        self._serial = itertools.count(1)
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        self._traffic: dict[str, asyncio.TimerHandle] = {}
        self.requests_refused = 0  # requests sent while the module was not running
        self._on_state: StateListener = lambda _name, _state: None
        self._on_progress: ProgressListener | None = None
        # the device's time, for the times modules report (started, exited, next restart)
        self.clock: Callable[[], datetime] = _now

    # -- faults (called by the fleet) ---------------------------------------------------------

    def fail_next_start(self, module: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        self.faults.fail_next[module] = reason

    def fail_every_start(self, module: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        self.faults.fail_always[module] = reason

    def fail_digest(self, digest: str, reason: str = "init() raised RuntimeError (simulated)") -> None:
        """Every start of this version fails, whatever the module's name: a bad release."""
        self.faults.fail_digests[digest] = reason

    def never_ready(self, module: str) -> None:
        """From now on the module's starts wait `ready_timeout_s` for a readiness that never
        comes, then fail with the real supervisor's reason; what served before keeps serving."""
        self.faults.never_ready.add(module)

    def crash_after(self, module: str, requests: int) -> None:
        """Each instance of the module exits (code 1) on its `requests`-th request: a leak or a
        bad input it cannot survive. Restarts follow the restart policy with backoff."""
        if requests < 1:
            raise ModelfleetError("a module crashes after 1 or more requests")
        self.faults.crash_after[module] = requests

    def serve(self, module: str, count: int = 1) -> int:
        """`count` requests to the module (the simulated `POST /score`); returns how many were
        answered. A module that is not running (starting, in backoff, failed) answers none, as
        its port refuses the connection; the request it crashes on gets no answer, nor do the
        ones after it."""
        answered = 0
        for _ in range(count):
            running = self._running.get(module)
            if running is None or running.state.status != "running":
                self.requests_refused += count - answered
                break
            running.requests += 1
            limit = self.faults.crash_after.get(module)
            if limit is not None and running.requests >= limit:
                self.crash(module)  # on this request: it gets no answer
                self.requests_refused += count - answered - 1
                break
            answered += 1
        return answered

    def slow_downloads(self, factor: float) -> None:
        """Downloads run at `factor` times the bandwidth (1.0: back to normal)."""
        if factor <= 0:
            raise ModelfleetError("a slow-down factor is above 0")
        self.download_faults.slow_factor = factor

    def cut_downloads(self, at_fraction: float = 0.5, *, every: bool = False) -> None:
        """The link drops after `at_fraction` of the bytes, on the next download (or every one)."""
        if not 0 <= at_fraction < 1:
            raise ModelfleetError("a download is cut after 0 to less than 1 of its bytes")
        self.download_faults.cut_at = at_fraction
        self.download_faults.cut_once = not every

    def corrupt_downloads(self, *, every: bool = False) -> None:
        """The next download (or every one) arrives with bytes that do not hash to its digest."""
        self.download_faults.corrupt = True
        self.download_faults.corrupt_once = not every

    def fill_disk(self) -> None:
        self.disk_free_bytes = 0

    def free_disk(self, free_bytes: int | None = None) -> None:
        """Room again (None: the disk never fills)."""
        self.disk_free_bytes = free_bytes

    def heal(self, module: str | None = None) -> None:
        """Forget start faults (of one module, or all; download faults too when all) and make
        running modules healthy again."""
        if module is None:
            self.faults = ModuleFaults()
            self.download_faults = DownloadFaults()
        else:
            self.faults.fail_next.pop(module, None)
            self.faults.fail_always.pop(module, None)
            self.faults.never_ready.discard(module)
            self.faults.crash_after.pop(module, None)
        for name, running in self._running.items():
            if (module is None or name == module) and running.state.health == "unhealthy":
                self._update(name, status="running", health="healthy")

    def crash(self, module: str, exit_code: int = 1) -> None:
        """The running instance exits; it is started again after a backoff unless its restart
        policy is `never` (then it stays failed). The backoff is `restart_delay_s` doubled for
        each restart so far (at most `MAX_BACKOFF_S`), as the supervisor's exponential one."""
        running = self._require(module)
        self._stop_traffic(module)
        policy = getattr(running.record.desired, "restart_policy", "always")
        restarts = policy != "never" and not (policy == "on-failure" and exit_code == 0)
        exited = self.clock()
        delay = min(MAX_BACKOFF_S, self.restart_delay_s * 2 ** min(running.state.restart_count, 16))
        if not restarts:
            self._update(module, status="failed", exit_code=exit_code, exited_at=exited, health="unknown")
            return
        self._update(
            module,
            status="backoff",
            exit_code=exit_code,
            exited_at=exited,
            health="unknown",
            next_restart_at=exited + timedelta(seconds=delay),
        )
        loop = asyncio.get_running_loop()
        self._restarts[module] = loop.call_later(delay, self._restarted, module)

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
            running.requests = 0
            self._update(
                module,
                status="running",
                health="healthy",
                restart_count=running.state.restart_count + 1,
                started_at=self.clock(),
                next_restart_at=None,
            )
            self._start_traffic(module)

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
        if desired.digest not in self._stored:
            await self._download(desired, replacing=replacing)
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
        if name in self.faults.never_ready:
            await self._wait_for_readiness(desired, replacing=replacing)
        self._cancel_restart(name)
        record = InstanceRecord(
            desired=desired,  # type: ignore[arg-type]  # the agent's own DesiredModule
            instance_id=f"{name}-{desired.digest[7:15]}-{next(self._serial)}",
            internal_port=_DeadPort.port(),
        )
        state = self._state(desired, status="running", health="healthy", started_at=self.clock())
        self._running[name] = _Running(record, state)
        self._on_state(name, state)
        self._start_traffic(name)
        return record

    async def _wait_for_readiness(self, desired: _Desired, *, replacing: bool) -> None:
        """The process "runs" but its readiness probe never answers: after `ready_timeout_s` the
        start fails with the supervisor's own words, and the instance is gone."""
        if not replacing:
            self._on_state(desired.name, self._state(desired, status="starting"))
        await asyncio.sleep(self.ready_timeout_s)
        instance = f"{desired.name}-{desired.digest[7:15]}-{next(self._serial)}"
        raise SimulatedStartError(
            f"module {desired.name} did not start: {instance} not ready after {self.ready_timeout_s:g}s "
            "(GET /v2/health/ready never answered 200; simulated)"
        )

    def _start_traffic(self, module: str) -> None:
        """Requests at `requests_per_s`, one timer per running module (no task per module)."""
        self._stop_traffic(module)
        if self.requests_per_s <= 0:
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self._traffic.pop(module, None)
            running = self._running.get(module)
            if running is None or running.state.status != "running":
                return
            self.serve(module)
            again = module not in self._traffic and self._running.get(module) is running
            if again and running.state.status == "running":
                self._traffic[module] = loop.call_later(1 / self.requests_per_s, tick)

        self._traffic[module] = loop.call_later(1 / self.requests_per_s, tick)

    def _stop_traffic(self, module: str) -> None:
        handle = self._traffic.pop(module, None)
        if handle is not None:
            handle.cancel()

    async def _download(self, desired: _Desired, *, replacing: bool) -> None:
        """The artifact arrives at the device's bandwidth, resumes after a cut, and is checked
        (a corrupted one is thrown away, as the store does); progress goes where the real
        store's goes."""
        name, digest, total = desired.name, desired.digest, self.module_bytes
        faults = self.download_faults
        done = self._partial.get(digest, 0)
        if self.disk_free_bytes is not None and self.disk_free_bytes < total - done:
            raise SimulatedDiskFullError(
                f"not enough disk space for {name}: {total - done} bytes needed, {self.disk_free_bytes} free"
            )
        self.downloads += 1
        if not replacing:
            self._on_state(name, self._state(desired, status="downloading"))
        cut_at = None if faults.cut_at is None else int(total * faults.cut_at)
        if cut_at is not None and faults.cut_once:
            faults.cut_at = None
        progress = self._on_progress or (lambda *_args: None)
        while done < total:
            bandwidth = self.bandwidth_bps * faults.slow_factor
            step = (
                total - done if bandwidth <= 0 else min(total - done, int(bandwidth * PROGRESS_STEP_S) or 1)
            )
            if cut_at is not None and done + step > cut_at:
                if cut_at > done and bandwidth > 0:
                    await asyncio.sleep((cut_at - done) / bandwidth)
                done = max(done, cut_at)
                self._partial[digest] = done
                progress(name, digest, done, total)
                raise RegistryUnreachableError(
                    f"download of {name} cut after {done} of {total} bytes (simulated link drop)"
                )
            if bandwidth > 0:
                await asyncio.sleep(step / bandwidth)
            done += step
            if done < total:
                progress(name, digest, done, total)
        self._partial.pop(digest, None)
        if faults.corrupt:
            if faults.corrupt_once:
                faults.corrupt = False
            progress(name, digest, total, total)
            raise DigestMismatchError(
                f"{name}: the downloaded bytes do not hash to {digest} (simulated corruption); discarded"
            )
        progress(name, digest, total, total)
        self._stored.add(digest)
        if self.disk_free_bytes is not None:
            self.disk_free_bytes -= total

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
        self._stop_traffic(name)
        self._running.pop(name, None)

    async def readopt(self, record: InstanceRecord) -> InstanceRecord | None:
        """A restarted agent finds its simulated modules still running, as processes outlive it."""
        desired: Any = record.desired
        state = self._state(desired, status="running", health="healthy", started_at=self.clock())
        self._running[record.module] = _Running(record, state)
        self._on_state(record.module, state)
        self._start_traffic(record.module)
        return record

    async def reap_strays(self) -> list[int]:
        return []

    async def restart(self, name: str) -> None:
        running = self._require(name)
        running.requests = 0
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
        for handle in [*self._restarts.values(), *self._traffic.values()]:
            handle.cancel()
        self._restarts.clear()
        self._traffic.clear()
        self._running.clear()

    def _cancel_restart(self, name: str) -> None:
        handle = self._restarts.pop(name, None)
        if handle is not None:
            handle.cancel()
