"""Reading a base image: the manifest for one platform, its config, and where its Python is.

A base is any image in any registry. What the module image needs from it is a CPython of the
same minor version as the packages in the runtime layer, found by reading the base's layers
(whiteouts applied) rather than by running it: the build needs no container engine.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from modules.image._cache import ImageCache, cache_key
from modules.image._errors import ImageBuildError
from modules.image._layout import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    LAYER_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
)
from modules.image._reference import ImageReference
from modules.oci import RegistryClient

_PYTHON_BINARIES = ("usr/local/bin/python3", "usr/bin/python3")
_STDLIB = re.compile(r"^(usr/(?:local/)?lib)/python(3\.\d+)/os\.py$")
_BINARY = re.compile(r"^(usr/(?:local/)?bin)/python3(?:\.\d+)?$")
SCAN_VERSION = 1


@dataclass(frozen=True)
class PythonInfo:
    """The interpreter a base image provides: `/usr/bin/python3`, `3.11`."""

    executable: str
    version: str


@dataclass
class BaseImage:
    """A resolved base: its manifest digest, config, layers (OCI media types) and Python."""

    ref: ImageReference
    digest: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    python: PythonInfo | None = None
    local_blobs: dict[str, Path] = field(default_factory=dict)

    @property
    def platform(self) -> str:
        out = f"{self.config.get('os', '?')}/{self.config.get('architecture', '?')}"
        return out + (f"/{self.config['variant']}" if self.config.get("variant") else "")


async def resolve_base(client: RegistryClient, ref: ImageReference, platform: str) -> BaseImage:
    """The base's manifest for `platform` (an index or list is narrowed to it) and its config."""
    manifest = await client.get_manifest(ref.repository, ref.reference)
    data = manifest.json()
    digest = manifest.digest
    media_type = manifest.media_type or data.get("mediaType", "")
    if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in data:
        chosen = _pick_platform(data.get("manifests") or [], platform, str(ref))
        manifest = await client.get_manifest(ref.repository, chosen)
        data, digest = manifest.json(), manifest.digest
    if data.get("mediaType", OCI_MANIFEST) not in (OCI_MANIFEST, DOCKER_MANIFEST) or "config" not in data:
        raise ImageBuildError(f"base image {ref} is not a container image (manifest {data.get('mediaType')})")
    config_desc = data["config"]
    if config_desc.get("mediaType") not in (OCI_CONFIG, DOCKER_CONFIG):
        raise ImageBuildError(
            f"base image {ref} is not a container image (config {config_desc.get('mediaType')})"
        )
    config = json.loads(await client.get_blob(ref.repository, config_desc["digest"]))
    layers = []
    for layer in data.get("layers") or []:
        kind = LAYER_TYPES.get(layer.get("mediaType", ""))
        if kind is None:
            raise ImageBuildError(
                f"base image {ref} has a layer of type {layer.get('mediaType')!r}; "
                "only gzip or plain tar layers are supported"
            )
        layers.append({"mediaType": kind, "digest": layer["digest"], "size": layer["size"]})
    base = BaseImage(ref=ref, digest=digest, config=config, layers=layers)
    wanted_os, _, wanted_arch = platform.partition("/")
    if (config.get("os"), config.get("architecture")) != (wanted_os, wanted_arch.split("/")[0]):
        raise ImageBuildError(f"base image {ref} is for {base.platform}, not {platform}")
    return base


def _pick_platform(entries: list[dict[str, Any]], platform: str, where: str) -> str:
    wanted_os, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    for entry in entries:
        p = entry.get("platform") or {}
        if (
            p.get("os") == wanted_os
            and p.get("architecture") == arch
            and (not variant or p.get("variant") == variant)
        ):
            return str(entry["digest"])
    offered = sorted(
        "/".join(x for x in ((e.get("platform") or {}).get(k, "") for k in ("os", "architecture")) if x)
        for e in entries
    )
    raise ImageBuildError(
        f"base image {where} has no {platform} image (it has: {', '.join(offered) or 'none'})"
    )


async def fetch_base_layers(client: RegistryClient, base: BaseImage, cache: ImageCache) -> None:
    """Every base layer into the local blob store (verified), for the Python scan and for a copy
    to another registry; blobs already there are not fetched again."""
    for layer in base.layers:
        path = cache.blob_path(layer["digest"])
        if not cache.has_blob(layer["digest"], layer["size"]):
            await client.download_blob(base.ref.repository, layer["digest"], path, size=layer["size"])
        base.local_blobs[layer["digest"]] = path


def find_python(base: BaseImage, cache: ImageCache) -> PythonInfo:
    """The base's python3, from its layers (cached by their digests); a clear error without one."""
    key = cache_key("python-scan", SCAN_VERSION, [layer["digest"] for layer in base.layers])
    found = cache.get_json("scans", key)
    if found is None:
        found = _scan([base.local_blobs[layer["digest"]] for layer in base.layers])
        cache.put_json("scans", key, found)
    binaries: dict[str, str | None] = found["binaries"]
    stdlibs: dict[str, list[str]] = found["stdlibs"]
    for binary in _PYTHON_BINARIES:
        if binary not in binaries:
            continue
        prefix = binary.rsplit("/", 1)[0].replace("/bin", "/lib")
        target = binaries[binary] or ""
        named = re.search(r"python(3\.\d+)$", target)
        versions = stdlibs.get(prefix, [])
        version = named.group(1) if named else (versions[0] if len(versions) == 1 else None)
        if version is None or version not in versions:
            raise ImageBuildError(
                f"base image {base.ref} has /{binary} but no Python standard library beside it "
                f"(/{prefix}/python{version or '3.X'}/os.py is missing): it cannot run the scoring host"
            )
        base.python = PythonInfo("/" + binary, version)
        return base.python
    raise ImageBuildError(
        f"base image {base.ref} has no python3 (looked for /{' and /'.join(_PYTHON_BINARIES)}): "
        "the scoring host needs CPython there; build a base with `modelfleet image base`"
    )


def _scan(blobs: list[Path]) -> dict[str, Any]:
    """Apply the layers' entries (and whiteouts) for the paths that matter: python3 binaries and
    standard libraries. Symlinks record their target's name (`python3 -> python3.11`)."""
    binaries: dict[str, str | None] = {}
    stdlibs: dict[str, dict[str, str]] = {}  # prefix -> {path: version}
    for blob in blobs:
        try:
            with tarfile.open(blob, "r:*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./").rstrip("/")
                    path = PurePosixPath(name)
                    if path.name.startswith(".wh."):
                        gone = (
                            str(path.parent / path.name[4:])
                            if path.name != ".wh..wh..opq"
                            else str(path.parent)
                        )
                        opaque = path.name == ".wh..wh..opq"
                        for table in (binaries, *stdlibs.values()):
                            for key in [
                                k for k in table if k.startswith(gone + "/") or (k == gone and not opaque)
                            ]:
                                del table[key]
                        continue
                    if _BINARY.match(name) and (member.isfile() or member.issym() or member.islnk()):
                        binaries[name] = member.linkname if member.issym() else name
                    elif (m := _STDLIB.match(name)) and member.isfile():
                        stdlibs.setdefault(m.group(1), {})[name] = m.group(2)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ImageBuildError(f"cannot read a base image layer ({blob.name}): {exc}") from exc
    # Resolve `python3 -> python3.11` one step within the same folder.
    resolved: dict[str, str | None] = {}
    for name, target in binaries.items():
        if name.endswith("/python3") and target and target != name:
            sibling = str(PurePosixPath(name).parent / PurePosixPath(target).name)
            resolved[name] = sibling if sibling in binaries else target
        else:
            resolved[name] = target
    flat = {prefix: sorted(set(paths.values())) for prefix, paths in stdlibs.items() if paths}
    return {"binaries": resolved, "stdlibs": flat}
