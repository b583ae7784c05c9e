"""What a manifest says about a module that runs as a container, read the same way by the agent
and the publisher: its image reference, its port, its GPU request.

A modelfleet module built as an image (`modelfleet module package --image`) keeps its modelfleet
settings (port, health probe, keys) and names its image under `settings.image`, pinned by digest;
an IoT Edge docker module has `settings.image` and `settings.createOptions` and publishes its port
there (`HostConfig.PortBindings`, else `ExposedPorts`), as IoT Edge's own manifests do. Both may
ask for a GPU with `settings.gpu` (`required` or `preferred`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modules._errors import ConfigError

if TYPE_CHECKING:
    from modules.image import ImageReference

GpuRequest = Literal["required", "preferred"]
ImagePullPolicy = Literal["on-create", "never"]
GPU_REQUESTS: tuple[GpuRequest, ...] = ("required", "preferred")


def parse_image_reference(text: str) -> ImageReference:
    """`[host[:port]/]repository[:tag][@digest]`; ValueError for anything else."""
    from modules.image import parse_image_reference as parse  # the image package, when needed

    try:
        return parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class ImageSettings:
    image: str
    create_options: str | None
    gpu: GpuRequest | None


def image_settings(extra: Mapping[str, Any]) -> ImageSettings | None:
    """A modelfleet module's image settings from the fields its settings carry beside the known
    ones; None when it names no image (it runs from its artifact). ValueError when malformed."""
    image = extra.get("image")
    gpu = extra.get("gpu")
    if gpu is not None and gpu not in GPU_REQUESTS:
        raise ValueError(f"settings.gpu must be 'required' or 'preferred', not {gpu!r}")
    if image is None:
        if gpu is not None:
            raise ValueError("settings.gpu needs settings.image: only a container gets a GPU")
        return None
    if not isinstance(image, str):
        raise ValueError("settings.image must be an image reference")
    if parse_image_reference(image).digest is None:
        raise ValueError(f"settings.image {image!r} must be pinned by digest (@sha256:...)")
    create = extra.get("createOptions")
    if create is not None and not isinstance(create, dict | str):
        raise ValueError("settings.createOptions must be an object or a JSON string")
    if isinstance(create, str):
        try:
            create = json.loads(create) if create.strip() else {}
        except ValueError:
            raise ValueError("settings.createOptions is not JSON") from None
        if not isinstance(create, dict):
            raise ValueError("settings.createOptions must be a JSON object")
    text = json.dumps(create, sort_keys=True, separators=(",", ":")) if create else None
    return ImageSettings(image=image, create_options=text, gpu=gpu)


def _port_of(key: str) -> int | None:
    number, _, protocol = key.partition("/")
    if protocol not in ("", "tcp") or not number.isdigit():
        return None
    port = int(number)
    return port if 1 <= port <= 65535 else None


def container_port(create: Mapping[str, Any]) -> int | None:
    """The port a docker module serves on: the first TCP host port its create options publish,
    else the first TCP port it exposes. Under host networking (the only kind the agent runs) the
    agent's front proxy listens there and the container gets an internal port of its own."""
    host_config = create.get("HostConfig")
    bindings = host_config.get("PortBindings") if isinstance(host_config, Mapping) else None
    if isinstance(bindings, Mapping):
        for key, targets in bindings.items():
            if _port_of(str(key)) is None:
                continue
            for target in targets if isinstance(targets, list) else []:
                host_port = target.get("HostPort") if isinstance(target, Mapping) else None
                if isinstance(host_port, str) and host_port.isdigit() and 1 <= int(host_port) <= 65535:
                    return int(host_port)
            return _port_of(str(key))
    exposed = create.get("ExposedPorts")
    if isinstance(exposed, Mapping):
        for key in exposed:
            port = _port_of(str(key))
            if port is not None:
                return port
    return None
