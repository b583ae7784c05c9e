"""The edge agent's process runtime: modules as supervised child processes behind a front proxy.

Public names are re-exported here; the modules beside this file are private.
"""

from ._backoff import Backoff, RestartPolicy, should_restart
from ._config import InstanceConfig
from ._errors import ModuleStartError
from ._logs import RotatingLog
from ._process import UNKNOWN_EXIT_CODE, Instance, ProcessRuntime
from ._proxy import FrontProxy
from ._supervisor import Supervisor
from ._venv import requirements_key

__all__ = [
    "UNKNOWN_EXIT_CODE",
    "Backoff",
    "FrontProxy",
    "Instance",
    "InstanceConfig",
    "ModuleStartError",
    "ProcessRuntime",
    "RestartPolicy",
    "RotatingLog",
    "Supervisor",
    "requirements_key",
    "should_restart",
]
