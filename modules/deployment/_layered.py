"""Layered deployments merged over a base, as IoT Hub merges them into module twins.

A deployment is, per twin (`$edgeAgent`, `$edgeHub`, each module), a set of desired-property
paths with values: a base sets `properties.desired` whole; a layer sets parts of it
(`properties.desired.modules.sensor`, `properties.desired.routes.up`,
`properties.desired.settings`). Layers are applied over the base weakest first, so where two
set the same part the stronger wins; within one layer shallower paths are applied before deeper
ones, so a layer can set an object and one of its members. A path set to `null` removes that
part, as a null does in a twin patch.

modelfleet's own layered form, a layer with a whole `$edgeAgent`/`$edgeHub`
`properties.desired`, keeps its meaning: it sets each of its modules, system modules and routes
by name (`properties.desired.modules.<name>` ...), and its runtime and schema versions are not
applied (the base's stand). A module twin's whole `properties.desired` in a layer replaces that
twin's desired properties, as in IoT Hub.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from modules.deployment._manifest import AGENT_TWIN, DESIRED, HUB_TWIN, Manifest, describe, desired_path

_BY_NAME = {AGENT_TWIN: ("modules", "systemModules"), HUB_TWIN: ("routes",)}
_DEFAULT_HUB_SCHEMA = "1.1"


class LayerError(ValueError):
    """A layer that does not merge into a valid manifest over the base; the message says where."""


def layer_assignments(twin: str, section: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The (path, value) parts one twin section of a layer sets, in the order they are applied."""
    parts: list[tuple[tuple[str, ...], Any]] = []
    for key, value in section.items():
        path = desired_path(key)
        if path is None:
            continue
        if path == () and twin in _BY_NAME:
            for group in _BY_NAME[twin]:
                for name, item in (value.get(group) or {}).items() if isinstance(value, dict) else ():
                    parts.append(((group, name), item))
        else:
            parts.append((path, value))
    # Stable: equal depths keep the manifest's order.
    yield from sorted(parts, key=lambda part: len(part[0]))


def _assign(content: dict[str, Any], twin: str, path: tuple[str, ...], value: Any) -> None:
    section = content.setdefault(twin, {})
    if not path:
        section[DESIRED] = copy.deepcopy(value) if value is not None else {}
        return
    if twin == HUB_TWIN and DESIRED not in section:
        section[DESIRED] = {"schemaVersion": _DEFAULT_HUB_SCHEMA}
    node = section.setdefault(DESIRED, {})
    for segment in path[:-1]:
        child = node.get(segment)
        if not isinstance(child, dict):
            if value is None:
                return  # removing something under a part that does not exist: nothing to do
            child = node[segment] = {}
        node = child
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


def apply_layer(base: dict[str, Any], layer: Manifest) -> dict[str, Any]:
    """`base` (a manifest's JSON form) with one layer applied; `base` itself is not changed."""
    merged = copy.deepcopy(base)
    content = merged["modulesContent"]
    for twin, section in layer.to_json_dict()["modulesContent"].items():
        for path, value in layer_assignments(twin, section):
            _assign(content, twin, path, value)
    return merged


def merge(base: Manifest, layers: list[Manifest]) -> Manifest:
    """The base with every layer applied, weakest first; `LayerError` names the first layer (by
    index) whose parts do not make a valid manifest."""
    merged = base.to_json_dict()
    for index, layer in enumerate(layers):
        merged = apply_layer(merged, layer)
        try:
            Manifest.model_validate(merged)
        except ValidationError as exc:
            raise LayerError(f"layer {index}: {describe(exc)}") from None
    return Manifest.model_validate(merged)
