"""The scoring host's own Python packages in an image: taken from this machine's installed ones.

The host needs modelfleet's `modules` package, ONNX Runtime, numpy and the few libraries the host
imports (aiohttp, pydantic, orjson) with their dependencies. Rather than downloading them again
(a network round trip, and possibly other versions than the ones tested here), the image gets
the exact files of the distributions installed on the workstation, listed by their own RECORD.
That pins them to this workstation's CPython minor version and platform, which the builder
checks against the base image (`check_compatible`).

Two layers: third-party distributions (change rarely) and modelfleet's `modules` package (changes
with every modelfleet release), so upgrading modelfleet moves about a megabyte.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from dataclasses import dataclass
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modules.image._cache import ImageCache, cache_key
from modules.image._errors import ImageBuildError
from modules.image._layer import Layer, LayerWriter
from modules.image._layout import RUNTIME_SITE

# What `python -m modules.image.entrypoint` imports, besides the standard library.
HOST_ROOTS = ("aiohttp", "pydantic", "numpy", "orjson", "packaging")
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime")
LAYOUT_VERSION = 1  # bump when the layer's shape changes, so cached layers are rebuilt
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


def workstation_platform() -> str:
    """This machine as an image platform, e.g. `linux/amd64`."""
    return f"{sys.platform.rstrip('0123456789')}/{_ARCH.get(platform.machine(), platform.machine())}"


def workstation_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class RuntimeDistributions:
    """The installed distributions that go into the runtime layer, by canonical name."""

    distributions: dict[str, Distribution]

    def versions(self) -> dict[str, str]:
        return {name: d.version for name, d in sorted(self.distributions.items())}


def runtime_distributions() -> RuntimeDistributions:
    """The host's packages and everything they require (markers evaluated here, no extras)."""
    roots = list(HOST_ROOTS)
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            distribution(name)
        except PackageNotFoundError:
            continue
        roots.append(name)
        break
    else:
        raise ImageBuildError(
            "onnxruntime is not installed here: the image's scoring host is built from this machine's "
            "packages (pip install 'modelfleet[cpu]' or 'modelfleet[gpu]')"
        )
    found: dict[str, Distribution] = {}
    stack = roots
    while stack:
        name = canonicalize_name(stack.pop())
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise ImageBuildError(f"{name} is required by the scoring host but not installed here") from None
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return RuntimeDistributions(found)


def _wheel_tags(dist: Distribution) -> list[str]:
    text = dist.read_text("WHEEL") or ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def check_compatible(dists: RuntimeDistributions, target_platform: str, python: str) -> None:
    """Refuse a base image or platform that this machine's packages cannot run on."""
    here = workstation_platform()
    if target_platform != here:
        raise ImageBuildError(
            f"cannot build a {target_platform} image on this {here} machine: the image's scoring host "
            f"is made of the packages installed here; build on a {target_platform} workstation"
        )
    if python != workstation_python():
        compiled = sorted(
            name
            for name, dist in dists.distributions.items()
            if any(not tag.startswith(("py", "cp3-none")) and "abi3" not in tag for tag in _wheel_tags(dist))
        )
        examples = ", ".join(compiled[:4]) or "..."
        raise ImageBuildError(
            f"the base image has Python {python}, but the image's packages ({examples}) "
            f"are this workstation's CPython {workstation_python()} builds: use a base image with Python "
            f"{workstation_python()} (e.g. `modelfleet image base`)"
        )


def _distribution_files(dist: Distribution) -> list[tuple[str, Path]]:
    """(path inside site-packages, file here) for each installed file, bytecode and scripts left out."""
    out = []
    for item in dist.files or []:
        rel = PurePosixPath(item.as_posix())
        if ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue  # console scripts (their shebang names this machine's venv) and bytecode
        source = Path(dist.locate_file(item))
        if source.is_file():
            out.append((rel.as_posix(), source))
    return out


def runtime_layer(dists: RuntimeDistributions, cache: ImageCache) -> Layer:
    """The third-party distributions under `RUNTIME_SITE`, cached by names, versions and RECORDs."""
    parts = []
    for name, dist in sorted(dists.distributions.items()):
        record = dist.read_text("RECORD") or ""
        parts.append([name, dist.version, hashlib.sha256(record.encode()).hexdigest()])
    key = cache_key("runtime", LAYOUT_VERSION, str(RUNTIME_SITE), parts)
    with cache.lock(key):
        cached = cache.get_layer(key)
        if cached is not None:
            return cached
        writer = LayerWriter()
        for _, dist in sorted(dists.distributions.items()):
            for rel, source in _distribution_files(dist):
                writer.add_file(RUNTIME_SITE / rel, source)
        names = ", ".join(f"{n}=={v}" for n, v in dists.versions().items())
        layer = writer.write(cache.staging("runtime"), f"modelfleet runtime: {names}")
        return cache.put_layer(key, layer)


def _modelfleet_version() -> str:
    try:
        return distribution("modelfleet").version
    except PackageNotFoundError:
        return "0+unknown"


def modelfleet_layer(cache: ImageCache) -> Layer:
    """modelfleet's `modules` package (the scoring host and the image entrypoint) with a minimal
    dist-info, so `importlib.metadata.version("modelfleet")` answers inside the container."""
    import modules

    root = Path(modules.__file__).resolve().parent
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(root).parts and p.suffix != ".pyc"
    )
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    version = _modelfleet_version()
    key = cache_key("modelfleet", LAYOUT_VERSION, str(RUNTIME_SITE), version, digest.hexdigest())
    with cache.lock(key):
        cached = cache.get_layer(key)
        if cached is not None:
            return cached
        writer = LayerWriter()
        for p in files:
            writer.add_file(RUNTIME_SITE / "modules" / p.relative_to(root).as_posix(), p, executable=False)
        info = RUNTIME_SITE / f"modelfleet-{version}.dist-info"
        writer.add_bytes(
            info / "METADATA", f"Metadata-Version: 2.1\nName: modelfleet\nVersion: {version}\n".encode()
        )
        writer.add_bytes(info / "top_level.txt", b"modules\n")
        layer = writer.write(cache.staging("modelfleet"), f"modelfleet {version}: the scoring host")
        return cache.put_layer(key, layer)
