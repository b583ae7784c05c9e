"""A module image from a module artifact: its layers, config and manifest, and pushing them.

Layer order (base layers first): the runtime's third-party packages, modelfleet's `modules`
package, the module's extra requirements (when it has any the runtime lacks), one layer per
model file, the code. Each layer's bytes depend only on its own inputs, so a model-only update
makes new model layers and a new config and nothing else; a device that has the previous image
pulls just those. Nothing carries a build time or the module's version number: the same inputs
give the same digest (`docs/images.md`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.artifact import ModuleManifest, extract_code, model_dir_for, served_model_name
from modules.image._base import BaseImage, ImageBuildError
from modules.image._cache import ImageCache, cache_key
from modules.image._layer import Layer, LayerWriter
from modules.image._layout import (
    APP_ROOT,
    BASE_DIGEST,
    BASE_KEY_LABEL,
    BASE_NAME,
    CODE_ROOT,
    DEFAULT_PORT,
    EPOCH,
    MODELS_ROOT,
    MODULE_LABEL,
    OCI_CONFIG,
    OCI_MANIFEST,
    PORT_ENV,
    PYTHON_LABEL,
    REQUIREMENTS_SITE,
    RUNTIME_SITE,
    SAMPLE_INPUT_LABEL,
    SAMPLE_INPUT_LABEL_MAX,
    SETTINGS_ENV,
    TITLE,
)
from modules.image._reference import ImageReference
from modules.oci import RegistryClient, sha256_bytes
from modules.scoring import ScoringSettings
from modules.spec import ModuleSpec

LAYOUT_VERSION = 1
_HOST_PROVIDERS = ("cuda", "tensorrt", "openvino", "cpu")


@dataclass
class BuiltImage:
    """An image ready to push: its own layers on disk, the base's by reference."""

    base: BaseImage
    layers: list[Layer]
    config: bytes
    manifest: bytes
    notes: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256_bytes(self.manifest)

    @property
    def size(self) -> int:
        """Compressed bytes of every layer, base included: what a device with nothing pulls."""
        return sum(int(layer["size"]) for layer in self.base.layers) + sum(
            layer.size for layer in self.layers
        )


def image_settings(spec: ModuleSpec) -> dict[str, Any]:
    """The scoring host's settings baked into the image (`MODELFLEET_SCORING_SETTINGS`), as the
    agent's process runtime derives them from the spec. Host, port and keys come at run time.

    `model_version` is the model's version for a one-model module (the v2 routes answer for that
    model) and "1" otherwise: the module's own version number is not in the image, so re-packaging
    the same content gives the same image; `MODELFLEET_MODULE_VERSION` sets it at run time."""
    providers = [p for p in spec.execution_providers if p in _HOST_PROVIDERS] or ["cpu"]
    data: dict[str, Any] = {
        "model_dir": str(model_dir_for(Path(str(MODELS_ROOT)), spec.models)),
        "models_root": str(MODELS_ROOT),
        "model_name": served_model_name(spec),
        "service_name": spec.name,
        "entry_script": str(CODE_ROOT / spec.entry_script) if spec.entry_script else None,
        "model_version": str(spec.models[0].version) if len(spec.models) == 1 else "1",
        "execution_providers": providers,
        "scoring_timeout_ms": spec.scoring.timeout_ms,
        "max_request_bytes": spec.scoring.max_request_bytes,
        "processes": 1,
    }
    if spec.scoring.batching is not None:
        data["batching"] = spec.scoring.batching.model_dump()
    ScoringSettings.model_validate(data)  # fail at build time, not in the container
    return data


def model_layers(manifest: ModuleManifest, blobs: Mapping[str, Path], cache: ImageCache) -> list[Layer]:
    """One layer per model file at `MODELS_ROOT/<name>/<version>/<path>`, cached by file digest
    and path (a large model is gzipped once per machine)."""
    out = []
    anchor = Path("/anchor")
    for descriptor, target in manifest.model_targets(anchor):
        rel = target.relative_to(anchor / "models").as_posix()
        path = MODELS_ROOT / rel
        key = cache_key("model-file", LAYOUT_VERSION, str(path), descriptor.digest)
        with cache.lock(key):
            cached = cache.get_layer(key)
            if cached is None:
                writer = LayerWriter()
                writer.add_file(path, blobs[descriptor.digest], executable=False)
                layer = writer.write(cache.staging("model"), f"model file {rel} ({descriptor.digest})")
                cached = cache.put_layer(key, layer)
        out.append(cached)
    return out


def code_layer(archive: Path, cache: ImageCache) -> Layer:
    """The module's code layer (a reproducible tar.gz already) re-rooted at `CODE_ROOT`."""
    with tempfile.TemporaryDirectory(prefix="modelfleet-code-") as tmp:
        extract_code(archive, Path(tmp))
        writer = LayerWriter()
        writer.add_tree(Path(tmp), CODE_ROOT)
        writer.add_dir(CODE_ROOT)
        return cache.adopt(writer.write(cache.staging("code"), f"code at {CODE_ROOT}"))


def _env(base: Mapping[str, Any], ours: dict[str, str]) -> list[str]:
    kept = [e for e in (base.get("Env") or []) if e.split("=", 1)[0] not in ours]
    return kept + [f"{k}={v}" for k, v in ours.items()]


def module_image(
    base: BaseImage,
    spec: ModuleSpec,
    layers: list[Layer],
    *,
    has_requirements: bool,
) -> BuiltImage:
    """Config and manifest for `layers` on `base`; `base.python` must have been found."""
    if base.python is None:
        raise ImageBuildError(f"base image {base.ref}: its Python was not checked")
    base_config = base.config.get("config") or {}
    settings = image_settings(spec)
    paths = [str(REQUIREMENTS_SITE)] if has_requirements else []
    env = _env(
        base_config,
        {
            "PYTHONPATH": ":".join([*paths, str(RUNTIME_SITE)]),
            "PYTHONNOUSERSITE": "1",
            "PYTHONUNBUFFERED": "1",
            "AZUREML_MODEL_DIR": settings["model_dir"],
            PORT_ENV: str(DEFAULT_PORT),
            SETTINGS_ENV: json.dumps(settings, sort_keys=True, separators=(",", ":")),
        },
    )
    labels = dict(base_config.get("Labels") or {})
    labels.update({MODULE_LABEL: spec.name, PYTHON_LABEL: base.python.version, TITLE: spec.name})
    if spec.sample_input is not None:
        sample = json.dumps(spec.sample_input, sort_keys=True, separators=(",", ":"))
        if len(sample) <= SAMPLE_INPUT_LABEL_MAX:
            labels[SAMPLE_INPUT_LABEL] = sample
    container: dict[str, Any] = {
        "Env": env,
        "Entrypoint": [base.python.executable, "-m", "modules.image.entrypoint"],
        "WorkingDir": str(CODE_ROOT if spec.entry_script else APP_ROOT),
        "Labels": dict(sorted(labels.items())),
    }
    if base_config.get("User"):
        container["User"] = base_config["User"]
    base_diff_ids = list((base.config.get("rootfs") or {}).get("diff_ids") or [])
    if len(base_diff_ids) != len(base.layers):
        raise ImageBuildError(
            f"base image {base.ref} lists {len(base_diff_ids)} diff_ids for {len(base.layers)} layers"
        )
    history = list(base.config.get("history") or [])
    if not history:
        history = [{"created": EPOCH, "created_by": f"base layer {i}"} for i in range(len(base.layers))]
    history += [{"created": EPOCH, "created_by": layer.comment} for layer in layers]
    config = {
        "architecture": base.config.get("architecture"),
        "os": base.config.get("os"),
        **({"variant": base.config["variant"]} if base.config.get("variant") else {}),
        "created": EPOCH,
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": base_diff_ids + [layer.diff_id for layer in layers]},
        "history": history,
    }
    config_blob = json.dumps(config, indent=2).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_bytes(config_blob), "size": len(config_blob)},
        "layers": [*base.layers, *(layer.descriptor() for layer in layers)],
        "annotations": {
            BASE_NAME: str(ImageReference(base.ref.registry, base.ref.repository, base.ref.tag)),
            BASE_DIGEST: base.digest,
            TITLE: spec.name,
        },
    }
    return BuiltImage(base, layers, config_blob, json.dumps(manifest, indent=2).encode())


async def push_image(
    client: RegistryClient, repository: str, tags: list[str], image: BuiltImage, *, same_registry: bool
) -> str:
    """Push every blob the registry lacks (base layers mounted from the base's repository when it
    is in the same registry) and the manifest under each tag; returns the manifest digest."""
    mount = [image.base.ref.repository] if same_registry else []
    for layer in image.base.layers:
        source = image.base.local_blobs.get(layer["digest"])
        outcome = await client.push_blob(repository, None, layer["digest"], mount_from=mount)
        if outcome == "needs-data":
            if source is None:
                raise ImageBuildError(f"base layer {layer['digest']} is not on this machine to copy")
            await client.push_blob(repository, source, layer["digest"])
    for own in image.layers:
        await client.push_blob(repository, own.path, own.digest)
    await client.push_blob(repository, image.config)
    digest = ""
    for tag in tags:
        digest = await client.put_manifest(repository, tag, image.manifest, OCI_MANIFEST)
    return digest


def base_image(layer: Layer, python: str, key: str, comment: str) -> tuple[bytes, bytes]:
    """Config and manifest of the one-layer base made by `scripts/build-base-image.sh`."""
    from modules.image._runtime import workstation_platform

    os_name, _, arch = workstation_platform().partition("/")
    config = {
        "architecture": arch,
        "os": os_name,
        "created": EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["/usr/bin/python3"],
            "Labels": {BASE_KEY_LABEL: key, PYTHON_LABEL: python},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": EPOCH, "created_by": comment}],
    }
    config_blob = json.dumps(config, indent=2).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_bytes(config_blob), "size": len(config_blob)},
        "layers": [layer.descriptor()],
    }
    return config_blob, json.dumps(manifest, indent=2).encode()
