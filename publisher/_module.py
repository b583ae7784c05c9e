"""Module packages: models plus entry script and environment, as `<registry>/modules/<name>:<version>`.

Model layers are taken from the model's own repository by cross-repository mount, so packaging a
new entry script for an already registered model moves no model bytes.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modules import InvalidPackageError
from modules.artifact import ModuleManifest, module_manifest
from modules.model_config import MODEL_REPOSITORY_PREFIX
from modules.oci import RegistryClient, TransferStats
from modules.oci import media_types as mt
from modules.spec import (
    MODULE_REPOSITORY_PREFIX,
    ExecutionProvider,
    HealthProbe,
    ModelRef,
    ModuleSpec,
    Resources,
    Scoring,
)
from publisher._model import Model
from publisher._package import (
    build_code_layer,
    read_conda_pip_section,
    read_requirements,
    read_sample_input,
    resolve_entry_script,
)
from publisher._versions import (
    check_name,
    gather_limited,
    named_versions,
    next_version,
    parse_ref,
    read_config,
    resolve_version,
)
from publisher._workspace import Workspace


class Module:
    """One packaged module version."""

    def __init__(self, workspace: Workspace, name: str, version: int | None = None) -> None:
        loaded = asyncio.run(Module.get_async(workspace, name, version))
        self.__dict__.update(loaded.__dict__)

    @classmethod
    def _from_spec(
        cls, workspace: Workspace, spec: ModuleSpec, digest: str, stats: TransferStats | None = None
    ) -> Module:
        self = cls.__new__(cls)
        self.workspace = workspace
        self.spec = spec
        self.digest = digest
        self.stats = stats
        self.notes: list[str] = []  # what packaging left out or could not honour, one line each
        return self

    name = property(lambda self: self.spec.name)
    version = property(lambda self: self.spec.version)
    id = property(lambda self: f"{self.spec.name}:{self.spec.version}")

    @property
    def repository(self) -> str:
        return MODULE_REPOSITORY_PREFIX + self.spec.name

    @property
    def reference(self) -> str:
        """Where an agent pulls it from, pinned by digest."""
        return f"{self.repository}@{self.digest}"

    def serialize(self) -> dict[str, Any]:
        return {"id": self.id, "digest": self.digest, **self.spec.model_dump(mode="json")}

    def __repr__(self) -> str:
        return f"Module(name={self.name!r}, version={self.version}, digest={self.digest[:19]}...)"

    # -- package ------------------------------------------------------------------------------

    @classmethod
    def package(cls, workspace: Workspace, name: str, models: Sequence[str | Model], **kwargs: Any) -> Module:
        return asyncio.run(cls.package_async(workspace, name, models, **kwargs))

    @classmethod
    async def package_async(
        cls,
        workspace: Workspace,
        name: str,
        models: Sequence[str | Model],
        *,
        entry_script: str | Path | None = None,
        source_dir: str | Path | None = None,
        requirements: str | Path | None = None,
        conda_file: str | Path | None = None,
        sample_input: str | Path | None = None,
        providers: Sequence[ExecutionProvider] | None = None,
        description: str | None = None,
        version: int | None = None,
        resources: Resources | None = None,
        scoring: Scoring | None = None,
        health_probe: HealthProbe | None = None,
    ) -> Module:
        """`resources`, `scoring` and `health_probe` go into the spec, where agents enforce them
        (an Azure ML deployment configuration's cpu/memory, timeout and probe settings land here)."""
        check_name(name, "module")
        if not models:
            raise InvalidPackageError("a module needs at least one model (-m NAME[:VERSION])")
        if requirements is not None and conda_file is not None:
            raise InvalidPackageError("give either a requirements file or a conda file, not both")
        entry = resolve_entry_script(entry_script, source_dir)
        notes: list[str] = []
        pip = (
            read_requirements(requirements, notes)
            if requirements is not None
            else read_conda_pip_section(conda_file, notes)
            if conda_file is not None
            else []
        )
        sample = read_sample_input(sample_input) if sample_input is not None else None
        code_layer = build_code_layer(*entry, whole_folder=source_dir is not None) if entry else None
        repository = MODULE_REPOSITORY_PREFIX + name
        async with workspace.registry_client() as client:
            refs = [await _model_ref(workspace, client, m) for m in models]
            names = [r.name for r in refs]
            if len(set(names)) != len(names):
                raise InvalidPackageError(f"a model appears twice in the module: {', '.join(names)}")
            onnx_files = [f for r in refs for f in r.files if f.path.lower().endswith(".onnx")]
            if entry is None and len(onnx_files) != 1:
                raise InvalidPackageError(
                    "a zero-code module serves exactly one .onnx file; its models have "
                    f"{len(onnx_files)}: add --entry-script"
                )
            spec = ModuleSpec(
                name=name,
                version=await next_version(client, repository, version),
                description=description,
                entry_script=entry[1].relative_to(entry[0]).as_posix() if entry else None,
                requirements=pip,
                models=refs,
                sample_input=sample,
                execution_providers=list(providers or ["cpu"]),
                resources=resources or Resources(),
                scoring=scoring or Scoring(),
                health_probe=health_probe or HealthProbe(),
                created=datetime.now(UTC).replace(microsecond=0),
            )
            module = await _push(workspace, client, spec, code_layer)
        module.notes = notes
        return module

    @classmethod
    def repackage(
        cls, workspace: Workspace, base: Module, models: Sequence[str | Model], **changes: Any
    ) -> Module:
        return asyncio.run(cls.repackage_async(workspace, base, models, **changes))

    @classmethod
    async def repackage_async(
        cls, workspace: Workspace, base: Module, models: Sequence[str | Model], **changes: Any
    ) -> Module:
        """The next version of `base` serving `models`, with everything else as it was: the same
        code layer (so the same entry script, byte for byte, even where the files on this machine
        changed or are gone), requirements, providers, resources and probe. This is how an
        attached service's `update(models=...)` keeps its inference configuration, as Azure ML's
        does. `changes` are other `ModuleSpec` fields to set (resources, scoring, ...)."""
        async with workspace.registry_client() as client:
            manifest = ModuleManifest.model_validate(
                (await client.get_manifest(base.repository, base.digest)).json()
            )
            code_layer = None
            if manifest.code_layers:
                layer = manifest.code_layers[0]
                code_layer = await client.get_blob(base.repository, layer.digest, max_bytes=layer.size)
            refs = [await _model_ref(workspace, client, m) for m in models]
            names = [r.name for r in refs]
            if len(set(names)) != len(names):
                raise InvalidPackageError(f"a model appears twice in the module: {', '.join(names)}")
            spec = base.spec.model_copy(
                update={
                    **changes,
                    "version": await next_version(client, base.repository, None),
                    "models": refs,
                    "created": datetime.now(UTC).replace(microsecond=0),
                }
            )
            spec = ModuleSpec.model_validate(spec.model_dump())
            return await _push(workspace, client, spec, code_layer)

    # -- read ---------------------------------------------------------------------------------

    @classmethod
    async def from_registry(
        cls, workspace: Workspace, client: RegistryClient, name: str, version: int
    ) -> Module:
        """One version read with an already open client, so callers reading many share it."""
        repository = MODULE_REPOSITORY_PREFIX + name
        raw, digest = await read_config(client, repository, version, "module", mt.MODULE_CONFIG)
        return cls._from_spec(workspace, ModuleSpec.model_validate_json(raw), digest)

    @classmethod
    async def get_async(cls, workspace: Workspace, name: str, version: int | None = None) -> Module:
        check_name(name, "module")
        async with workspace.registry_client() as client:
            number = await resolve_version(client, MODULE_REPOSITORY_PREFIX + name, version, "module")
            return await cls.from_registry(workspace, client, name, number)

    @classmethod
    def list(cls, workspace: Workspace, name: str | None = None, latest: bool = False) -> list[Module]:
        return asyncio.run(cls.list_async(workspace, name, latest))

    @classmethod
    async def list_async(
        cls, workspace: Workspace, name: str | None = None, latest: bool = False
    ) -> list[Module]:
        async with workspace.registry_client() as client:
            wanted = await named_versions(client, MODULE_REPOSITORY_PREFIX, name, "module", latest)
            return await gather_limited([cls.from_registry(workspace, client, n, v) for n, v in wanted])


async def _push(
    workspace: Workspace, client: RegistryClient, spec: ModuleSpec, code_layer: bytes | None
) -> Module:
    repository = MODULE_REPOSITORY_PREFIX + spec.name
    for ref in spec.models:
        for f in ref.files:
            await _ensure_model_blob(client, repository, ref.name, f.digest, f.size)
    if code_layer is not None:
        await client.push_blob(repository, code_layer)
    config_blob = spec.model_dump_json().encode()
    await client.push_blob(repository, config_blob)
    body = module_manifest(spec, config_blob, code_layer)
    digest = await client.put_manifest(repository, str(spec.version), body, mt.OCI_MANIFEST)
    return Module._from_spec(workspace, spec, digest, client.stats)


async def _model_ref(workspace: Workspace, client: RegistryClient, model: str | Model) -> ModelRef:
    if isinstance(model, Model):
        return ModelRef(name=model.name, version=model.version, digest=model.digest, files=model.files)
    name, version = parse_ref(model, "model")
    number = await resolve_version(client, MODEL_REPOSITORY_PREFIX + name, version, "model")
    loaded = await Model.from_registry(workspace, client, name, number)
    return ModelRef(name=name, version=number, digest=loaded.digest, files=loaded.files)


async def _ensure_model_blob(
    client: RegistryClient, repository: str, model: str, digest: str, size: int
) -> None:
    """Mount the model's layer; only a registry without mount support makes us copy bytes."""
    source = MODEL_REPOSITORY_PREFIX + model
    if await client.push_blob(repository, None, digest, mount_from=[source]) != "needs-data":
        return
    with tempfile.TemporaryDirectory(prefix="modelfleet-copy-") as tmp:
        path = await client.download_blob(source, digest, Path(tmp) / "blob", size=size)
        await client.push_blob(repository, path, digest)
