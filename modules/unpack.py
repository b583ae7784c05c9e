"""A module artifact laid out on disk the way the scoring host expects it.

`<dest>/models/<model>/<version>/<path>` for model files (Azure ML v1's layout:
`azureml_model_dir` is what `AZUREML_MODEL_DIR` points at) and `<dest>/code/` for the code
layer. Every blob is digest-verified on the way; what the layers
mean and how the code archive is safely unpacked is `modules.artifact`'s, shared with the
agent's artifact store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from modules.artifact import (
    CODE_DIR,
    CODE_LAYER_TITLE,
    MODELS_DIR,
    extract_code,
    model_dir_for,
    parse_module_manifest,
    parse_module_spec,
)
from modules.oci import RegistryClient, sha256_file
from modules.spec import ModuleSpec


@dataclass(frozen=True)
class UnpackedModule:
    spec: ModuleSpec
    digest: str
    root: Path

    @property
    def model_dir(self) -> Path:
        """The root of every model's files: `<name>/<version>/<path>` inside."""
        return self.root / MODELS_DIR

    @property
    def azureml_model_dir(self) -> Path:
        """Where `AZUREML_MODEL_DIR` points: the one model's version folder, else the root."""
        return model_dir_for(self.model_dir, self.spec.models)

    @property
    def code_dir(self) -> Path:
        return self.root / CODE_DIR

    @property
    def entry_script(self) -> Path | None:
        return None if self.spec.entry_script is None else self.code_dir / self.spec.entry_script


async def pull_module(client: RegistryClient, repository: str, reference: str, dest: Path) -> UnpackedModule:
    fetched = await client.get_manifest(repository, reference)
    where = f"{repository}:{reference}"
    manifest = parse_module_manifest(fetched.body, where)
    spec = parse_module_spec(await client.get_blob(repository, manifest.config.digest), where)
    targets = manifest.model_targets(dest)  # refuses unsafe titles before any download
    dest.mkdir(parents=True, exist_ok=True)
    for layer, target in targets:
        if target.exists() and (await asyncio.to_thread(sha256_file, target))[0] == layer.digest:
            continue
        await client.download_blob(repository, layer.digest, target, size=layer.size)
    for layer in manifest.code_layers:
        archive = await client.download_blob(
            repository, layer.digest, dest / CODE_LAYER_TITLE, size=layer.size
        )
        await asyncio.to_thread(extract_code, archive, dest / CODE_DIR)
    return UnpackedModule(spec=spec, digest=fetched.digest, root=dest)
