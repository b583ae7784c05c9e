"""One module's supervisor: keeps an instance running per restart policy and reports its state.

It owns one task (the watch loop) that it starts and cancels itself, as every long-running task in
the agent has an owner. State changes are pushed to `on_state` as whole ModuleState snapshots so
the reporter never sees a half-updated record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp

from modules.device_state import ModuleState
from modules.spec import HealthProbe, Resources
from modules.tasks import cancel_and_wait

from . import _limits as limits
from ._backoff import RESTARTS_UNHEALTHY, Backoff, RestartPolicy, should_restart
from ._config import InstanceConfig
from ._errors import ModuleStartError
from ._process import Instance, ProcessRuntime

if TYPE_CHECKING:
    from ._docker import ContainerInstance, ContainerLauncher

    # A process (the process runtime) or a container (the docker runtime): the same supervision.
    AnyInstance = Instance | ContainerInstance

log = logging.getLogger("modelfleet.agent.supervisor")


def _now() -> datetime:
    return datetime.now(UTC)


class Supervisor:
    """Starts, watches, probes and restarts one module's instance.

    Restarts reuse the same InstanceConfig (same port, same instance id), so the front proxy's
    target stays valid across them.
    """

    def __init__(
        self,
        runtime: ProcessRuntime | ContainerLauncher,
        config: InstanceConfig,
        *,
        policy: RestartPolicy,
        backoff: Backoff,
        on_state: Callable[[ModuleState], None],
        health_probe: HealthProbe | None = None,
        smoke_test: bool = False,
        ready_timeout: float = 120.0,
        python: str | None = None,
        resources: Resources | None = None,
        probe_health: bool = True,
    ) -> None:
        """`probe_health` False: judged by its exit alone (a container image that has no health
        route the agent knows)."""
        self.runtime = runtime
        self.probe_health = probe_health
        self.config = config
        self.policy = policy
        self.backoff = backoff
        self.health_probe = health_probe if health_probe is not None else config.spec.health_probe
        self.smoke_test = smoke_test
        self.ready_timeout = ready_timeout
        self.python = python
        self.resources = resources
        self._on_state = on_state
        self.instance: AnyInstance | None = None
        self.state = ModuleState(
            name=config.module,
            module=f"modules/{config.spec.name}",
            version=config.spec.version,
            port=config.port,
            # What will enforce them; replaced by what did once an instance runs.
            limits=runtime.describe_limits(resources)
            if isinstance(runtime, ProcessRuntime)
            else limits.describe(resources),
        )
        self._watcher: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed runs, for the backoff
        self._healthy_since: float | None = None

    # -- state ------------------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        self.state = self.state.model_copy(update=changes)
        try:
            self._on_state(self.state)
        except Exception:  # a reporting bug must not take supervision down with it
            log.exception("on_state callback failed for %s", self.config.module)

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start an instance and wait until it is ready; raises ModuleStartError if it is not."""
        if self._watcher is not None:
            raise RuntimeError(f"{self.config.module} is already supervised")
        try:
            instance = await self._launch()
        except ModuleStartError:
            self._update(status="failed")
            raise
        self._watch(instance)

    def adopt(self, instance: AnyInstance) -> None:
        """Supervise an instance that an earlier agent started and this one re-adopted."""
        if self._watcher is not None:
            raise RuntimeError(f"{self.config.module} is already supervised")
        self._applied_limits(instance)
        self._running(instance)
        self._watch(instance)

    async def stop(self) -> None:
        """Stop supervising and stop the instance; the state ends as stopped."""
        watcher, self._watcher = self._watcher, None
        await cancel_and_wait(watcher)
        instance, self.instance = self.instance, None
        code = self.state.exit_code
        if instance is not None:
            code = await self.runtime.stop(instance)
        self._update(
            status="stopped",
            pid=None,
            exit_code=code,
            exited_at=self.state.exited_at if instance is None else _now(),
            next_restart_at=None,
            health="unknown",
        )

    # -- internals --------------------------------------------------------------------------

    async def _launch(self, **changes: Any) -> AnyInstance:
        """One start attempt: spawn, ready, smoke test. A failed attempt leaves nothing running."""
        self._update(status="starting", health="unknown", next_restart_at=None, **changes)
        instance = await self.runtime.start(self.config, python=self.python, resources=self.resources)
        self.instance = instance
        self._applied_limits(instance)
        try:
            await self.runtime.wait_ready(instance, self.ready_timeout)  # type: ignore[arg-type]
            if self.smoke_test:
                await self.runtime.smoke_test(instance)  # type: ignore[arg-type]
        except BaseException as exc:
            code = await self.runtime.stop(instance)  # type: ignore[arg-type]
            self.instance = None
            if isinstance(exc, ModuleStartError):
                # The caller decides what this means: failed (first start) or more backoff.
                self._update(pid=None, exit_code=code, exited_at=_now(), last_error=exc.reason)
            raise
        self._running(instance)
        return instance

    def _applied_limits(self, instance: AnyInstance) -> None:
        """Report what enforces this instance's limits: its cgroup, or the rlimit fallback."""
        if isinstance(instance, Instance):
            applied = limits.describe(self.resources, instance.cgroup)
            if applied != self.state.limits:
                self._update(limits=applied)

    def _running(self, instance: AnyInstance) -> None:
        self.instance = instance
        self._healthy_since = time.monotonic()
        self._update(
            status="running",
            health="healthy",
            pid=instance.pid,
            started_at=instance.started_at,
            exit_code=None,
            next_restart_at=None,
        )

    def _watch(self, instance: AnyInstance) -> None:
        self._watcher = asyncio.get_running_loop().create_task(
            self._supervise(instance), name=f"supervise-{self.config.module}"
        )

    async def _supervise(self, instance: AnyInstance) -> None:
        """Wait for exit (or unhealthiness), then restart per policy after the backoff delay."""
        while True:
            code, unhealthy = await self._run_until_exit(instance)
            exited = _now()
            self.instance = None
            ran_healthy = (
                self._healthy_since is not None
                and time.monotonic() - self._healthy_since >= self.backoff.reset_after_s
            )
            if ran_healthy:
                self._failures = 0
            if not should_restart(self.policy, code, unhealthy=unhealthy):
                status = "stopped" if code == 0 and not unhealthy else "failed"
                self._update(status=status, pid=None, exit_code=code, exited_at=exited, health="unknown")
                return
            instance = await self._restart(code, exited)

    async def _restart(self, code: int, exited: datetime) -> AnyInstance:
        """Back off, then start again until a start succeeds (each failed start backs off more)."""
        while True:
            self._failures += 1
            delay = self.backoff.delay(self._failures)
            self._update(
                status="backoff",
                pid=None,
                exit_code=code,
                exited_at=exited,
                health="unknown",
                next_restart_at=exited + timedelta(seconds=delay),
            )
            log.info("%s exited (%d): restart in %.1fs", self.config.module, code, delay)
            await asyncio.sleep(max(0.0, (exited - _now()).total_seconds() + delay))
            try:
                return await self._launch(restart_count=self.state.restart_count + 1)
            except ModuleStartError as exc:
                log.warning("%s did not restart: %s", self.config.module, exc.reason.splitlines()[0])
                code = self.state.exit_code if self.state.exit_code is not None else 1
                exited = self.state.exited_at or _now()

    async def _run_until_exit(self, instance: AnyInstance) -> tuple[int, bool]:
        """The exit code, and whether we ended the instance for failing its health probe."""
        loop = asyncio.get_running_loop()
        prober = loop.create_task(self._probe(instance) if self.probe_health else asyncio.Event().wait())
        exited = asyncio.ensure_future(instance.wait())
        watched = {prober, exited}
        memory = None
        cgroup = instance.cgroup if isinstance(instance, Instance) else None
        if (
            self.resources is not None
            and self.resources.memory_mb is not None
            and not limits.kernel_memory(cgroup)
        ):
            # The rlimit enforcement; in a cgroup the kernel holds the module to its memory.
            memory = loop.create_task(self._watch_memory(instance, self.resources.memory_mb))
            watched.add(memory)
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                code = exited.result()
                oom = instance.oom_reason(code) if isinstance(instance, Instance) else None
                if oom is not None:
                    log.warning("%s: %s", self.config.module, oom)
                    self._update(last_error=oom)
                return code, False
            if memory is not None and memory in done:
                # Over its memory: killed at once (it may be taking the device's memory with it).
                self._update(last_error=memory.result())
                return await self.runtime.stop(instance, timeout=0.0), False
            # The probe gave up on the instance: end it, and let the policy decide.
            self._update(last_error=f"health probe {self.health_probe.path} failed repeatedly")
            return await self.runtime.stop(instance), True
        finally:
            await cancel_and_wait(*watched)

    async def _watch_memory(self, instance: AnyInstance, limit_mb: int) -> str:
        """Returns (the reason) once the module's resident memory is above its limit."""
        limit = limit_mb * 1024 * 1024
        while True:
            used = await asyncio.to_thread(limits.resident_bytes, instance.pid)
            if used > limit:
                used_mb = used / 2**20
                log.warning(
                    "%s uses %.0f MiB, above memory_mb %d: killing it", self.config.module, used_mb, limit_mb
                )
                return f"out of memory: {used_mb:.0f} MiB resident, above memory_mb {limit_mb}"
            await asyncio.sleep(limits.WATCH_PERIOD_S)

    async def _probe(self, instance: AnyInstance) -> None:
        """Probe forever; returns only when the policy wants an unhealthy instance replaced."""
        probe = self.health_probe
        headers = {}
        if self.config.primary_key is not None:
            headers["Authorization"] = f"Bearer {self.config.primary_key.get_secret_value()}"
        failures = 0
        await asyncio.sleep(probe.initial_delay_s)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=probe.timeout_s)) as session:
            while True:
                ok = await _check(session, instance.url + probe.path, headers)
                if ok:
                    failures = 0
                    if self.state.health != "healthy" or self.state.status == "unhealthy":
                        self._healthy_since = time.monotonic()
                        self._update(health="healthy", status="running")
                else:
                    failures += 1
                    if failures >= probe.failure_threshold:
                        self._healthy_since = None
                        if self.state.health != "unhealthy":
                            self._update(health="unhealthy", status="unhealthy")
                        if self.policy in RESTARTS_UNHEALTHY:
                            return
                await asyncio.sleep(probe.period_s)


async def _check(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bool:
    try:
        async with session.get(url, headers=headers) as response:
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False
