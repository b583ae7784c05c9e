"""Module instances as Docker containers, through the Docker SDK, with the process runtime's
guarantees.

Every SDK call is blocking HTTP to the engine's socket, so each runs in a worker thread
(`DockerEngine.call`); none waits for long (`wait` polls the container's state instead of
holding a thread on the engine's wait endpoint), so stopping the agent never waits on a thread.
A container is one instance: the supervisor (`_supervisor.py`) starts, watches, restarts and stops
it through a `ContainerLauncher` exactly as it does a process, and the executor puts the same
front proxy in front of it. Containers run on the host's network, each on its own internal port
(`MODELFLEET_PORT`), so a new version starts beside the old one and is switched to only once
ready. Labels (agent, deployment, module, version, image digest) let a restarted agent find and
re-adopt its containers, and end any that no record accounts for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from modules import ModelfleetError
from modules.image import ImageReference
from modules.tasks import cancel_and_wait

from ._config import InstanceConfig
from ._errors import ModuleStartError
from ._logs import RotatingLog, tail_lines
from ._readiness import HttpChecks

log = logging.getLogger("modelfleet.agent.docker")

T = TypeVar("T")

LABEL_AGENT = "io.modelfleet.agent"
LABEL_DEPLOYMENT = "io.modelfleet.deployment"
LABEL_MODULE_NAME = "io.modelfleet.module-name"
LABEL_VERSION = "io.modelfleet.version"
LABEL_IMAGE = "io.modelfleet.image"
LABEL_IMAGE_DIGEST = "io.modelfleet.image-digest"
LABEL_FINGERPRINT = "io.modelfleet.fingerprint"

UNKNOWN_EXIT_CODE = 255
_RECENT_LINES = 40
_STATE_POLL_S = 0.5
_LOG_POLL_S = 0.5
_TCP_POLL_S = 0.1


class DockerUnavailable(ModelfleetError):
    """The engine cannot be reached, or the Docker SDK is not installed."""


class ImageUnavailable(ModelfleetError):
    """The module's image cannot be had: not on the device under `imagePullPolicy: never`, not in
    the registry, or not what its digest says."""


def agent_label(device_id: str, data_dir: Path) -> str:
    """One agent's mark on its containers: two agents sharing an engine never touch each other's."""
    return hashlib.sha256(f"{device_id}\0{data_dir}".encode()).hexdigest()[:16]


def sdk_errors() -> Any:
    """The Docker SDK's exceptions; DockerUnavailable when the SDK is not installed."""
    try:
        import docker.errors
    except ImportError:
        raise DockerUnavailable(
            "the Docker SDK is not installed: install modelfleet with the 'docker' extra"
        ) from None
    return docker.errors


class DockerEngine:
    """The engine behind the Docker SDK; `base_url` None means the SDK's own defaults
    (`DOCKER_HOST`, else the local socket)."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            docker_errors = sdk_errors()
            import docker

            try:  # the SDK asks the engine its API version here
                self._client = (
                    docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
                )
            except (docker_errors.DockerException, OSError) as exc:
                where = self.base_url or "the default Docker socket"
                raise DockerUnavailable(f"cannot reach the Docker engine at {where}: {exc}") from None
        return self._client

    async def call(self, fn: Callable[[Any], T]) -> T:
        """`fn(client)` in a worker thread; the engine's errors become modelfleet errors."""

        def run() -> T:
            docker_errors = sdk_errors()

            client = self._connect()
            try:
                return fn(client)
            except docker_errors.NotFound:
                raise
            except docker_errors.APIError as exc:
                raise ModuleStartError(f"Docker engine: {exc.explanation or exc}") from None
            except docker_errors.DockerException as exc:
                raise DockerUnavailable(f"Docker engine: {exc}") from None
            except OSError as exc:  # requests' connection errors are OSErrors too
                where = self.base_url or "the default Docker socket"
                raise DockerUnavailable(f"cannot reach the Docker engine at {where}: {exc}") from None

        return await asyncio.to_thread(run)

    async def inspect(self, container: str) -> dict[str, Any] | None:
        docker_errors = sdk_errors()

        def get(client: Any) -> dict[str, Any] | None:
            try:
                return client.api.inspect_container(container)
            except docker_errors.NotFound:
                return None

        return await self.call(get)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)


def _started_at(state: Mapping[str, Any]) -> datetime:
    text = str(state.get("StartedAt") or "")[:19]
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)


class ContainerInstance:
    """A running (or finished) container: started by this agent or re-adopted from an earlier one.
    Unlike an adopted process, an adopted container's exit code is known (the engine keeps it)."""

    def __init__(
        self, config: InstanceConfig, container_id: str, pid: int, started_at: datetime, engine: DockerEngine
    ) -> None:
        self.config = config
        self.container_id = container_id
        self.pid = pid
        self.started_at = started_at
        self.engine = engine
        self.recent: collections.deque[str] = collections.deque(maxlen=_RECENT_LINES)
        self.pump_task: asyncio.Task[None] | None = None
        self._returncode: int | None = None

    def __repr__(self) -> str:
        return f"<ContainerInstance {self.config.instance_id} {self.container_id[:12]} rc={self._returncode}>"

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    async def wait(self) -> int:
        """Until the container stops; its exit code (UNKNOWN_EXIT_CODE once it is gone)."""
        while self._returncode is None:
            details = await self.engine.inspect(self.container_id)
            if details is None:
                self._returncode = UNKNOWN_EXIT_CODE
                break
            state = details.get("State") or {}
            if not state.get("Running") and state.get("Status") not in ("created", "restarting"):
                self._returncode = int(state.get("ExitCode", UNKNOWN_EXIT_CODE))
                break
            await asyncio.sleep(_STATE_POLL_S)
        return self._returncode

    def reason(self, lines: int = 15) -> str:
        return "\n".join(list(self.recent)[-lines:])


@dataclass(frozen=True)
class ContainerPlan:
    """What one module's containers are created from: the body of `POST /containers/create`."""

    name: str  # the container name: the instance id
    body: Mapping[str, Any]
    http_checks: bool  # a modelfleet image: readiness and smoke request over HTTP


class ContainerLogs:
    """Moves a container's output into its module's rotating log, so `getLogs` reads a file (as
    for a process) and shows one story across restarts and versions."""

    def __init__(self, engine: DockerEngine, module_log: RotatingLog) -> None:
        self.engine = engine
        self.module_log = module_log

    async def run(self, instance: ContainerInstance, since: float | None) -> None:
        """Poll the engine for new lines until the container has stopped and its last lines are in.
        `since` is in whole seconds, so the lines of the current second come again: those already
        written are recognised by their timestamps and skipped."""
        docker_errors = sdk_errors()

        cursor = _stamp(since) if since is not None else None
        seen: set[bytes] = set()
        while True:
            finished = instance.returncode is not None
            since_s = _seconds(cursor) if cursor is not None else None

            def fetch(client: Any, since_s: int | None = since_s) -> bytes:
                kwargs: dict[str, Any] = {"timestamps": True}
                if since_s is not None:
                    kwargs["since"] = since_s
                return client.api.logs(instance.container_id, **kwargs)

            try:
                data = await self.engine.call(fetch)
            except (docker_errors.NotFound, ModelfleetError):
                return
            for line in data.splitlines():
                stamp = line[:19]
                if line in seen or (cursor is not None and stamp < cursor):
                    continue
                if stamp != cursor:
                    cursor, seen = stamp, set()
                seen.add(line)
                text = line.partition(b" ")[2]
                self.module_log.write(text + b"\n")
                instance.recent.append(text.decode("utf-8", errors="replace"))
            if finished:
                return
            await asyncio.sleep(_LOG_POLL_S)


def _stamp(moment: float) -> bytes:
    """A Unix time as the first 19 characters of the engine's log timestamps (RFC 3339, UTC)."""
    return datetime.fromtimestamp(int(moment), UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()


def _seconds(stamp: bytes) -> int:
    return int(datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())


class ContainerLauncher(HttpChecks):
    """One module's containers, as the supervisor drives them: the process runtime's interface."""

    def __init__(self, engine: DockerEngine, plan: ContainerPlan, logs: ContainerLogs) -> None:
        self.engine = engine
        self.plan = plan
        self.logs = logs

    async def start(
        self, config: InstanceConfig, *, python: str | None = None, resources: Any = None
    ) -> ContainerInstance:
        """Create and start the container (a stopped one of the same name from an earlier attempt
        is removed first); returns once it runs."""
        docker_errors = sdk_errors()

        plan = self.plan

        def create(client: Any) -> dict[str, Any]:
            with contextlib.suppress(docker_errors.NotFound):
                client.api.remove_container(plan.name, force=True)
            created = client.api.create_container_from_config(dict(plan.body), name=plan.name)
            client.api.start(created["Id"])
            return client.api.inspect_container(created["Id"])

        creating = asyncio.ensure_future(self.engine.call(create))
        try:
            details = await asyncio.shield(creating)
        except docker_errors.NotFound as exc:
            raise ModuleStartError(f"cannot start {plan.name}: {exc.explanation or exc}") from None
        except asyncio.CancelledError:
            # The engine call goes on in its thread: what it creates must not outlive this start.
            with contextlib.suppress(Exception):
                orphan = await creating
                await self.engine.call(lambda client: client.api.remove_container(orphan["Id"], force=True))
            raise
        state = details.get("State") or {}
        instance = ContainerInstance(
            config, details["Id"], int(state.get("Pid") or 0), _started_at(state), self.engine
        )
        self._pump(instance, since=None)
        log.info("started container %s (%s, port %d)", plan.name, details["Id"][:12], config.port)
        return instance

    def adopt(
        self, config: InstanceConfig, details: Mapping[str, Any], since: float | None
    ) -> ContainerInstance:
        state = details.get("State") or {}
        instance = ContainerInstance(
            config, str(details["Id"]), int(state.get("Pid") or 0), _started_at(state), self.engine
        )
        self._pump(instance, since=since)
        return instance

    def _pump(self, instance: ContainerInstance, since: float | None) -> None:
        instance.pump_task = asyncio.get_running_loop().create_task(
            self.logs.run(instance, since), name=f"logs-{instance.config.instance_id}"
        )

    async def stop(self, instance: ContainerInstance, timeout: float = 10.0) -> int:  # type: ignore[override]
        """`docker stop` (SIGTERM, then SIGKILL after `timeout`), its last output into the log,
        then the container is removed: nothing of it is left to adopt."""
        docker_errors = sdk_errors()

        def stop(client: Any) -> None:
            with contextlib.suppress(docker_errors.NotFound):
                client.api.stop(instance.container_id, timeout=max(0, int(timeout)))

        with contextlib.suppress(docker_errors.NotFound):
            await self.engine.call(stop)
        code = await instance.wait()
        if instance.pump_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(instance.pump_task), 5)
            await cancel_and_wait(instance.pump_task)

        def remove(client: Any) -> None:
            with contextlib.suppress(docker_errors.NotFound):
                client.api.remove_container(instance.container_id, force=True)

        await self.engine.call(remove)
        log.info("stopped container %s (exit %d)", instance.config.instance_id, code)
        return code

    async def wait_ready(self, instance: ContainerInstance, timeout: float) -> None:  # type: ignore[override]
        if self.plan.http_checks:
            await super().wait_ready(instance, timeout)
            return
        # An image not built by modelfleet: ready once something accepts connections on its port.
        deadline = time.monotonic() + timeout
        waiter = asyncio.ensure_future(instance.wait())
        try:
            while True:
                if waiter.done():
                    raise ModuleStartError(self._exit_reason(instance))
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", instance.config.port)
                    writer.close()
                    return
                if time.monotonic() > deadline:
                    raise ModuleStartError(
                        f"{instance.config.instance_id} not listening after {timeout:.0f}s"
                    )
                await asyncio.sleep(_TCP_POLL_S)
        finally:
            waiter.cancel()

    async def smoke_test(self, instance: ContainerInstance) -> None:  # type: ignore[override]
        if self.plan.http_checks:
            await super().smoke_test(instance)


class ContainerRuntime:
    """The device's container engine as the executor uses it: images, containers, logs."""

    def __init__(
        self,
        engine: DockerEngine,
        data_dir: Path,
        agent: str,
        *,
        log_max_bytes: int = 5 * 1024 * 1024,
        log_backups: int = 3,
    ) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.agent = agent
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self._logs: dict[str, RotatingLog] = {}
        self._gpu: bool | None = None
        self._runtimes: list[str] | None = None

    # -- logs ---------------------------------------------------------------------------------

    def module_log(self, module: str) -> RotatingLog:
        current = self._logs.get(module)
        if current is None:
            path = self.data_dir / "logs" / f"{module}.log"
            current = RotatingLog(path, max_bytes=self.log_max_bytes, backups=self.log_backups)
            self._logs[module] = current
        return current

    def has_logs(self, module: str) -> bool:
        return (self.data_dir / "logs" / f"{module}.log").exists()

    def logs(self, module: str, tail: int = 100) -> list[str]:
        return tail_lines(self.module_log(module).files(), tail)

    def log_written_at(self, module: str) -> float | None:
        """When the module's log last grew: a re-adopted container's output is collected from there."""
        with contextlib.suppress(OSError):
            return (self.data_dir / "logs" / f"{module}.log").stat().st_mtime
        return None

    def launcher(self, plan: ContainerPlan, module: str) -> ContainerLauncher:
        return ContainerLauncher(self.engine, plan, ContainerLogs(self.engine, self.module_log(module)))

    # -- the engine's capabilities -------------------------------------------------------------

    async def runtimes(self) -> list[str]:
        if self._runtimes is None:
            info = await self.engine.call(lambda client: client.api.info())
            self._runtimes = sorted((info.get("Runtimes") or {}).keys())
            self._gpu = "nvidia" in self._runtimes or _has_cdi_gpu(info)
        return self._runtimes

    @property
    def known_runtimes(self) -> list[str]:
        """The engine's runtimes as last asked (`runtimes()`)."""
        return list(self._runtimes or [])

    async def has_gpu(self) -> bool:
        """Whether containers here can get a GPU: the engine has the NVIDIA runtime."""
        await self.runtimes()
        return bool(self._gpu)

    async def free_bytes(self) -> int | None:
        """Free space where the engine keeps images; None when that folder is not visible here."""
        info = await self.engine.call(lambda client: client.api.info())
        root = info.get("DockerRootDir")
        if not root:
            return None
        try:
            return shutil.disk_usage(root).free
        except OSError:
            return None

    # -- images -------------------------------------------------------------------------------

    async def local_image(self, reference: str) -> dict[str, Any] | None:
        docker_errors = sdk_errors()

        def get(client: Any) -> dict[str, Any] | None:
            try:
                return client.api.inspect_image(reference)
            except docker_errors.NotFound:
                return None

        return await self.engine.call(get)

    async def remote_digest(self, reference: ImageReference, auth: Mapping[str, str] | None) -> str:
        """The digest a tag points at now, from the registry (nothing is pulled)."""
        docker_errors = sdk_errors()

        def resolve(client: Any) -> str:
            data = client.api.inspect_distribution(str(reference), auth_config=dict(auth) if auth else None)
            return str(data["Descriptor"]["digest"])

        try:
            return await self.engine.call(resolve)
        except (docker_errors.NotFound, ModuleStartError) as exc:
            raise ImageUnavailable(f"image {reference}: {exc}") from None

    async def pull(self, pinned: ImageReference, auth: Mapping[str, str] | None) -> dict[str, Any]:
        """Pull an image by digest; the engine checks every blob against it, and the image it
        reports must carry that digest."""
        assert pinned.digest is not None
        docker_errors = sdk_errors()

        name = f"{pinned.registry}/{pinned.repository}" if pinned.registry else pinned.repository

        def pull(client: Any) -> None:
            client.api.pull(name, tag=pinned.digest, auth_config=dict(auth) if auth else None)

        try:
            await self.engine.call(pull)
        except (docker_errors.NotFound, ModuleStartError) as exc:
            raise ImageUnavailable(f"cannot pull {pinned}: {exc}") from None
        details = await self.local_image(str(pinned))
        if details is None or f"{name}@{pinned.digest}" not in (details.get("RepoDigests") or []):
            raise ImageUnavailable(f"the engine did not store {pinned} under its digest")
        return details

    async def remove_images(self, candidates: set[str]) -> list[str]:
        """Remove these images (ids) unless a container, running or not, uses one; returns those
        removed. The engine itself also refuses to remove an image in use."""
        docker_errors = sdk_errors()

        def sweep(client: Any) -> list[str]:
            used = {c["ImageID"] for c in client.api.containers(all=True)}
            removed = []
            for image_id in sorted(candidates - used):
                try:
                    client.api.remove_image(image_id)
                except docker_errors.NotFound:
                    removed.append(image_id)
                except docker_errors.APIError as exc:
                    log.info("image %s kept: %s", image_id[:19], exc.explanation or exc)
                else:
                    removed.append(image_id)
            return removed

        return await self.engine.call(sweep)

    # -- containers ---------------------------------------------------------------------------

    async def ours(self) -> list[dict[str, Any]]:
        """This agent's containers, running or not."""
        return await self.engine.call(
            lambda client: client.api.containers(all=True, filters={"label": f"{LABEL_AGENT}={self.agent}"})
        )

    async def discard(self, container: str, timeout: float = 10.0) -> None:
        docker_errors = sdk_errors()

        def gone(client: Any) -> None:
            with contextlib.suppress(docker_errors.NotFound):
                client.api.stop(container, timeout=max(0, int(timeout)))
            with contextlib.suppress(docker_errors.NotFound):
                client.api.remove_container(container, force=True)

        await self.engine.call(gone)

    async def close(self) -> None:
        for module_log in self._logs.values():
            module_log.close()
        await self.engine.close()


def _has_cdi_gpu(info: Mapping[str, Any]) -> bool:
    return any("nvidia.com/gpu" in str(device) for device in info.get("DiscoveredDevices") or [])
