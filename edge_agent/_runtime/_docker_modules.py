"""Container modules as the executor runs them: from a desired module to a container plan, the
image pulled by digest, and the containers an earlier agent left behind.

Order matters for "a refused document changes nothing": the policy and the GPU check run first
(`prepare`), before any image is pulled and long before anything that serves is stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from edge_agent._config import AgentConfig
from edge_agent._planner import DesiredModule
from edge_agent._state import InstanceRecord
from edge_agent._store import InsufficientDiskError
from modules import ModelfleetError
from modules.atomic_file import write_atomic
from modules.deployment.containers import parse_image_reference
from modules.image import HOST_ENV, MODULE_LABEL, PORT_ENV, SAMPLE_INPUT_LABEL, ImageReference
from modules.oci import RegistryClient, RegistryCredentials
from modules.service_keys import ServiceKeys
from modules.spec import NAME_PATTERN, ModelRef, ModuleSpec

from ._config import InstanceConfig, containers_dir
from ._docker import (
    LABEL_AGENT,
    LABEL_DEPLOYMENT,
    LABEL_FINGERPRINT,
    LABEL_IMAGE,
    LABEL_IMAGE_DIGEST,
    LABEL_MODULE_NAME,
    LABEL_VERSION,
    ContainerLauncher,
    ContainerPlan,
    ContainerRuntime,
    DockerEngine,
    ImageUnavailable,
    agent_label,
)
from ._docker_options import (
    ContainerRefused,
    DockerPolicy,
    GpuWanted,
    check_policy,
    container_config,
    describe_limits,
)

log = logging.getLogger("modelfleet.agent.docker")

PRIMARY_KEY_ENV = "MODELFLEET_SCORING_PRIMARY_KEY"
SECONDARY_KEY_ENV = "MODELFLEET_SCORING_SECONDARY_KEY"
_CONTAINER_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Registry credentials for a pull: host -> the SDK's auth config, or None for anonymous.
AuthLookup = Callable[[str], Mapping[str, str] | None]


@dataclass(frozen=True)
class PulledImage:
    reference: ImageReference  # pinned by digest
    image_id: str
    labels: Mapping[str, str]

    @property
    def digest(self) -> str:
        assert self.reference.digest is not None
        return self.reference.digest

    @property
    def modelfleet(self) -> bool:
        """Built by modelfleet: its scoring host answers readiness and `/score`."""
        return MODULE_LABEL in self.labels


@dataclass(frozen=True)
class Prepared:
    desired: DesiredModule
    instance_id: str
    port: int
    env: Mapping[str, str]
    keys: ServiceKeys | None
    gpu: bool


@dataclass(frozen=True)
class Container:
    config: InstanceConfig
    plan: ContainerPlan
    module: str
    limits: str | None = None  # for reported state

    @property
    def http_checks(self) -> bool:
        return self.plan.http_checks


@dataclass(frozen=True)
class Adoptable:
    details: Mapping[str, Any]
    image: PulledImage

    @property
    def name(self) -> str:
        return str(self.details.get("Name", "")).lstrip("/")


def _platform_matches(platform: Mapping[str, Any]) -> bool:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    return platform.get("os") == "linux" and platform.get("architecture") == machine


def _pulled_image(pinned: ImageReference, details: Mapping[str, Any]) -> PulledImage:
    labels = (details.get("Config") or {}).get("Labels") or {}
    return PulledImage(pinned, str(details["Id"]), dict(labels))


def _spec(image: PulledImage) -> ModuleSpec:
    """What the supervisor knows of a container module: the image pins its models and code, and a
    modelfleet image carries the sample input for the smoke request."""
    name = image.labels.get(MODULE_LABEL, "")
    if not re.match(NAME_PATTERN, name):
        name = "container"
    sample = image.labels.get(SAMPLE_INPUT_LABEL)
    return ModuleSpec(
        name=name,
        version=1,
        runtime="docker",
        models=[ModelRef(name=name, version=1, digest=image.digest, files=[])],
        sample_input=json.loads(sample) if sample else None,
        created=_EPOCH,
    )


class ContainerModules:
    """The executor's container side. The engine is reached on first use only."""

    def __init__(self, config: AgentConfig, runtime: ContainerRuntime | None = None) -> None:
        self.config = config
        self._runtime = runtime
        self.agent = agent_label(config.device_id, config.data_dir)
        # instance id -> image id, for the images in use; images this agent pulled, on disk so a
        # restarted agent still collects them (never an image someone else put on the engine)
        self.images: dict[str, str] = {}
        self.digests: dict[str, str] = {}  # instance id -> the image digest it runs
        self._pulled_file = containers_dir(config.data_dir) / "pulled-images.json"

    @property
    def runtime(self) -> ContainerRuntime:
        if self._runtime is None:
            self._runtime = ContainerRuntime(
                DockerEngine(self.config.docker_host),
                containers_dir(self.config.data_dir),
                self.agent,
            )
        return self._runtime

    @property
    def used(self) -> bool:
        return self._runtime is not None

    def policy(self, runtimes: list[str]) -> DockerPolicy:
        c = self.config
        return DockerPolicy(
            allow_privileged=c.docker_allow_privileged,
            allow_host_namespaces=c.docker_allow_host_namespaces,
            bind_paths=tuple(c.docker_bind_paths),
            device_paths=tuple(c.docker_device_paths),
            capabilities=tuple(c.docker_capabilities),
            runtimes=tuple(runtimes),
        )

    # -- logs -----------------------------------------------------------------------------------

    def logs(self, module: str, tail: int) -> list[str]:
        return self.runtime.logs(module, tail)

    def has_logs(self, module: str) -> bool:
        return (containers_dir(self.config.data_dir) / "logs" / f"{module}.log").exists()

    def log_mark(self, module: str) -> float | None:
        return self.runtime.log_written_at(module)

    # -- a new container ------------------------------------------------------------------------

    async def prepare(
        self, desired: DesiredModule, keys: ServiceKeys | None, port: int, instance_id: str | None
    ) -> Prepared:
        """The checks that refuse a module before anything is pulled: the policy, the GPU."""
        runtimes = await self.runtime.runtimes()
        create = json.loads(desired.create_options) if desired.create_options else {}
        check_policy(create, self.policy(runtimes))
        gpu = False
        if desired.gpu is not None:
            gpu = await self.runtime.has_gpu()
            if desired.gpu == "required" and not gpu:
                raise ContainerRefused(
                    f"module {desired.name} requires a GPU (gpu: required), and this device's Docker engine "
                    "has no GPU runtime"
                )
            if not gpu:
                log.info("module %s: no GPU runtime on this device: it runs on CPU", desired.name)
        env = dict(desired.env)
        env[PORT_ENV] = str(port)
        env[HOST_ENV] = "127.0.0.1"
        if keys is not None:
            env[PRIMARY_KEY_ENV] = keys.primary.get_secret_value()
            env[SECONDARY_KEY_ENV] = keys.secondary.get_secret_value()
        name = instance_id or _CONTAINER_NAME.sub(
            "-", f"modelfleet-{self.agent[:8]}-{desired.name}-{os.urandom(3).hex()}"
        )
        return Prepared(desired, name, port, env, keys, gpu)

    def _reference(self, desired: DesiredModule) -> ImageReference:
        assert desired.image is not None
        reference = parse_image_reference(desired.image)
        if reference.registry is None:  # the agent's registry, as the publisher names images
            reference = reference.with_registry(self.config.registry.split("://", 1)[-1].rstrip("/"))
        return reference

    def by_tag(self, desired: DesiredModule) -> bool:
        """A container module whose image is a tag (not pinned by digest) under `on-create`."""
        if desired.image is None or desired.image_pull_policy == "never":
            return False
        return parse_image_reference(desired.image).digest is None

    def digest_of(self, instance_id: str) -> str | None:
        return self.digests.get(instance_id)

    async def resolve(self, desired: DesiredModule, auth_for: AuthLookup) -> str:
        """The digest the module's image reference names at the registry now."""
        reference = self._reference(desired)
        assert reference.registry is not None
        return reference.digest or await self.runtime.remote_digest(reference, auth_for(reference.registry))

    async def ensure_image(self, desired: DesiredModule, auth_for: AuthLookup) -> PulledImage:
        """The module's image on this engine, by digest: a tag is resolved at the registry first
        (so a tag pushed again with new content is a new digest), and a pull is verified."""
        reference = self._reference(desired)
        assert reference.registry is not None
        auth = auth_for(reference.registry)
        if desired.image_pull_policy == "never":
            return await self._local(reference)
        digest = reference.digest or await self.runtime.remote_digest(reference, auth)
        pinned = ImageReference(reference.registry, reference.repository, None, digest)
        details = await self.runtime.local_image(str(pinned))
        if details is None:
            free = await self.runtime.free_bytes()
            if free is not None:
                needed = await self._image_bytes(pinned, auth)
                if free - needed < self.config.reserve_bytes:
                    raise InsufficientDiskError(
                        needed, free, reserve_bytes=self.config.reserve_bytes, what=str(pinned)
                    )
            details = await self.runtime.pull(pinned, auth)
            self._remember_pulled(str(details["Id"]))
        return PulledImage(
            pinned, str(details["Id"]), dict((details.get("Config") or {}).get("Labels") or {})
        )

    async def _image_bytes(self, pinned: ImageReference, auth: Mapping[str, str] | None) -> int:
        """The image's compressed size, from its manifest at the registry (the engine's pull does
        not say it before it starts); 0 when the registry does not tell. Unpacked layers take more:
        the reserve is the margin."""
        assert pinned.registry is not None and pinned.digest is not None
        own_scheme, _, own_host = self.config.registry.partition("://")
        if pinned.registry == own_host.rstrip("/"):
            scheme = own_scheme
        else:
            loopback = pinned.registry.startswith(("127.", "localhost", "[::1]"))
            scheme = "http" if loopback else "https"  # as the engine treats registries
        credentials = RegistryCredentials(
            username=auth.get("username") if auth else None,
            password=SecretStr(auth["password"]) if auth and auth.get("password") else None,
        )
        try:
            async with RegistryClient(f"{scheme}://{pinned.registry}", credentials, retries=1) as client:
                body = (await client.get_manifest(pinned.repository, pinned.digest)).json()
                if "manifests" in body:  # an index: the entry for this device's platform
                    entry = next(
                        (m for m in body["manifests"] if _platform_matches(m.get("platform") or {})), None
                    )
                    if entry is None:
                        return 0
                    body = (await client.get_manifest(pinned.repository, entry["digest"])).json()
        except (ModelfleetError, ValueError, KeyError):
            return 0
        blobs = [body.get("config") or {}, *(body.get("layers") or [])]
        return sum(int(blob.get("size") or 0) for blob in blobs)

    async def _local(self, reference: ImageReference) -> PulledImage:
        """`imagePullPolicy: never`: the image must already be on the device."""
        details = await self.runtime.local_image(str(reference))
        if details is None:
            raise ImageUnavailable(f"image {reference} is not on this device, and imagePullPolicy is never")
        name = f"{reference.registry}/{reference.repository}"
        digests = [d for d in details.get("RepoDigests") or [] if d.startswith(name + "@")]
        digest = reference.digest or (digests[0].split("@", 1)[1] if digests else None)
        if digest is None:
            raise ImageUnavailable(
                f"image {reference} on this device has no digest from {reference.registry}"
            )
        pinned = ImageReference(reference.registry, reference.repository, None, digest)
        return PulledImage(
            pinned, str(details["Id"]), dict((details.get("Config") or {}).get("Labels") or {})
        )

    def _pulled(self) -> set[str]:
        try:
            return set(json.loads(self._pulled_file.read_text()))
        except (OSError, ValueError):
            return set()

    def _remember_pulled(self, image_id: str) -> None:
        pulled = self._pulled() | {image_id}
        self._pulled_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._pulled_file, json.dumps(sorted(pulled)).encode())

    def plan(self, prepared: Prepared, image: PulledImage) -> Container:
        desired = prepared.desired
        self.images[prepared.instance_id] = image.image_id
        self.digests[prepared.instance_id] = image.digest
        labels = {
            LABEL_AGENT: self.agent,
            LABEL_DEPLOYMENT: desired.deployment or "",
            LABEL_MODULE_NAME: desired.name,
            LABEL_VERSION: desired.module_version or "",
            LABEL_IMAGE: desired.image or "",
            LABEL_IMAGE_DIGEST: image.digest,
            LABEL_FINGERPRINT: desired.fingerprint,
        }
        body = container_config(
            desired.create_options,
            image=str(image.reference),
            env=prepared.env,
            labels=labels,
            policy=self.policy(self.runtime.known_runtimes),
            gpu=prepared.gpu,
        )
        config = InstanceConfig(
            instance_id=prepared.instance_id,
            module=desired.name,
            model_dir=self.runtime.data_dir,
            spec=_spec(image),
            port=prepared.port,
            primary_key=prepared.keys.primary if prepared.keys else None,
            secondary_key=prepared.keys.secondary if prepared.keys else None,
        )
        plan = ContainerPlan(prepared.instance_id, body, image.modelfleet)
        limits = describe_limits(body, GpuWanted(desired.gpu, prepared.gpu))
        return Container(config, plan, desired.name, limits)

    def launcher(self, container: Container) -> ContainerLauncher:
        return self.runtime.launcher(container.plan, container.module)

    # -- after an agent restart ------------------------------------------------------------------

    async def adoptable(self, record: InstanceRecord) -> Adoptable | None:
        """The record's container when it still runs what the record says; anything else of that
        name is removed (the next reconcile starts the module afresh)."""
        details = await self.runtime.engine.inspect(record.instance_id)
        if details is None:
            # renamed by an update the agent made on its own (a re-pushed tag): found by labels
            for container in await self.runtime.ours():
                labels = container.get("Labels") or {}
                if (
                    labels.get(LABEL_MODULE_NAME) == record.module
                    and labels.get(LABEL_FINGERPRINT) == record.fingerprint
                    and container.get("State") == "running"
                ):
                    details = await self.runtime.engine.inspect(container["Id"])
                    break
        if details is None:
            return None
        labels = (details.get("Config") or {}).get("Labels") or {}
        state = details.get("State") or {}
        if (
            labels.get(LABEL_AGENT) != self.agent
            or labels.get(LABEL_FINGERPRINT) != record.fingerprint
            or not state.get("Running")
        ):
            await self.discard(record.instance_id)
            return None
        image_details = await self.runtime.local_image(str(details.get("Image")))
        digest = labels.get(LABEL_IMAGE_DIGEST, "")
        image = (details.get("Config") or {}).get("Image", "")
        pinned = parse_image_reference(str(image))
        name = str(details.get("Name", "")).lstrip("/")
        if image_details is None or pinned.digest != digest:
            await self.discard(name)
            return None
        image_labels = dict((image_details.get("Config") or {}).get("Labels") or {})
        self.images[name] = str(image_details["Id"])
        self.digests[name] = digest
        return Adoptable(details, PulledImage(pinned, str(image_details["Id"]), image_labels))

    async def reap_strays(self, keep: set[str]) -> list[int]:
        """This agent's containers that no record accounts for: stopped and removed."""
        if not self.used and not containers_dir(self.config.data_dir).exists():
            return []  # never ran a container: the engine need not even be there
        try:
            found = await self.runtime.ours()
        except ModelfleetError as exc:
            log.error("cannot list this agent's containers: %s", exc)
            return []
        reaped = []
        for container in found:
            names = [n.lstrip("/") for n in container.get("Names") or []]
            if any(n in keep for n in names):
                continue
            log.warning("removing a module container no instance record accounts for (%s)", names)
            details = await self.runtime.engine.inspect(container["Id"])
            pid = int(((details or {}).get("State") or {}).get("Pid") or 0)
            await self.runtime.discard(container["Id"])
            if pid:
                reaped.append(pid)
        return reaped

    async def discard(self, name: str) -> None:
        try:
            await self.runtime.discard(name)
        except ModelfleetError as exc:
            log.error("cannot remove container %s: %s", name, exc)

    async def prune(self, serving: set[str]) -> None:
        """Images this agent pulled that no module of it runs any more (`serving`: instance ids);
        never one a container uses."""
        if not self.used:
            return
        keep = {self.images[i] for i in serving if i in self.images}
        pulled = self._pulled()
        if not pulled - keep:
            return
        try:
            removed = set(await self.runtime.remove_images(pulled - keep))
        except ModelfleetError as exc:
            log.warning("images not collected: %s", exc)
            return
        for image_id in removed:
            log.info("removed image %s: no module uses it", image_id[:19])
        if removed:
            write_atomic(self._pulled_file, json.dumps(sorted(pulled - removed)).encode())

    async def close(self) -> None:
        if self._runtime is not None:
            await self._runtime.close()
