"""The edge agent's instance runtimes: modules as supervised child processes or containers, behind a
front proxy.

Public names are re-exported here; the modules beside this file are private.
"""

from ._backoff import Backoff, RestartPolicy, should_restart
from ._config import InstanceConfig
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
from ._errors import ModuleStartError
from ._logs import RotatingLog
from ._process import UNKNOWN_EXIT_CODE, Instance, ProcessRuntime
from ._proxy import FrontProxy
from ._supervisor import Supervisor
from ._venv import requirements_key

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
