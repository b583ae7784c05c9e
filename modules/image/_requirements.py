"""A module's own Python requirements as an image layer: wheels made on the workstation, unpacked.

Nothing is installed on the device: `pip wheel` resolves and fetches (or builds) wheels here,
pinned against the versions already in the runtime layer so the two agree, and the builder
unpacks them into `REQUIREMENTS_SITE` itself (a wheel is a zip with a fixed layout). The image
digest therefore pins every byte the module runs. Requirements the runtime layer already
satisfies (`numpy`, `onnxruntime`, ...) add nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from modules.image._cache import ImageCache
from modules.image._errors import ImageBuildError
from modules.image._layer import Layer, LayerWriter
from modules.image._layout import REQUIREMENTS_SITE


def unmet_requirements(lines: list[str], runtime: dict[str, str]) -> list[str]:
    """The lines the runtime layer does not already satisfy (a name it lacks, a version outside
    the line's specifier, or extras, which may pull in more)."""
    unmet = []
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = runtime.get(canonicalize_name(req.name))
        if version is None or req.extras or not req.specifier.contains(version, prereleases=True):
            unmet.append(line)
    return unmet


def requirements_layer(lines: list[str], runtime: dict[str, str], cache: ImageCache) -> Layer | None:
    """None when the runtime layer covers every line; otherwise a layer of the extra wheels.

    pip reads its usual configuration (`PIP_INDEX_URL`, `PIP_FIND_LINKS`, pip.conf), so a private
    index or a folder of wheels works as it does for `pip install`.
    """
    unmet = unmet_requirements(lines, runtime)
    if not unmet:
        return None
    with tempfile.TemporaryDirectory(prefix="modelfleet-wheels-") as tmp:
        folder = Path(tmp)
        (folder / "requirements.txt").write_text("\n".join(unmet) + "\n")
        (folder / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(runtime.items())))
        wheels = folder / "wheels"
        cmd = [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
            "--wheel-dir", str(wheels), "-r", str(folder / "requirements.txt"),
            "-c", str(folder / "constraints.txt"),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise ImageBuildError(
                f"cannot make wheels for the module's requirements ({', '.join(unmet)}): "
                + (detail[-1] if detail else f"pip exited with {proc.returncode}")
            )
        writer = LayerWriter()
        added = []
        for wheel in sorted(wheels.glob("*.whl")):
            name, version, _, _ = parse_wheel_filename(wheel.name)
            if name in runtime:
                continue  # the same pinned version is in the runtime layer already
            _unpack_wheel(wheel, writer)
            added.append(f"{name}=={version}")
        if not added:
            return None
        layer = writer.write(cache.staging("requirements"), "requirements: " + ", ".join(added))
        return cache.adopt(layer)


def _unpack_wheel(wheel: Path, writer: LayerWriter) -> None:
    """What `pip install --target` does with a wheel, minus scripts: purelib and platlib into the
    site folder, `.data/data` under the prefix, headers and scripts left out (nothing runs them)."""
    with zipfile.ZipFile(wheel) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            path = PurePosixPath(info.filename)
            if ".." in path.parts or path.is_absolute():
                raise ImageBuildError(f"wheel {wheel.name} holds an unsafe path {info.filename!r}")
            executable = bool((info.external_attr >> 16) & 0o100)
            top = path.parts[0]
            if top.endswith(".data") and len(path.parts) > 2:
                kind, rest = path.parts[1], PurePosixPath(*path.parts[2:])
                if kind in ("purelib", "platlib"):
                    target = REQUIREMENTS_SITE / rest
                elif kind == "data":
                    target = REQUIREMENTS_SITE.parent / "data" / rest
                else:
                    continue
            else:
                target = REQUIREMENTS_SITE / path
            writer.add_bytes(target, archive.read(info), executable=executable)
