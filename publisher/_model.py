"""Registered models: OCI artifacts in `<registry>/models/<name>:<version>`.

The Python API mirrors Azure ML v1's `Model` (register, list, download, delete) so existing
publishing scripts port with few changes. Each method has an `*_async` twin for asyncio callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modules import InvalidModelError, ModelfleetError, NotFoundError
from modules.artifact import model_manifest
from modules.model_config import MODEL_REPOSITORY_PREFIX, ModelConfig, ModelFile
from modules.oci import RegistryClient, sha256_file
from modules.oci import media_types as mt
from modules.onnx_signature import inspect_onnx
from publisher._versions import (
    check_name,
    gather_limited,
    named_versions,
    next_version,
    read_config,
    resolve_version,
)
from publisher._workspace import Workspace

_SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints"}


def _collect_files(model_path: Path) -> list[tuple[str, Path]]:
    """The files to register, each with its path inside the model.

    As Azure ML registers them: a file by its name, a folder's files under the folder's own
    name (`-p ./model` holds `model/sklearn_regression_model.pkl`), which is why scripts written
    for it join `AZUREML_MODEL_DIR` with `"model/<file>"` for a folder and `"<file>"` for a file.
    """
    if not model_path.exists():
        raise InvalidModelError(f"model path {model_path} does not exist")
    if model_path.is_file():
        return [(model_path.name, model_path)]
    if not model_path.is_dir():
        raise InvalidModelError(f"model path {model_path} is neither a file nor a folder")
    folder = model_path.resolve().name or "model"  # `-p .` is the current folder, by its name
    files = [
        (f"{folder}/{p.relative_to(model_path).as_posix()}", p)
        for p in sorted(model_path.rglob("*"))
        if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(model_path).parts)
    ]
    if not files:
        raise InvalidModelError(f"model folder {model_path} contains no files")
    return files


def parse_tag_filters(tags: Iterable[Any] | Mapping[str, str] | None) -> list[tuple[str, str | None]]:
    """Azure ML style filters: `["key"]`, `[["key", "value"]]`, `{"key": "value"}` or `"key=value"`."""
    if not tags:
        return []
    if isinstance(tags, Mapping):
        return [(str(k), str(v)) for k, v in tags.items()]
    filters: list[tuple[str, str | None]] = []
    for item in tags:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            filters.append((key, value if sep else None))
        else:
            key, value = list(item) + [None] * (2 - len(item))
            filters.append((str(key), None if value is None else str(value)))
    return filters


def _matches(tags: Mapping[str, str], filters: list[tuple[str, str | None]]) -> bool:
    return all(k in tags and (v is None or tags[k] == v) for k, v in filters)


class _Framework:
    """Azure ML's `Model.Framework` names; a registered framework is stored lower-cased."""

    CUSTOM = "Custom"
    MULTI = "Multi"
    ONNX = "Onnx"
    PYTORCH = "PyTorch"
    SCIKITLEARN = "ScikitLearn"
    TENSORFLOW = "TensorFlow"


class Model:
    """One registered model version."""

    Framework = _Framework

    def __init__(
        self,
        workspace: Workspace,
        name: str | None = None,
        id: str | None = None,
        *,
        version: int | None = None,
    ) -> None:
        """`Model(ws, "iris")`, `Model(ws, "iris", version=2)` or `Model(ws, id="iris:2")`, as in
        Azure ML, whose third positional parameter is `id`: version is keyword-only so that an old
        `Model(ws, "iris", 2)` fails loudly instead of meaning something else."""
        if id is not None and not isinstance(id, str):
            raise TypeError("Model()'s third argument is Azure ML's id, 'NAME:VERSION'; pass version=N")
        if id is not None:
            id_name, sep, id_version = id.partition(":")
            if name not in (None, id_name) or not sep or not id_version.isdigit():
                raise ModelfleetError(f"model id {id!r} is not NAME:VERSION (of model {name or id_name!r})")
            if version not in (None, int(id_version)):
                raise ModelfleetError(f"model id {id!r} and version={version} disagree")
            name, version = id_name, int(id_version)
        if name is None:
            raise ModelfleetError("Model() needs a name or an id")
        loaded = asyncio.run(Model.get_async(workspace, name, version))
        self.__dict__.update(loaded.__dict__)

    @classmethod
    def _from_config(cls, workspace: Workspace, config: ModelConfig, digest: str) -> Model:
        self = cls.__new__(cls)
        self.workspace = workspace
        self.config = config
        self.digest = digest
        return self

    # -- attributes, named like Azure ML's -------------------------------------------------

    name = property(lambda self: self.config.name)
    version = property(lambda self: self.config.version)
    id = property(lambda self: f"{self.config.name}:{self.config.version}")
    framework = property(lambda self: self.config.framework)
    description = property(lambda self: self.config.description)
    tags = property(lambda self: dict(self.config.tags))
    properties = property(lambda self: dict(self.config.properties))
    created_time = property(lambda self: self.config.created)
    files = property(lambda self: list(self.config.files))

    @property
    def repository(self) -> str:
        return MODEL_REPOSITORY_PREFIX + self.config.name

    def serialize(self) -> dict[str, Any]:
        return {"id": self.id, "digest": self.digest, **self.config.model_dump(mode="json")}

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version}, digest={self.digest[:19]}...)"

    # -- register ---------------------------------------------------------------------------

    @classmethod
    def register(cls, workspace: Workspace, model_path: str | Path, model_name: str, **kwargs: Any) -> Model:
        return asyncio.run(cls.register_async(workspace, model_path, model_name, **kwargs))

    @classmethod
    async def register_async(
        cls,
        workspace: Workspace,
        model_path: str | Path,
        model_name: str,
        *,
        tags: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        description: str | None = None,
        framework: str | None = None,
        version: int | None = None,
        model_framework: str | None = None,
        model_framework_version: str | None = None,
    ) -> Model:
        """`model_framework`/`model_framework_version` are Azure ML's spelling: the framework is
        stored lower-cased, its version as the `model_framework_version` property."""
        check_name(model_name, "model")
        if framework is not None and model_framework is not None:
            raise ModelfleetError("give framework or model_framework, not both")
        framework = framework or (model_framework.lower() if model_framework else None)
        properties = dict(properties or {})
        if model_framework_version is not None:
            properties["model_framework_version"] = str(model_framework_version)
        path = Path(model_path).expanduser()
        sources = _collect_files(path)
        files: list[ModelFile] = []
        for rel, file in sources:
            digest, size = await asyncio.to_thread(sha256_file, file)
            signature = None
            if file.suffix.lower() == ".onnx":
                signature = await asyncio.to_thread(inspect_onnx, file)
            files.append(ModelFile(path=rel, digest=digest, size=size, onnx=signature))
        has_onnx = any(f.onnx for f in files)
        repository = MODEL_REPOSITORY_PREFIX + model_name
        async with workspace.registry_client() as client:
            number = await next_version(client, repository, version)
            config = ModelConfig(
                name=model_name,
                version=number,
                framework=framework or ("onnx" if has_onnx else "custom"),
                description=description,
                tags=dict(tags or {}),
                properties=dict(properties or {}),
                created=datetime.now(UTC).replace(microsecond=0),
                files=files,
            )
            for (_, file), entry in zip(sources, files, strict=True):
                await client.push_blob(repository, file, entry.digest)
            config_blob = config.model_dump_json().encode()
            await client.push_blob(repository, config_blob)
            manifest = model_manifest(config, config_blob)
            digest = await client.put_manifest(repository, str(number), manifest, mt.OCI_MANIFEST)
        return cls._from_config(workspace, config, digest)

    # -- read -------------------------------------------------------------------------------

    @classmethod
    async def from_registry(
        cls, workspace: Workspace, client: RegistryClient, name: str, version: int
    ) -> Model:
        """One version read with an already open client, so callers reading many share it."""
        repository = MODEL_REPOSITORY_PREFIX + name
        raw, digest = await read_config(client, repository, version, "model", mt.MODEL_CONFIG)
        return cls._from_config(workspace, ModelConfig.model_validate_json(raw), digest)

    @classmethod
    async def get_async(cls, workspace: Workspace, name: str, version: int | None = None) -> Model:
        check_name(name, "model")
        async with workspace.registry_client() as client:
            number = await resolve_version(client, MODEL_REPOSITORY_PREFIX + name, version, "model")
            return await cls.from_registry(workspace, client, name, number)

    @classmethod
    def list(
        cls,
        workspace: Workspace,
        name: str | None = None,
        tags: Iterable[Any] | Mapping[str, str] | None = None,
        latest: bool = False,
    ) -> list[Model]:
        return asyncio.run(cls.list_async(workspace, name=name, tags=tags, latest=latest))

    @classmethod
    async def list_async(
        cls,
        workspace: Workspace,
        name: str | None = None,
        tags: Iterable[Any] | Mapping[str, str] | None = None,
        latest: bool = False,
    ) -> list[Model]:
        filters = parse_tag_filters(tags)
        async with workspace.registry_client() as client:
            wanted = await named_versions(client, MODEL_REPOSITORY_PREFIX, name, "model", latest)
            models = await gather_limited([cls.from_registry(workspace, client, n, v) for n, v in wanted])
        return [m for m in models if _matches(m.config.tags, filters)]

    # -- download / delete --------------------------------------------------------------------

    def download(self, target_dir: str | Path = ".", exist_ok: bool = False) -> str:
        return asyncio.run(self.download_async(target_dir, exist_ok=exist_ok))

    async def download_async(self, target_dir: str | Path = ".", exist_ok: bool = False) -> str:
        """Write every file under `target_dir`, verified; a file already there with other content
        is an error unless `exist_ok`."""
        target = Path(target_dir).expanduser()
        async with self.workspace.registry_client() as client:
            for entry in self.config.files:
                dest = target / entry.path
                if dest.exists():
                    same = (await asyncio.to_thread(sha256_file, dest))[0] == entry.digest
                    if same:
                        continue
                    if not exist_ok:
                        raise ModelfleetError(
                            f"{dest} already exists with other content (pass exist_ok / --overwrite)"
                        )
                await client.download_blob(self.repository, entry.digest, dest, size=entry.size)
        return str(target)

    def delete(self) -> None:
        asyncio.run(self.delete_async())

    async def delete_async(self) -> None:
        async with self.workspace.registry_client() as client:
            digest = await client.manifest_digest(self.repository, str(self.version))
            if digest is None:
                raise NotFoundError(f"model {self.id} does not exist")
            await client.delete_manifest(self.repository, digest)
