"""The edge agent's instance runtimes: modules as supervised child processes or containers, behind a
front proxy.

Public names are re-exported here; the modules beside this file are private. The Docker side is
imported on first use: an agent that runs no container never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._backoff import Backoff, RestartPolicy, should_restart
from ._config import InstanceConfig
from ._errors import ModuleStartError
from ._logs import RotatingLog
from ._process import UNKNOWN_EXIT_CODE, Instance, ProcessRuntime
from ._proxy import FrontProxy
from ._supervisor import Supervisor
from ._venv import requirements_key

if TYPE_CHECKING:
    from ._docker import (
        ContainerInstance,
        ContainerPlan,
        ContainerRuntime,
        DockerEngine,
        DockerUnavailable,
        ImageUnavailable,
        agent_label,
    )
    from ._docker_options import ContainerRefused, DockerPolicy, container_config

_LAZY = {
    "ContainerInstance": "._docker",
    "ContainerPlan": "._docker",
    "ContainerRuntime": "._docker",
    "DockerEngine": "._docker",
    "DockerUnavailable": "._docker",
    "ImageUnavailable": "._docker",
    "agent_label": "._docker",
    "ContainerRefused": "._docker_options",
    "DockerPolicy": "._docker_options",
    "container_config": "._docker_options",
}

__all__ = [
    "UNKNOWN_EXIT_CODE",
    "Backoff",
    "ContainerInstance",
    "ContainerPlan",
    "ContainerRefused",
    "ContainerRuntime",
    "DockerEngine",
    "DockerPolicy",
    "DockerUnavailable",
    "FrontProxy",
    "ImageUnavailable",
    "Instance",
    "InstanceConfig",
    "ModuleStartError",
    "ProcessRuntime",
    "RestartPolicy",
    "RotatingLog",
    "Supervisor",
    "agent_label",
    "container_config",
    "requirements_key",
    "should_restart",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
