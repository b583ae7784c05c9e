"""Module images on the workstation: the base image, and a module's image next to its artifact.

An image lives in `images/<module>` of the workspace registry, tagged with the module version it
was built from (`images/iris:3` is `modules/iris:3` as a container). It is assembled here from the
module artifact's blobs, without a container engine (`modules.image`); only the base image needs
root, for debootstrap, and it is built once per machine, cached under a key made from
`scripts/build-base-image.sh`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules import ConfigError
from modules.artifact import parse_module_manifest
from modules.image import (
    BaseImage,
    BuiltImage,
    ImageBuildError,
    ImageCache,
    ImageReference,
    Layer,
    base_image,
    cache_key,
    check_compatible,
    code_layer,
    fetch_base_layers,
    find_python,
    model_layers,
    modelfleet_layer,
    module_image,
    parse_image_reference,
    push_image,
    requirements_layer,
    resolve_base,
    runtime_distributions,
    runtime_layer,
    unpacked_size,
    workstation_platform,
    write_rootfs_layer,
)
from modules.oci import RegistryClient, RegistryCredentials, registry_host, sha256_bytes
from publisher._module import Module
from publisher._workspace import Workspace

IMAGE_REPOSITORY_PREFIX = "images/"
BASE_REPOSITORY = "bases/modelfleet-python"
BASE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build-base-image.sh"
BASE_FORMAT = 1  # bump when the way a root file system becomes a layer changes


# -- the base image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseBuild:
    """The base image as built (or found in the cache) on this machine."""

    key: str
    layer: Layer
    config: bytes
    manifest: bytes
    python: str
    unpacked_bytes: int
    cached: bool

    @property
    def tag(self) -> str:
        return self.key[:16]

    @property
    def digest(self) -> str:
        return sha256_bytes(self.manifest)


def base_key(script: Path = BASE_SCRIPT) -> str:
    """The cache key and tag of the base: the script's bytes and the Debian suite it is run with."""
    try:
        text = script.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {script}: `modelfleet image base` runs from a modelfleet checkout "
            "(or pass --base-image to use a base image you made yourself)"
        ) from exc
    suite = os.environ.get("MODELFLEET_DEBIAN_SUITE", "bookworm")
    return cache_key("base", BASE_FORMAT, hashlib.sha256(text).hexdigest(), suite)


def build_base_image(*, rebuild: bool = False, cache: ImageCache | None = None) -> BaseBuild:
    """Run `scripts/build-base-image.sh` into a temporary root file system and make it one layer,
    unless this machine has already built the same script (then nothing runs)."""
    cache = cache or ImageCache()
    key = base_key()
    with cache.lock("base-" + key):
        record = None if rebuild else cache.get_json("bases", key)
        if record is not None:
            found = _cached_base(cache, key, record)
            if found is not None:
                return found
        cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="modelfleet-base-", dir=cache.root) as tmp:
            rootfs = Path(tmp) / "rootfs"
            proc = subprocess.run(["bash", str(BASE_SCRIPT), str(rootfs)], capture_output=True, text=True)
            if proc.returncode != 0:
                detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
                raise ImageBuildError(
                    "building the base image failed: " + (detail[-1] if detail else f"exit {proc.returncode}")
                )
            python = _rootfs_python(rootfs)
            comment = f"scripts/build-base-image.sh ({key[:16]}): Debian minbase + python3 {python}"
            layer = write_rootfs_layer(rootfs, cache.staging("base"), comment)
            with contextlib.suppress(OSError):
                shutil.rmtree(rootfs)
        layer = cache.adopt(layer)
        config, manifest = base_image(layer, python, key, comment)
        for blob in (config, manifest):
            path = cache.blob_path(sha256_bytes(blob))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        unpacked = unpacked_size(layer)
        cache.put_json(
            "bases",
            key,
            {
                "layer": {
                    "digest": layer.digest,
                    "diff_id": layer.diff_id,
                    "size": layer.size,
                    "comment": comment,
                },
                "config": sha256_bytes(config),
                "manifest": sha256_bytes(manifest),
                "python": python,
                "unpacked_bytes": unpacked,
            },
        )
        return BaseBuild(key, layer, config, manifest, python, unpacked, cached=False)


def _cached_base(cache: ImageCache, key: str, record: dict[str, Any]) -> BaseBuild | None:
    info = record["layer"]
    if not all(cache.has_blob(d) for d in (info["digest"], record["config"], record["manifest"])):
        return None
    layer = Layer(
        cache.blob_path(info["digest"]), info["digest"], info["diff_id"], info["size"], info["comment"]
    )
    return BaseBuild(
        key,
        layer,
        cache.blob_path(record["config"]).read_bytes(),
        cache.blob_path(record["manifest"]).read_bytes(),
        record["python"],
        record["unpacked_bytes"],
        cached=True,
    )


def _rootfs_python(rootfs: Path) -> str:
    candidates = sorted(p.name for p in (rootfs / "usr" / "lib").glob("python3.*") if (p / "os.py").is_file())
    if not (rootfs / "usr" / "bin" / "python3").exists() or not candidates:
        raise ImageBuildError(f"the base image's root file system has no python3 ({rootfs})")
    return candidates[-1].removeprefix("python")


async def push_base_image_async(workspace: Workspace, build: BaseBuild, ref: str | None = None) -> str:
    """Push the base to `ref` (default `bases/modelfleet-python:<key>`, plus `:latest`, which module
    images use unless told otherwise) in the workspace registry; returns `repository@digest`."""
    target = parse_image_reference(ref) if ref else ImageReference(None, BASE_REPOSITORY, build.tag)
    if target.registry and target.registry != registry_host(workspace.registry_url):
        raise ConfigError(
            f"{ref}: the base image is pushed to the workspace registry ({workspace.registry_url})"
        )
    tags = [target.tag or build.tag] + (["latest"] if ref is None else [])
    async with workspace.registry_client() as client:
        await client.push_blob(target.repository, build.layer.path, build.layer.digest)
        await client.push_blob(target.repository, build.config)
        for tag in tags:
            await client.put_manifest(
                target.repository, tag, build.manifest, json.loads(build.manifest)["mediaType"]
            )
    return f"{target.repository}@{build.digest}"


def push_base_image(workspace: Workspace, build: BaseBuild, ref: str | None = None) -> str:
    return asyncio.run(push_base_image_async(workspace, build, ref))


# -- module images --------------------------------------------------------------------------------


@dataclass
class ModuleImage:
    """A module's image as pushed: `reference` is what `docker pull` takes."""

    module: str
    repository: str
    tag: str
    digest: str
    reference: str
    base: str
    layers: list[dict[str, Any]]
    size: int
    notes: list[str] = field(default_factory=list)

    def serialize(self) -> dict[str, Any]:
        return dict(vars(self))

    def summary(self) -> str:
        """Two lines for a person: what to pull, and how big it is."""
        mib = self.size / (1 << 20)
        return (
            f"image  {self.reference}\n"
            f"       {self.repository}:{self.tag}  {mib:.1f} MiB compressed, {len(self.layers)} own layers"
        )


def _docker_config_credentials(host: str) -> RegistryCredentials | None:
    """Credentials `docker login` stored in plain form (`auths.<host>.auth`), as Azure ML's
    `base_image_registry` would take them; credential helpers are not consulted."""
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        auths = json.loads((folder / "config.json").read_text()).get("auths") or {}
    except (OSError, ValueError):
        return None
    for name in (host, f"https://{host}", f"http://{host}"):
        entry = auths.get(name) or {}
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return RegistryCredentials(username=user, password=password)
    return None


def _base_client(workspace: Workspace, ref: ImageReference) -> tuple[RegistryClient | None, ImageReference]:
    """None for the workspace registry (its own client is used); a client for any other, with
    credentials from MODELFLEET_BASE_REGISTRY_USERNAME/PASSWORD or the Docker config."""
    here = registry_host(workspace.registry_url)
    if ref.registry is None or ref.registry == here:
        return None, ref.with_registry(here)
    user = os.environ.get("MODELFLEET_BASE_REGISTRY_USERNAME")
    password = os.environ.get("MODELFLEET_BASE_REGISTRY_PASSWORD")
    credentials = (
        RegistryCredentials(username=user, password=password)
        if user and password
        else _docker_config_credentials(ref.registry)
    )
    return RegistryClient(ref.registry, credentials), ref


async def build_module_image_async(
    workspace: Workspace,
    module: Module,
    *,
    base_image: str | None = None,
    platform: str | None = None,
    cache: ImageCache | None = None,
    push: bool = True,
) -> tuple[ModuleImage, BuiltImage]:
    """Build `module`'s image on `base_image` (default `bases/modelfleet-python:latest` in the
    workspace registry) and push it as `images/<name>:<version>`."""
    cache = cache or ImageCache()
    target_platform = platform or workstation_platform()
    other, ref = _base_client(workspace, parse_image_reference(base_image or f"{BASE_REPOSITORY}:latest"))
    dists = runtime_distributions()
    repository = IMAGE_REPOSITORY_PREFIX + module.name
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(workspace.registry_client())
        base_reader = await stack.enter_async_context(other) if other is not None else client
        base = await resolve_base(base_reader, ref, target_platform)
        await fetch_base_layers(base_reader, base, cache)
        python = find_python(base, cache)
        check_compatible(dists, target_platform, python.version)

        artifact = await client.get_manifest(module.repository, module.digest)
        manifest = parse_module_manifest(artifact.body, module.reference)
        blobs: dict[str, Path] = {}
        for layer in manifest.unique_layers():
            path = cache.blob_path(layer.digest)
            if not cache.has_blob(layer.digest, layer.size):
                await client.download_blob(module.repository, layer.digest, path, size=layer.size)
            blobs[layer.digest] = path
        built = await asyncio.to_thread(_assemble, module, base, manifest, blobs, dists, cache)
        digest = built.digest
        if push:
            digest = await push_image(
                client, repository, [str(module.version)], built, same_registry=other is None
            )
    host = registry_host(workspace.registry_url)
    image = ModuleImage(
        module=module.id,
        repository=repository,
        tag=str(module.version),
        digest=digest,
        reference=f"{host}/{repository}@{digest}",
        base=f"{base.ref}@{base.digest}" if not base.ref.digest else str(base.ref),
        layers=[
            {"digest": layer.digest, "size": layer.size, "created_by": layer.comment}
            for layer in built.layers
        ],
        size=built.size,
        notes=built.notes,
    )
    return image, built


def _assemble(
    module: Module,
    base: BaseImage,
    manifest: Any,
    blobs: dict[str, Path],
    dists: Any,
    cache: ImageCache,
) -> BuiltImage:
    """The CPU-bound part (gzip), off the event loop."""
    layers = [runtime_layer(dists, cache), modelfleet_layer(cache)]
    extra = requirements_layer(list(module.spec.requirements), dists.versions(), cache)
    if extra is not None:
        layers.append(extra)
    layers += model_layers(manifest, blobs, cache)
    if manifest.code_layers:
        layers.append(code_layer(blobs[manifest.code_layers[0].digest], cache))
    return module_image(base, module.spec, layers, has_requirements=extra is not None)


def build_module_image(workspace: Workspace, module: Module, **kwargs: Any) -> ModuleImage:
    return asyncio.run(build_module_image_async(workspace, module, **kwargs))[0]
