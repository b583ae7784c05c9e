"""The default module runtime: carries out the planner's commands on real processes or containers,
safely.

A module with an image (an IoT Edge docker module, or a modelfleet module built as an image) runs as
a container (`_docker_modules.py`); every other module as a process from the artifact store. Both
get the same treatment: a new version always starts beside the one serving, on its own internal
port, and must pass readiness and a smoke request before the module's public port (a front proxy)
is switched to it; in-flight requests to the old one drain before it stops. Any failure on the way
leaves the old version serving: that is the rollback.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent._config import AgentConfig
from edge_agent._device_info import execution_providers
from edge_agent._leftovers import twin_dir
from edge_agent._module_runtime import KeysLookup, ProgressListener, StateListener
from edge_agent._planner import ActualModule, DesiredModule, Remove, Replace, Start
from edge_agent._runtime import Backoff, FrontProxy, InstanceConfig, ProcessRuntime, Supervisor
from edge_agent._runtime._config import containers_dir
from edge_agent._state import InstanceRecord
from edge_agent._store import ArtifactStore, StoredModule
from modules import ModelfleetError
from modules.deployment.registry_secrets import DeploymentSecrets
from modules.device_state import ModuleState
from modules.oci import RegistryClient, RegistryCredentials
from modules.scoring.twin import TWIN_DIR_ENV
from modules.spec import HealthProbe, Resources
from modules.tasks import cancel_and_wait

if TYPE_CHECKING:
    from edge_agent._runtime._docker_modules import ContainerModules

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningModule:
    record: InstanceRecord
    supervisor: Supervisor
    proxy: FrontProxy


class ModuleStartFailed(ModelfleetError):
    """A module version could not be brought up; what was serving before still is."""


# Opens a registry session for one pull; `RegistryClient` itself is one.
RegistryFactory = Callable[[], AbstractAsyncContextManager[RegistryClient]]


class Executor:
    """A `ModuleRuntime`: modules from the artifact store, run as supervised processes."""

    def __init__(
        self,
        config: AgentConfig,
        store: ArtifactStore,
        runtime: ProcessRuntime,
        registry: RegistryFactory | None = None,
        containers: ContainerModules | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.registry = registry or self._registry
        # Container modules; the engine is reached on first use only, so a device without Docker
        # runs process modules as before, and the Docker modules are imported on first use too.
        self._containers = containers
        self.on_state: StateListener = lambda _name, _state: None
        self.keys_for: KeysLookup = lambda _deployment: None
        self.on_progress: ProgressListener | None = None
        self.running: dict[str, RunningModule] = {}
        self._serial = itertools.count(1)
        self._emit: dict[int, Callable[[], None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tag_watch: asyncio.Task[None] | None = None
        # module -> a digest its tag pointed at that did not come up: not tried again
        self._bad_digests: dict[str, str] = {}

    @property
    def containers(self) -> ContainerModules:
        if self._containers is None:
            from edge_agent._runtime._docker_modules import ContainerModules

            self._containers = ContainerModules(self.config)
        return self._containers

    def bind(
        self, on_state: StateListener, keys_for: KeysLookup, on_progress: ProgressListener | None = None
    ) -> None:
        self.on_state = on_state
        self.keys_for = keys_for
        self.on_progress = on_progress

    def serving(self) -> dict[str, InstanceRecord]:
        return {name: running.record for name, running in self.running.items()}

    def logs(self, name: str, tail: int) -> list[str]:
        running = self.running.get(name)
        if running is not None and running.record.desired.kind == "docker":
            return self.containers.logs(name, tail)
        if running is None and self.containers.has_logs(name):
            return self.containers.logs(name, tail)
        return self.runtime.logs(name, tail)

    async def execution_providers(self) -> list[str]:
        return await execution_providers()

    async def prune(self, keep_digests: set[str]) -> None:
        # a container module named by tag has no artifact digest (""): nothing of it is in the store
        await self.store.gc_async({d for d in keep_digests if d})
        if self._containers is not None:  # one never used has pulled no image
            await self._containers.prune(
                {r.record.instance_id for r in self.running.values() if r.record.desired.kind == "docker"}
            )

    # -- building blocks ----------------------------------------------------------------------

    def _registry(self) -> RegistryClient:
        c = self.config
        credentials = RegistryCredentials(
            username=c.registry_username,
            password=c.secret("registry_password"),
            token=c.secret("registry_token"),
        )
        return RegistryClient(c.registry, credentials)

    def _backoff(self) -> Backoff:
        return Backoff(base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s)

    async def _fetch(self, desired: DesiredModule) -> StoredModule:
        self._report(desired, status="downloading")
        on_progress = self.on_progress

        def progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(desired.name, desired.digest, done, total)

        async with self.registry() as client:
            return await self.store.ensure_module(
                client, desired.repository, desired.digest, progress=progress
            )

    def _instance_config(
        self, desired: DesiredModule, stored: StoredModule, instance_id: str, port: int
    ) -> InstanceConfig:
        keys = self.keys_for(desired.deployment) if desired.keys_version is not None else None
        if not desired.auth_required and isinstance(keys, DeploymentSecrets) and keys.registry_credentials:
            keys = None  # sealed for the deployment's registry credentials, not for key auth
        if desired.auth_required and keys is None:
            # Fail closed: a module that must check keys never serves without them.
            raise ModuleStartFailed(f"module {desired.name} requires scoring keys, and none are open")
        env = dict(desired.env)
        twin = twin_dir(self.config.data_dir, desired.name)
        if twin is not None:  # outside the fingerprint: a twin change never restarts the module
            env[TWIN_DIR_ENV] = str(twin)
        return InstanceConfig(
            instance_id=instance_id,
            module=desired.name,
            model_dir=stored.model_dir,
            entry_script=stored.entry_script,
            code_dir=stored.code_dir if stored.entry_script is not None else None,
            spec=stored.spec,
            port=port,
            env=env,
            execution_providers=list(desired.execution_providers) if desired.execution_providers else None,
            primary_key=keys.primary if keys else None,
            secondary_key=keys.secondary if keys else None,
        )

    def _supervisor(
        self,
        desired: DesiredModule,
        config: InstanceConfig,
        version: int | None,
        python: str | None,
        *,
        launcher: Any = None,
        probe_health: bool = True,
        digest: str | None = None,
    ) -> Supervisor:
        """`launcher`: a container's (`ContainerModules.launcher`); None for a process."""
        probe = (
            HealthProbe.model_validate(desired.health_probe)
            if desired.health_probe
            else config.spec.health_probe
        )

        holder: list[Supervisor] = []

        def forward(state: ModuleState) -> None:
            current = self.running.get(desired.name)
            if current is not None and holder and current.supervisor is not holder[0]:
                return  # not (or no longer) the instance that serves this module
            state = state.model_copy(
                update={
                    "name": desired.name,
                    "deployment": desired.deployment,
                    "module": desired.repository,
                    "digest": digest or desired.digest,
                    "version": version,
                    "port": self.config.module_port(desired.port),
                }
            )
            self.on_state(desired.name, state)

        supervisor = Supervisor(
            launcher if launcher is not None else self.runtime,
            config,
            policy=desired.restart_policy,  # type: ignore[arg-type]
            backoff=self._backoff(),
            on_state=forward,
            health_probe=probe,
            smoke_test=True,
            ready_timeout=self.config.start_timeout_s,
            python=python,
            resources=None
            if launcher is not None  # a container's limits are its create options, enforced by the engine
            else Resources.model_validate(desired.resources)
            if desired.resources
            else config.spec.resources,
            probe_health=probe_health,
        )
        holder.append(supervisor)
        self._emit[id(supervisor)] = lambda: forward(supervisor.state)
        return supervisor

    def _announce(self, supervisor: Supervisor) -> None:
        """Report the state of the instance that now serves (its earlier updates were held back)."""
        emit = self._emit.get(id(supervisor))
        if emit is not None:
            emit()

    def _report(self, desired: DesiredModule, **fields: object) -> None:
        current = self.running.get(desired.name)
        if (
            current is not None
            and (
                current.record.digest != desired.digest
                or (desired.kind == "docker" and current.record.fingerprint != desired.fingerprint)
            )
            and fields.get("status") != "failed"
        ):
            return  # the old version is still what serves; its supervisor reports it
        values: dict[str, object] = {
            "name": desired.name,
            "deployment": desired.deployment,
            "module": desired.repository,
            "digest": desired.digest,
            "port": self.config.module_port(desired.port),
        }
        values.update(fields)
        self.on_state(desired.name, ModuleState.model_validate(values))

    def _record(
        self, desired: DesiredModule, config: InstanceConfig, pid: int | None, version: int | None
    ) -> InstanceRecord:
        return InstanceRecord(
            desired=desired,
            instance_id=config.instance_id,
            pid=pid,
            internal_port=config.port,
            version=version,
        )

    async def _bring_up(self, desired: DesiredModule) -> tuple[Supervisor, InstanceConfig, int | None]:
        """Pull, start on a fresh internal port, pass readiness and the smoke request."""
        if desired.kind == "docker":
            return await self._bring_up_container(desired)
        stored = await self._fetch(desired)
        instance_id = f"{desired.name}-{desired.digest[7:15]}-{next(self._serial)}"
        config = self._instance_config(desired, stored, instance_id, free_port())
        version = stored.spec.version
        self._report(desired, status="starting", version=version)
        python = await self.runtime.ensure_env(stored.spec.requirements)
        supervisor = self._supervisor(desired, config, version, python)
        await self._start_or_forget(supervisor)
        return supervisor, config, version

    async def _start_or_forget(self, supervisor: Supervisor) -> None:
        """Start; a start that fails (or is cancelled) leaves no process and no listener behind."""
        try:
            await supervisor.start()
        except BaseException:
            await supervisor.stop()
            self._emit.pop(id(supervisor), None)
            raise

    def _keys(self, desired: DesiredModule) -> Any:
        """The scoring keys a container checks: only when it asks for key auth (a deployment's
        sealed document may exist only to carry its registry credentials)."""
        keys = self.keys_for(desired.deployment) if desired.auth_required else None
        if desired.auth_required and keys is None:
            raise ModuleStartFailed(f"module {desired.name} requires scoring keys, and none are open")
        return keys

    async def _bring_up_container(
        self, desired: DesiredModule
    ) -> tuple[Supervisor, InstanceConfig, int | None]:
        """A container beside what serves: refused by the policy or the GPU check before anything
        is pulled; then the image by digest, then readiness and the smoke request."""
        keys = self._keys(desired)
        prepared = await self.containers.prepare(desired, keys, free_port(), None)
        self._report(desired, status="downloading")
        image = await self.containers.ensure_image(desired, self._auth_for(desired))
        container = self.containers.plan(prepared, image)
        self._report(desired, status="starting", digest=image.digest)
        supervisor = self._supervisor(
            desired,
            container.config,
            None,
            None,
            launcher=self.containers.launcher(container),
            probe_health=container.http_checks,
            digest=image.digest,
        )
        supervisor.state = supervisor.state.model_copy(update={"limits": container.limits})
        await self._start_or_forget(supervisor)
        return supervisor, container.config, None

    def _auth_for(self, desired: DesiredModule) -> Callable[[str], dict[str, str] | None]:
        """Credentials for pulling the module's image from a host: the deployment's own
        `registryCredentials` (sealed to this device with its keys) first, then the agent's."""

        def lookup(host: str) -> dict[str, str] | None:
            secrets = self.keys_for(desired.deployment)
            login = secrets.login_for(host) if isinstance(secrets, DeploymentSecrets) else None
            return login.auth_config() if login is not None else self._registry_auth(host)

        return lookup

    def _registry_auth(self, host: str) -> dict[str, str] | None:
        """The agent's own registry settings, for its own registry."""
        own = self.config.registry.split("://", 1)[-1].rstrip("/")
        if host != own or self.config.registry_username is None:
            return None
        password = self.config.secret("registry_password")
        if password is None:
            return None
        return {"username": self.config.registry_username, "password": password, "serveraddress": host}

    # -- commands -----------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        """One change at a time per module: the plan runner's and the tag watcher's."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def start(self, command: Start) -> InstanceRecord:
        async with self._lock(command.name):
            record = await self._start(command)
        self._watch_tags(record.desired)
        return record

    async def replace(self, command: Replace) -> InstanceRecord:
        async with self._lock(command.name):
            record = await self._replace(command)
        self._watch_tags(record.desired)
        return record

    async def remove(self, command: Remove) -> None:
        async with self._lock(command.name):
            await self._remove(command)

    async def _start(self, command: Start) -> InstanceRecord:
        desired = command.desired
        # The public port first: a port that is taken fails the module before anything is pulled
        # or started, and once the instance reports running its port already answers (503 until
        # then, "no instance of this module is running").
        proxy = FrontProxy(self.config.listen_host, self.config.module_port(desired.port))
        try:
            await proxy.start()
        except OSError as exc:
            raise ModuleStartFailed(
                f"cannot listen on port {self.config.module_port(desired.port)}: {exc.strerror}"
            ) from exc
        try:
            supervisor, config, version = await self._bring_up(desired)
        except BaseException:
            await proxy.stop()
            raise
        proxy.switch(config.port)
        record = self._record(desired, config, supervisor.state.pid, version)
        self.running[desired.name] = RunningModule(record, supervisor, proxy)
        return record

    async def _replace(self, command: Replace) -> InstanceRecord:
        desired = command.desired
        old = self.running[desired.name]
        supervisor, config, version = await self._bring_up(desired)
        proxy = old.proxy
        if old.record.public_port != desired.port:
            proxy = FrontProxy(self.config.listen_host, self.config.module_port(desired.port))
            try:
                await proxy.start()
            except OSError as exc:
                await supervisor.stop()
                raise ModuleStartFailed(f"cannot listen on port {desired.port}: {exc.strerror}") from exc
        previous = proxy.switch(config.port)
        record = self._record(desired, config, supervisor.state.pid, version)
        self.running[desired.name] = RunningModule(record, supervisor, proxy)
        self._announce(supervisor)
        if previous is not None:
            try:
                await proxy.drained(previous, timeout=30)
            except TimeoutError:
                log.warning("module %s: requests to the old version did not drain in 30 s", desired.name)
        if proxy is not old.proxy:
            await old.proxy.stop()
        await old.supervisor.stop()
        self._emit.pop(id(old.supervisor), None)
        return record

    async def _remove(self, command: Remove) -> None:
        running = self.running.pop(command.actual.name, None)
        if running is None:
            return
        await running.proxy.stop()
        await running.supervisor.stop()
        self._emit.pop(id(running.supervisor), None)

    async def readopt(self, record: InstanceRecord) -> InstanceRecord | None:
        """After an agent restart: supervise the instance that is still running, or start it again."""
        if record.desired.kind == "docker":
            return await self._readopt_container(record)
        stored = self.store.stored_module(record.digest)
        if stored is None:
            return None
        desired = record.desired
        try:
            config = self._instance_config(desired, stored, record.instance_id, record.internal_port)
        except ModuleStartFailed as exc:
            log.error("module %s: %s; the instance left running is stopped", record.module, exc)
            await self._stop_orphan(record)
            return None
        python = await self.runtime.ensure_env(stored.spec.requirements)
        supervisor = self._supervisor(desired, config, record.version, python)
        instance = self.runtime.adopt(record.instance_id, record.pid, config) if record.pid else None
        if instance is not None:
            supervisor.adopt(instance)
            log.info(
                "module %s: re-adopted running instance %s (pid %s)",
                record.module,
                record.instance_id,
                record.pid,
            )
        else:
            if not await self.store.verify_module(record.digest):
                log.warning("module %s: stored files are damaged; it will be fetched again", record.module)
                return None
            config = self._instance_config(
                desired, stored, f"{record.module}-{record.digest[7:15]}-r{next(self._serial)}", free_port()
            )
            supervisor = self._supervisor(desired, config, record.version, python)
            try:
                await supervisor.start()
            except ModelfleetError as exc:
                await supervisor.stop()
                log.error("module %s: could not restart after agent restart: %s", record.module, exc)
                return None
        proxy = FrontProxy(self.config.listen_host, self.config.module_port(record.public_port))
        await proxy.start()
        proxy.switch(config.port)
        new_record = self._record(desired, config, supervisor.state.pid, record.version)
        self.running[record.module] = RunningModule(new_record, supervisor, proxy)
        return new_record

    async def _readopt_container(self, record: InstanceRecord) -> InstanceRecord | None:
        """The container the record names, if it still runs what the record says (same agent, same
        fingerprint): supervised again, no second copy. Otherwise it goes, and None lets the next
        reconcile start the module afresh."""
        desired = record.desired
        adopted = None
        try:
            adopted = await self.containers.adoptable(record)
            if adopted is None:
                return None
            keys = self._keys(desired)
            prepared = await self.containers.prepare(desired, keys, record.internal_port, adopted.name)
            container = self.containers.plan(prepared, adopted.image)
        except ModelfleetError as exc:
            log.error("module %s: cannot re-adopt its container: %s", record.module, exc)
            await self.containers.discard(adopted.name if adopted is not None else record.instance_id)
            return None
        launcher = self.containers.launcher(container)
        supervisor = self._supervisor(
            desired,
            container.config,
            record.version,
            None,
            launcher=launcher,
            probe_health=container.http_checks,
            digest=adopted.image.digest,
        )
        supervisor.state = supervisor.state.model_copy(update={"limits": container.limits})
        supervisor.adopt(
            launcher.adopt(container.config, adopted.details, self.containers.log_mark(record.module))
        )
        log.info("module %s: re-adopted running container %s", record.module, adopted.name)
        proxy = FrontProxy(self.config.listen_host, self.config.module_port(record.public_port))
        await proxy.start()
        proxy.switch(container.config.port)
        new_record = self._record(desired, container.config, supervisor.state.pid, record.version)
        self.running[record.module] = RunningModule(new_record, supervisor, proxy)
        self._watch_tags(desired)
        return new_record

    async def _stop_orphan(self, record: InstanceRecord) -> None:
        """End an instance from before a restart that must not keep serving."""
        if record.pid is None:
            return
        stored = self.store.stored_module(record.digest)
        if stored is None:
            return
        probe = InstanceConfig(
            instance_id=record.instance_id,
            module=record.module,
            model_dir=stored.model_dir,
            entry_script=stored.entry_script,
            code_dir=stored.code_dir if stored.entry_script is not None else None,
            spec=stored.spec,
            port=record.internal_port,
        )
        instance = self.runtime.adopt(record.instance_id, record.pid, probe)
        if instance is not None:
            await self.runtime.stop(instance)

    async def reap_strays(self) -> list[int]:
        """After re-adoption: end every instance of ours that no record accounts for."""
        keep = {running.record.pid for running in self.running.values() if running.record.pid}
        strays = self.runtime.strays(keep)
        for pid in strays:
            log.warning("reaping a module process no instance record accounts for (pid %d)", pid)
            await self.runtime.reap(pid)
        keep_containers = {
            r.record.instance_id for r in self.running.values() if r.record.desired.kind == "docker"
        }
        if self._containers is None and not containers_dir(self.config.data_dir).exists():
            return strays  # never ran a container: nothing of ours can be on the engine
        return strays + await self.containers.reap_strays(keep_containers)

    async def restart(self, name: str) -> None:
        """The `restartModule` method: same version, a fresh process, same port."""
        async with self._lock(name):
            running = self.running[name]
            await running.supervisor.stop()
            await running.supervisor.start()

    # -- images named by tag ---------------------------------------------------------------------

    def _watch_tags(self, desired: DesiredModule) -> None:
        """A container module whose image is named by tag is looked up again every
        `docker_tag_poll_s`: a tag pushed again with new content is redeployed (by digest, with the
        safe update), which IoT Edge's agent does not do."""
        if self._tag_watch is None and desired.image is not None and self.containers.by_tag(desired):
            self._tag_watch = asyncio.get_running_loop().create_task(self._tags(), name="docker-tags")

    async def _tags(self) -> None:
        while True:
            await asyncio.sleep(self.config.docker_tag_poll_s)
            for name, running in list(self.running.items()):
                desired = running.record.desired
                if not self.containers.by_tag(desired):
                    continue
                try:
                    await self._follow_tag(name, running, desired)
                except Exception as exc:  # the watch goes on for the other modules and the next poll
                    log.warning("module %s: following %s failed: %s", name, desired.image, exc)

    async def _follow_tag(self, name: str, running: RunningModule, desired: DesiredModule) -> None:
        current = self.containers.digest_of(running.record.instance_id)
        latest = await self.containers.resolve(desired, self._auth_for(desired))
        if latest in (current, self._bad_digests.get(name)):
            return
        async with self._lock(name):
            if self.running.get(name) is not running:
                return  # changed meanwhile by a deployment
            log.info(
                "module %s: %s now points at %s (was %s): updating", name, desired.image, latest, current
            )
            actual = ActualModule(name, desired.fingerprint, desired.digest, desired.startup_order)
            try:
                await self._replace(Replace(actual, desired))
            except ModelfleetError:
                self._bad_digests[name] = latest
                raise

    async def shutdown(self) -> None:
        """Stop every module: a clean agent stop leaves nothing running. (After `kill -9` the
        modules keep running and the next agent re-adopts them.)"""
        for running in list(self.running.values()):
            await running.proxy.stop()
            await running.supervisor.stop()
        self.running.clear()
        if self._tag_watch is not None:
            await cancel_and_wait(self._tag_watch)
            self._tag_watch = None
        if self._containers is not None:
            await self._containers.close()
