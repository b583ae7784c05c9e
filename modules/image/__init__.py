"""Module images: ordinary OCI container images assembled without a container engine.

The publisher builds them from a module artifact (`publisher/_image.py`); the image's own start
is `modules.image.entrypoint`; the agent's Docker runtime runs them knowing only the names in
`_layout` (re-exported here). Builder names load on first use, so the entrypoint, which imports
this package inside every container, stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modules.image._errors import ImageBuildError
from modules.image._layout import (
    APP_ROOT,
    CODE_ROOT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    HOST_ENV,
    MODELS_ROOT,
    MODULE_LABEL,
    PORT_ENV,
    REQUIREMENTS_SITE,
    RUNTIME_SITE,
    SAMPLE_INPUT_LABEL,
    SETTINGS_ENV,
    VERSION_ENV,
)

if TYPE_CHECKING:
    from modules.image._assemble import (
        BuiltImage,
        base_image,
        code_layer,
        image_settings,
        model_layers,
        module_image,
        push_image,
    )
    from modules.image._base import (
        BaseImage,
        PythonInfo,
        fetch_base_layers,
        find_python,
        resolve_base,
    )
    from modules.image._cache import ImageCache, cache_key, default_cache_dir
    from modules.image._layer import Layer, LayerWriter, unpacked_size, write_rootfs_layer
    from modules.image._reference import ImageReference, parse_image_reference
    from modules.image._requirements import requirements_layer, unmet_requirements
    from modules.image._runtime import (
        RuntimeDistributions,
        check_compatible,
        modelfleet_layer,
        runtime_distributions,
        runtime_layer,
        workstation_platform,
        workstation_python,
    )

_LAZY = {
    **dict.fromkeys(
        [
            "BuiltImage",
            "base_image",
            "code_layer",
            "image_settings",
            "model_layers",
            "module_image",
            "push_image",
        ],
        "._assemble",
    ),
    **dict.fromkeys(
        ["BaseImage", "PythonInfo", "fetch_base_layers", "find_python", "resolve_base"],
        "._base",
    ),
    **dict.fromkeys(["ImageCache", "cache_key", "default_cache_dir"], "._cache"),
    **dict.fromkeys(["Layer", "LayerWriter", "unpacked_size", "write_rootfs_layer"], "._layer"),
    **dict.fromkeys(["ImageReference", "parse_image_reference"], "._reference"),
    **dict.fromkeys(["requirements_layer", "unmet_requirements"], "._requirements"),
    **dict.fromkeys(
        [
            "RuntimeDistributions",
            "check_compatible",
            "modelfleet_layer",
            "runtime_distributions",
            "runtime_layer",
            "workstation_platform",
            "workstation_python",
        ],
        "._runtime",
    ),
}

__all__ = [
    "APP_ROOT",
    "CODE_ROOT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HOST_ENV",
    "MODELS_ROOT",
    "MODULE_LABEL",
    "PORT_ENV",
    "REQUIREMENTS_SITE",
    "RUNTIME_SITE",
    "SAMPLE_INPUT_LABEL",
    "SETTINGS_ENV",
    "VERSION_ENV",
    "BaseImage",
    "BuiltImage",
    "ImageBuildError",
    "ImageCache",
    "ImageReference",
    "Layer",
    "LayerWriter",
    "PythonInfo",
    "RuntimeDistributions",
    "base_image",
    "cache_key",
    "check_compatible",
    "code_layer",
    "default_cache_dir",
    "fetch_base_layers",
    "find_python",
    "image_settings",
    "model_layers",
    "modelfleet_layer",
    "module_image",
    "parse_image_reference",
    "push_image",
    "requirements_layer",
    "resolve_base",
    "runtime_distributions",
    "runtime_layer",
    "unmet_requirements",
    "unpacked_size",
    "workstation_platform",
    "workstation_python",
    "write_rootfs_layer",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name, __name__), name)
