"""The shape of modelfleet's OCI artifacts, written by the publisher and read on every device.

A model artifact is an OCI image manifest whose config blob is the `ModelConfig` and whose
layers are the model's files, one each. A module artifact's config blob is the `ModuleSpec`;
its layers are the model files again (taken over from the models' own repositories, so a new
entry script moves no model bytes) and at most one code layer: a gzipped tar of the entry
script's folder. On disk a module becomes `models/<model>/<version>/<path>` (Azure ML v1's
layout; `model_dir_for` says where `AZUREML_MODEL_DIR` points) and `code/`.

Both ends use this module, so the builder and the readers (`modules.unpack` on a workstation,
the agent's artifact store on a device) cannot drift apart on a media type, a file title or
which archive errors mean "this artifact is broken".

`tarfile` and `gzip` are imported by the two functions that read or write a code layer: an
agent needs them only while it unpacks a module, not while it idles.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules._errors import InvalidPackageError
from modules.model_config import ModelConfig, ModelFile, safe_relative_path
from modules.oci import media_types as mt
from modules.oci import sha256_bytes
from modules.spec import ModelRef, ModuleSpec

MODELS_DIR = "models"
CODE_DIR = "code"
CODE_LAYER_TITLE = "code.tar.gz"
DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"


# -- reading ----------------------------------------------------------------------------------


class Descriptor(BaseModel):
    """One manifest entry. The digest pattern matters: its hex becomes a file name on devices."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str = Field(pattern=DIGEST_PATTERN)
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.annotations.get(mt.TITLE, "")


class ModuleManifest(BaseModel):
    """A module artifact's image manifest, as far as a reader needs it."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    config: Descriptor
    layers: list[Descriptor] = Field(default_factory=list)

    @property
    def model_layers(self) -> list[Descriptor]:
        return [layer for layer in self.layers if layer.media_type == mt.MODEL_FILE]

    @property
    def code_layers(self) -> list[Descriptor]:
        return [layer for layer in self.layers if layer.media_type == mt.MODULE_CODE]

    def unique_layers(self) -> list[Descriptor]:
        """Layers by digest: two identical files in one module are one blob to fetch and check."""
        seen: dict[str, Descriptor] = {}
        for layer in self.layers:
            seen.setdefault(layer.digest, layer)
        return list(seen.values())

    def model_targets(self, root: Path) -> list[tuple[Descriptor, Path]]:
        """Where each model layer lands under a module folder: `models/<name>/<version>/<path>`.

        That is Azure ML v1's `azureml-models` layout, so `AZUREML_MODEL_DIR` can point where
        Azure's would (`model_dir_for`). A layer without its model reference (written before
        modules recorded one) keeps the old `models/<title>`. Raises `InvalidPackageError` for a
        title or reference that could escape the folder, so a caller can refuse the artifact
        before downloading a byte of it.
        """
        targets = []
        for layer in self.model_layers:
            try:
                targets.append((layer, root / MODELS_DIR / _model_file_path(layer)))
            except ValueError as exc:
                raise InvalidPackageError(f"model layer {layer.digest}: {exc}") from exc
        return targets


def _model_file_path(layer: Descriptor) -> str:
    """`<name>/<version>/<path>` from a module's model layer (title `<name>/<path>`, ref `name:version`)."""
    title = safe_relative_path(layer.title)
    reference = layer.annotations.get(mt.MODEL_REF)
    if reference is None:
        return title
    name, _, version = reference.rpartition(":")
    prefix = name + "/"
    if not name or not version.isdigit() or not title.startswith(prefix):
        raise ValueError(f"model reference {reference!r} does not match the file {title!r}")
    return safe_relative_path(f"{name}/{version}/{title[len(prefix) :]}")


def model_dir_for(models_root: Path, models: Iterable[ModelRef]) -> Path:
    """The folder `AZUREML_MODEL_DIR` names for a module's models, as Azure ML v1 sets it.

    One model: its version folder, with the registered files directly inside, so the common
    `os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.onnx")` finds it. Several (or none):
    the root, where files are at `<name>/<version>/<path>`.
    """
    refs = list(models)
    if len(refs) == 1:
        return models_root / refs[0].name / str(refs[0].version)
    return models_root


def served_model_name(spec: ModuleSpec) -> str:
    """The name a module answers to on the v2 routes: a zero-code module serving one model is
    that model (clients address the registered name); anything else is the module."""
    if spec.entry_script is None and len(spec.models) == 1:
        return spec.models[0].name
    return spec.name


def parse_module_manifest(body: bytes | str, where: str) -> ModuleManifest:
    """The manifest of a module artifact; anything else is an `InvalidPackageError`.

    `where` (like `modules/iris@sha256:...`) names the artifact in the error.
    """
    try:
        manifest = ModuleManifest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidPackageError(f"{where} is not a valid image manifest: {exc}") from exc
    if manifest.config.media_type != mt.MODULE_CONFIG:
        raise InvalidPackageError(f"{where} is not a modelfleet module artifact")
    return manifest


def parse_module_spec(config: bytes | str, where: str) -> ModuleSpec:
    """A module artifact's config blob; a spec that does not validate is an `InvalidPackageError`."""
    try:
        return ModuleSpec.model_validate_json(config)
    except ValidationError as exc:
        raise InvalidPackageError(f"the spec of module {where} is invalid: {exc}") from exc


def extract_code(archive: Path, target: Path) -> None:
    """Unpack a code layer into `target` (created if missing).

    Only regular files and folders are accepted: any symlink or hard link is refused before a
    byte is written, whatever Python's own `data` filter allows (the filter of Python 3.11 before
    3.11.13 can be escaped with a long symlink chain, CVE-2025-4517), and the filter still runs
    as a second line (absolute paths, `..`, devices, modes). A code layer written by
    `modelfleet module package` never holds a link. A truncated or corrupt archive shows up as a
    `TarError`, an `OSError` (gzip's `BadGzipFile`) or an `EOFError` (a gzip stream cut short);
    all of them mean the artifact is unusable, so all of them become `InvalidPackageError`.
    """
    import tarfile

    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if not (member.isfile() or member.isdir()):
                    kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
                    raise InvalidPackageError(
                        f"the module's code layer holds a {kind}, {member.name!r}: links are refused"
                    )
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidPackageError(f"cannot unpack the module's code layer: {exc}") from exc


# -- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeFile:
    """One file of the code layer: its path inside `code/`, its bytes, whether it is executable."""

    path: str
    data: bytes
    executable: bool = False


def code_archive(files: Iterable[CodeFile]) -> bytes:
    """A reproducible code layer: the same files give the same bytes, hence the same digest.

    Entries keep the given order, with zeroed times and owners, and the gzip header carries no
    time; that is what lets an unchanged entry script re-use the layer a device already has.
    """
    import gzip
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in files:
            info = tarfile.TarInfo(safe_relative_path(file.path))
            info.size = len(file.data)
            info.mode = 0o755 if file.executable else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(file.data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _descriptor(
    media_type: str, digest: str, size: int, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations is not None:
        out["annotations"] = dict(annotations)
    return out


def _manifest(
    config_media_type: str, config_blob: bytes, layers: list[dict[str, Any]], annotations: dict[str, str]
) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": _descriptor(config_media_type, sha256_bytes(config_blob), len(config_blob)),
        "layers": layers,
        "annotations": annotations,
    }
    return json.dumps(manifest, indent=2).encode()


def _created(config: ModelConfig | ModuleSpec) -> str:
    return config.created.isoformat().replace("+00:00", "Z")


def model_layer(file: ModelFile) -> dict[str, Any]:
    """A model artifact's layer for one file, titled with its path inside the model."""
    return _descriptor(mt.MODEL_FILE, file.digest, file.size, {mt.TITLE: file.path})


def model_manifest(config: ModelConfig, config_blob: bytes) -> bytes:
    """The image manifest of a model artifact; `config_blob` is `config` as pushed."""
    annotations = {
        mt.TITLE: config.name,
        mt.VERSION: str(config.version),
        mt.CREATED: _created(config),
        mt.FRAMEWORK: config.framework,
        mt.TAGS: json.dumps(config.tags, sort_keys=True),
        mt.PROPERTIES: json.dumps(config.properties, sort_keys=True),
    }
    if config.description:
        annotations[mt.DESCRIPTION] = config.description
    return _manifest(mt.MODEL_CONFIG, config_blob, [model_layer(f) for f in config.files], annotations)


def module_model_layers(ref: ModelRef) -> list[dict[str, Any]]:
    """A module artifact's layers for one model: titled `<model>/<path>` and annotated with the
    model version they came from; they land in `models/<model>/<version>/<path>`."""
    return [
        _descriptor(
            mt.MODEL_FILE,
            f.digest,
            f.size,
            {mt.TITLE: f"{ref.name}/{f.path}", mt.MODEL_REF: f"{ref.name}:{ref.version}"},
        )
        for f in ref.files
    ]


def module_code_layer(archive: bytes) -> dict[str, Any]:
    """A module artifact's code layer for an archive made by `code_archive`."""
    return _descriptor(mt.MODULE_CODE, sha256_bytes(archive), len(archive), {mt.TITLE: CODE_LAYER_TITLE})


def module_manifest(spec: ModuleSpec, config_blob: bytes, code: bytes | None) -> bytes:
    """The image manifest of a module artifact: every model's files, then the code layer if any."""
    layers = [layer for ref in spec.models for layer in module_model_layers(ref)]
    if code is not None:
        layers.append(module_code_layer(code))
    annotations = {mt.TITLE: spec.name, mt.VERSION: str(spec.version), mt.CREATED: _created(spec)}
    if spec.description:
        annotations[mt.DESCRIPTION] = spec.description
    return _manifest(mt.MODULE_CONFIG, config_blob, layers, annotations)
