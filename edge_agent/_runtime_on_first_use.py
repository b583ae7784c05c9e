"""The default module runtime, built when a module first needs it.

The executor, the artifact store, the process runtime and the OCI client they use are most of
what the agent itself loads. An agent that has no module to run yet (a new device waiting for
its first deployment) does without them: what its start and its first reconcile passes ask of
a runtime (which modules serve, which execution providers the device has, whether an earlier
agent left a process, a container or stored blobs behind) is answered here from the device
itself. Anything else, and any of those answers that finds something left behind, builds the
real runtime, which then serves every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent._device_info import execution_providers
from edge_agent._leftovers import containers_dir, find_strays, holds_files

if TYPE_CHECKING:
    from edge_agent._module_runtime import KeysLookup, ModuleRuntime, ProgressListener, StateListener
    from edge_agent._planner import Remove, Replace, Start
    from edge_agent._state import InstanceRecord


class RuntimeOnFirstUse:
    """A `ModuleRuntime` that builds the real one (`build()`) the first time it is needed."""

    def __init__(self, build: Callable[[], ModuleRuntime], data_dir: Path) -> None:
        self._build = build
        self._data_dir = data_dir
        self._real: ModuleRuntime | None = None
        self._bound: tuple[StateListener, KeysLookup, ProgressListener | None] | None = None

    @property
    def built(self) -> bool:
        return self._real is not None

    def real(self) -> ModuleRuntime:
        if self._real is None:
            self._real = self._build()
            if self._bound is not None:
                self._real.bind(*self._bound)
        return self._real

    def __getattr__(self, name: str) -> Any:
        # what callers reach on the executor itself (its store, its running modules)
        return getattr(self.real(), name)

    def bind(
        self, on_state: StateListener, keys_for: KeysLookup, on_progress: ProgressListener | None = None
    ) -> None:
        self._bound = (on_state, keys_for, on_progress)
        if self._real is not None:
            self._real.bind(on_state, keys_for, on_progress)

    async def start(self, command: Start) -> InstanceRecord:
        return await self.real().start(command)

    async def replace(self, command: Replace) -> InstanceRecord:
        return await self.real().replace(command)

    async def remove(self, command: Remove) -> None:
        await self.real().remove(command)

    async def readopt(self, record: InstanceRecord) -> InstanceRecord | None:
        return await self.real().readopt(record)

    async def reap_strays(self) -> list[int]:
        if self._real is None:
            runtime_dir = self._data_dir / "runtime"
            if not find_strays(runtime_dir, set()) and not containers_dir(self._data_dir).exists():
                return []  # nothing of an earlier agent's is running here
        return await self.real().reap_strays()

    async def restart(self, name: str) -> None:
        await self.real().restart(name)

    def logs(self, name: str, tail: int) -> list[str]:
        return self.real().logs(name, tail)

    def serving(self) -> dict[str, InstanceRecord]:
        return {} if self._real is None else self._real.serving()

    async def execution_providers(self) -> list[str]:
        if self._real is None:
            return await execution_providers()
        return await self._real.execution_providers()

    async def prune(self, keep_digests: set[str]) -> None:
        if self._real is None:
            store = self._data_dir / "store"
            if not await asyncio.to_thread(holds_files, store):
                return  # nothing stored: nothing to forget
        await self.real().prune(keep_digests)

    async def shutdown(self) -> None:
        if self._real is not None:
            await self._real.shutdown()
