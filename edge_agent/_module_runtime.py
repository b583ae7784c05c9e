"""The seam between the agent's decisions and the modules it runs.

The plan runner drives a `ModuleRuntime`; the default one (`Executor`) pulls modules from the
registry into the artifact store and runs them as supervised processes behind front proxies. The
simulator and the unit tests pass their own, so the decisions (intake, selection, plan, outcomes,
reported state) are the real code everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edge_agent._planner import Remove, Replace, Start
from edge_agent._state import InstanceRecord
from modules.device_state import ModuleState
from modules.service_keys import ServiceKeys

# How a runtime tells the agent that a module's state changed (status, health, pid, exit code).
StateListener = Callable[[str, ModuleState], None]
# How a runtime asks for the opened scoring keys of a deployment (None: none, or not opened yet).
KeysLookup = Callable[[str | None], ServiceKeys | None]
# How a runtime reports a download under way: module name, digest, bytes done, bytes needed.
ProgressListener = Callable[[str, str, int, int], None]


class ModuleRuntime(Protocol):
    def bind(
        self, on_state: StateListener, keys_for: KeysLookup, on_progress: ProgressListener | None = None
    ) -> None:
        """Called once by the agent before anything else: where states go, where keys come from."""
        ...

    async def start(self, command: Start) -> InstanceRecord: ...

    async def replace(self, command: Replace) -> InstanceRecord:
        """Bring the new version up beside the old one; on failure the old one keeps serving."""
        ...

    async def remove(self, command: Remove) -> None: ...

    async def readopt(self, record: InstanceRecord) -> InstanceRecord | None:
        """After an agent restart: supervise what still runs, or start it again; None if it cannot."""
        ...

    async def reap_strays(self) -> list[int]:
        """After re-adoption: end module instances of this device that no record accounts for."""
        ...

    async def restart(self, name: str) -> None: ...

    def logs(self, name: str, tail: int) -> list[str]: ...

    def serving(self) -> dict[str, InstanceRecord]:
        """The instance that serves each running module."""
        ...

    async def execution_providers(self) -> list[str]: ...

    async def prune(self, keep_digests: set[str]) -> None:
        """Forget stored artifacts no module uses any more."""
        ...

    async def shutdown(self) -> None: ...
