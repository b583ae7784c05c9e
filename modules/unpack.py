"""A module artifact laid out on disk the way the scoring host expects it.

`<dest>/models/<model>/<path>` for model files (what `AZUREML_MODEL_DIR` points at) and
`<dest>/code/` for the code layer. Every blob is digest-verified on the way; the code archive is
extracted with tarfile's `data` filter, so no entry can escape the folder or be a device or link
out of it.
"""

from __future__ import annotations

import asyncio
import tarfile
from dataclasses import dataclass
from pathlib import Path

from modules._errors import InvalidPackageError
from modules.model_config import safe_relative_path
from modules.oci import RegistryClient, sha256_file
from modules.oci import media_types as mt
from modules.spec import ModuleSpec


@dataclass(frozen=True)
class UnpackedModule:
    spec: ModuleSpec
    digest: str
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def code_dir(self) -> Path:
        return self.root / "code"

    @property
    def entry_script(self) -> Path | None:
        return None if self.spec.entry_script is None else self.code_dir / self.spec.entry_script


async def pull_module(client: RegistryClient, repository: str, reference: str, dest: Path) -> UnpackedModule:
    manifest = await client.get_manifest(repository, reference)
    body = manifest.json()
    if body.get("config", {}).get("mediaType") != mt.MODULE_CONFIG:
        raise InvalidPackageError(f"{repository}:{reference} is not a modelfleet module artifact")
    spec = ModuleSpec.model_validate_json(await client.get_blob(repository, body["config"]["digest"]))
    dest.mkdir(parents=True, exist_ok=True)
    for layer in body.get("layers", []):
        title = safe_relative_path((layer.get("annotations") or {}).get(mt.TITLE, ""))
        digest, size = layer["digest"], layer["size"]
        if layer["mediaType"] == mt.MODEL_FILE:
            target = dest / "models" / title
            if target.exists() and (await asyncio.to_thread(sha256_file, target))[0] == digest:
                continue
            await client.download_blob(repository, digest, target, size=size)
        elif layer["mediaType"] == mt.MODULE_CODE:
            archive = await client.download_blob(repository, digest, dest / "code.tar.gz", size=size)
            await asyncio.to_thread(_extract, archive, dest / "code")
    return UnpackedModule(spec=spec, digest=manifest.digest, root=dest)


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise InvalidPackageError(f"cannot unpack the module's code layer: {exc}") from exc
